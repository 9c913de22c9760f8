"""Session fixtures: one real training run on the small CI config, shared by every test.

`training_run` runs `snowtrap train configs/synthetic-ci.yaml` once per test session in a
temporary run directory (a few minutes on 2 cores); `trained_bundle` is the bundle it wrote
(a real classifier + detector), for the stream end-to-end tests. Imported into
`tests/conftest.py`, so every test module can ask for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

CI_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic-ci.yaml"


@dataclass(frozen=True)
class TrainingRunResult:
    config_path: Path
    run_dir: Path
    bundle_dir: Path
    stages_run: list[str]
    seconds: float


@pytest.fixture(scope="session")
def training_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingRunResult:
    """The small synthetic training run (all stages), done once per session."""
    import time

    from snowtrap.training.bundle_stage import bundle_directory
    from snowtrap.training.config import TrainConfig
    from snowtrap.training.pipeline import TrainingRun, run_training

    run_dir = tmp_path_factory.mktemp("training-run")
    config = TrainConfig.load(CI_CONFIG, run_dir=run_dir)
    started = time.perf_counter()
    results = run_training(config, progress=False, log=lambda line: None)
    return TrainingRunResult(
        config_path=CI_CONFIG,
        run_dir=run_dir,
        bundle_dir=bundle_directory(TrainingRun(config)),
        stages_run=[r.name for r in results if not r.skipped],
        seconds=time.perf_counter() - started,
    )


@pytest.fixture(scope="session")
def trained_bundle(training_run: TrainingRunResult) -> Path:
    """Directory of a real model bundle (classifier + detector) built from synthetic data."""
    return training_run.bundle_dir
