"""One way to configure a process: a typed settings class, read from env vars and a file.

Each long-running process (worker, uploader, matcher, trainer) defines one subclass of
`SnowtrapSettings`. Values come from, highest priority first: explicit keyword arguments,
environment variables (`SNOWTRAP_<FIELD>`, nested with `__`), a YAML file, the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

S = TypeVar("S", bound="SnowtrapSettings")


class SettingsFileError(ValueError):
    """The settings file is missing or is not a YAML mapping."""


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class SnowtrapSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SNOWTRAP_", env_nested_delimiter="__", extra="forbid"
    )

    @classmethod
    def load(cls: type[S], config_file: Path | str | None = None, **overrides: Any) -> S:
        """Build the settings; `config_file` (YAML) sits below env vars and `overrides`."""
        data: dict[str, Any] = {}
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise SettingsFileError(f"{path}: settings file not found")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise SettingsFileError(f"{path}: expected a mapping of setting -> value")
            data = loaded

        class _Loaded(cls):  # type: ignore[valid-type, misc]
            @classmethod
            def settings_customise_sources(
                cls_,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                return (init_settings, env_settings, _YamlSource(settings_cls, data))

        loaded_settings = _Loaded(**overrides)
        return cls.model_validate(loaded_settings.model_dump())
