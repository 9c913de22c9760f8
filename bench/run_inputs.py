"""What the benches read from a finished `snowtrap train` run, and what they say when it is
missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from snowtrap.training.config import ExplainConfig


def missing_run_inputs(needed: dict[str, Path | None], options: str = "") -> bool:
    """True (after saying what is missing and how to make it) when any of `needed` is absent.

    `needed` maps what to call an input in the message to its path (None: not found)."""
    missing = [name for name, path in needed.items() if path is None or not path.exists()]
    if missing:
        print(
            f"need {' and '.join(missing)}: run `snowtrap train configs/synthetic.yaml` first"
            + (f", or pass {options}" if options else ""),
            file=sys.stderr,
        )
    return bool(missing)


def run_explain_config(run_dir: Path) -> ExplainConfig | None:
    """The explain settings a run used (its `config.json`); None when the run has none.

    Options an older run recorded that the config no longer has (removed ones) are left out:
    the bench runs what LIME now always does in their place."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return None
    recorded = json.loads(config_path.read_text())["explain"]
    return ExplainConfig(**{k: v for k, v in recorded.items() if k in ExplainConfig.model_fields})
