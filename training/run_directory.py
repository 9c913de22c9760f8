"""The run directory of `snowtrap train`: one folder per stage, each with its `stage.json`.

`TrainingRun` says where each stage reads and writes and what the finished stages recorded;
`training.pipeline` decides which stages run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snowtrap.training.classify import LabelledImage
from snowtrap.training.config import TrainConfig
from snowtrap.training.json_files import read_json

__all__ = ["STAGE_FILE", "StageInputMissing", "StageResult", "TrainingRun"]


STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class StageResult:
    name: str
    skipped: bool
    seconds: float
    summary: dict[str, Any]


class TrainingRun:
    """The run directory of one config: where each stage reads and writes."""

    def __init__(self, config: TrainConfig, progress: bool = True) -> None:
        self.config = config
        self.root = Path(config.run_dir)
        self.progress = progress

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        path = self.stage_dir(stage) / STAGE_FILE
        return read_json(path) if path.is_file() else None

    def require(self, stage: str) -> dict[str, Any]:
        record = self.stage_record(stage)
        if record is None:
            raise StageInputMissing(f"stage {stage!r} has not run in {self.root}; run it first")
        return record

    @property
    def heldout_frames(self) -> list[LabelledImage]:
        """Frames with ground truth never trained on (synthetic held-out seed by default)."""
        from snowtrap.training.classify import read_coco_camera_traps

        if self.config.heldout is not None:
            return read_coco_camera_traps(
                self.config.heldout.annotations, self.config.heldout.image_root
            )
        if self.config.synthetic is not None and self.config.synthetic.heldout is not None:
            record = self.require("synthesise")
            return read_coco_camera_traps(Path(record["summary"]["heldout"]["annotations"]))
        return []

    @property
    def real_heldout_frames(self) -> list[LabelledImage]:
        """Frames on real photographs never trained on (empty when the config has none)."""
        from snowtrap.training.classify import read_coco_camera_traps

        if self.config.synthetic is None or self.config.synthetic.real_heldout is None:
            return []
        record = self.require("synthesise")
        return read_coco_camera_traps(Path(record["summary"]["real_heldout"]["annotations"]))


class StageInputMissing(RuntimeError):
    """A stage was asked to run before the stages it reads from."""
