"""`snowtrap train CONFIG`: [synthesise] -> gather -> classify -> explain -> detect -> bundle.

Every stage writes into its own folder under the run directory and finishes by writing
`<stage>/stage.json` with a fingerprint: a hash of the config sections it reads and of the
completion tokens of the stages before it. A later run skips a stage whose fingerprint is
unchanged, so a re-run resumes where the last one stopped, and a changed section re-runs that
stage and everything after it. `--stage NAME` runs one stage (its inputs must exist);
`--force` re-runs even when done. The HTML report is rebuilt at the end of every run.

This module is the bookkeeping (which stages, fingerprints, skipping) and the CLI. The run
directory is `run_directory.TrainingRun`; the stages are `data_stages` (synthesise, gather),
`classify_stage`, `explain_stage`, `detect_stage`, `bundle_stage` and `report`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snowtrap.training.classify_stage import stage_classify
from snowtrap.training.config import TrainConfig
from snowtrap.training.data_stages import stage_gather, stage_synthesise
from snowtrap.training.detect_stage import stage_detect
from snowtrap.training.explain_stage import stage_explain
from snowtrap.training.json_files import write_json
from snowtrap.training.run_directory import (
    STAGE_FILE,
    StageInputMissing,
    StageResult,
    TrainingRun,
)

__all__ = [
    "STAGES",
    "StageResult",
    "TrainingRun",
    "active_stages",
    "configure_cli",
    "run_stage",
    "run_training",
    "stage_fingerprint",
]


def stage_bundle(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.bundle_stage import build_bundle

    return build_bundle(run)


def stage_report(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.report import write_report

    path = write_report(run, active_stages(run.config))
    return {"report": str(path)}


StageFn = Callable[[TrainingRun], dict[str, Any]]

STAGES: dict[str, StageFn] = {
    "synthesise": stage_synthesise,
    "gather": stage_gather,
    "classify": stage_classify,
    "explain": stage_explain,
    "detect": stage_detect,
    "bundle": stage_bundle,
    "report": stage_report,
}

# Which config sections each stage reads (its fingerprint covers them and upstream tokens).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synthesise": ("synthetic",),
    "gather": ("gather",),
    "classify": ("classify", "heldout"),
    "explain": ("explain", "heldout"),
    "detect": ("detect", "heldout"),
    "bundle": ("bundle", "evaluate"),
    "report": ("report",),
}


def active_stages(config: TrainConfig) -> list[str]:
    return [s for s in STAGES if s != "synthesise" or config.synthetic is not None]


def stage_fingerprint(run: TrainingRun, stage: str) -> str:
    """Hash of the stage's config sections and of every earlier stage's completion token."""
    stages = active_stages(run.config)
    dump = run.config.model_dump(mode="json")
    payload: dict[str, Any] = {"stage": stage}
    payload["sections"] = {name: dump.get(name) for name in STAGE_SECTIONS[stage]}
    payload["upstream"] = {}
    for earlier in stages[: stages.index(stage)]:
        record = run.stage_record(earlier)
        payload["upstream"][earlier] = record["token"] if record else None
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_stage(run: TrainingRun, stage: str, force: bool = False) -> StageResult:
    fingerprint = stage_fingerprint(run, stage)
    record = run.stage_record(stage)
    always = stage == "report"
    if record and record.get("fingerprint") == fingerprint and not force and not always:
        return StageResult(stage, True, 0.0, record.get("summary", {}))
    # A stage that starts invalidates itself first: a crash leaves no stale 'done' marker.
    marker = run.stage_dir(stage) / STAGE_FILE
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    summary = STAGES[stage](run)
    seconds = time.perf_counter() - started
    write_json(
        marker,
        {
            "stage": stage,
            "fingerprint": fingerprint,
            "token": uuid.uuid4().hex,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": seconds,
            "summary": summary,
        },
    )
    return StageResult(stage, False, seconds, summary)


def run_training(
    config: TrainConfig,
    only: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run every stage (or `only` one), skipping those already done with the same inputs."""
    run = TrainingRun(config, progress)
    run.root.mkdir(parents=True, exist_ok=True)
    write_json(run.root / "config.json", config.model_dump(mode="json"))
    stages = active_stages(config)
    if only is not None:
        if only not in stages:
            raise ValueError(f"unknown stage {only!r}; stages: {', '.join(stages)}")
        stages = [only]
    results = []
    for stage in stages:
        result = run_stage(run, stage, force=force)
        word = "skipped (done)" if result.skipped else f"done in {result.seconds:.1f} s"
        log(f"[train] {stage:<10} {word}  {json.dumps(result.summary, default=str)[:300]}")
        results.append(result)
    return results


# --- CLI ----------------------------------------------------------------------------------


def _run_cli(args: argparse.Namespace) -> int:
    overrides = {"run_dir": args.run_dir} if args.run_dir else {}
    config = TrainConfig.load(args.config, **overrides)
    started = time.perf_counter()
    try:
        run_training(config, only=args.stage, force=args.force, progress=not args.quiet)
    except StageInputMissing as exc:
        print(f"snowtrap train: {exc}", file=sys.stderr)
        return 2
    print(
        f"[train] finished in {time.perf_counter() - started:.1f} s; run directory "
        f"{config.run_dir}; report {Path(config.run_dir) / 'report.html'}"
    )
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="training config (YAML)")
    parser.add_argument("--stage", choices=list(STAGES), help="run only this stage")
    parser.add_argument("--force", action="store_true", help="re-run stages even when done")
    parser.add_argument("--run-dir", type=Path, default=None, help="override run_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_cli)
