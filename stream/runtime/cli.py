"""The command-line side every stream command shares: `--config FILE`, settings or one error,
and for the long-running processes one `PATH` option that overrides one setting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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


EXIT_BAD_SETTINGS = 2


def configure_process_cli(
    parser: argparse.ArgumentParser,
    settings_class: type[S],
    run: Callable[[S], int],
    *,
    command: str,
    path_option: str,
    setting: str,
    help: str,
) -> None:
    """`snowtrap COMMAND [--config FILE] [PATH_OPTION PATH]`: load the settings (the option
    overriding `setting`), then `run(settings)`; exit code 2 on bad settings."""
    add_config_argument(parser)
    metavar = path_option.lstrip("-").upper()
    parser.add_argument(
        path_option, dest="path", metavar=metavar, type=Path, default=None, help=help
    )

    def run_command(args: argparse.Namespace) -> int:
        settings = load_settings(settings_class, args.config, command, **{setting: args.path})
        if settings is None:
            return EXIT_BAD_SETTINGS
        return run(settings)

    parser.set_defaults(run=run_command)
