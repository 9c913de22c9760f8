"""The command-line side every stream command shares: `--config FILE`, settings or one error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from snowtrap.core.settings import SettingsFileError, SnowtrapSettings

S = TypeVar("S", bound=SnowtrapSettings)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML settings file (SNOWTRAP_* env vars win)"
    )


def load_settings(
    settings_class: type[S], config_file: Path | None, command: str, **overrides: Any
) -> S | None:
    """The settings, or None after printing `snowtrap COMMAND: bad settings: ...` to stderr."""
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        return settings_class.load(config_file, **overrides)
    except (SettingsFileError, ValidationError) as error:
        print(f"snowtrap {command}: bad settings: {error}", file=sys.stderr)
        return None
