"""Provider settings as they appear in a gather config, and how each becomes an `ImageSource`.

One pydantic model per provider kind, told apart by `kind`; `ProviderConfig` is their union.
Every provider takes the same query overrides: `positive_queries` / `negative_queries`
replace the defaults for that provider (an empty list switches a class off), and `limit`
replaces the global per-query limit. Defaults differ by kind because a query means different
things to each: search words (bing, openverse), a taxon (inaturalist), a sub-folder
(local_folder), a category (coco_camera_traps).

Secrets stay out of YAML files: `api_key` / `token` may be given, but by default they are
read from the environment variable named in `api_key_env` / `token_env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from snowtrap.training.sources.base import ImageSource
from snowtrap.training.sources.bing import DEFAULT_BING_ENDPOINT, MAX_BING_COUNT, BingImageSearchV7
from snowtrap.training.sources.coco_camera_traps import OTHER_QUERY, CocoCameraTraps
from snowtrap.training.sources.http import DEFAULT_USER_AGENT, HttpClient, RetryPolicy
from snowtrap.training.sources.inaturalist import (
    DEFAULT_INATURALIST_ENDPOINT,
    DEFAULT_PHOTO_LICENCES,
    SNOW_LEOPARD_TAXON,
    INaturalist,
)
from snowtrap.training.sources.local_folder import IMAGE_SUFFIXES, LocalFolder
from snowtrap.training.sources.openverse import DEFAULT_OPENVERSE_ENDPOINT, Openverse

__all__ = [
    "DEFAULT_INATURALIST_NEGATIVE_TAXA",
    "BingConfig",
    "CocoCameraTrapsConfig",
    "INaturalistConfig",
    "LocalFolderConfig",
    "OpenverseConfig",
    "ProviderConfig",
    "QueryDefaults",
]

DEFAULT_INATURALIST_NEGATIVE_TAXA = (
    "Capra sibirica",
    "Pseudois nayaur",
    "Vulpes vulpes",
    "Lynx lynx",
    "Marmota",
)
"""Animals that share the snow leopard's camera traps (ibex, bharal, fox, lynx, marmot):
hard negatives a classifier must tell apart from a leopard."""


@dataclass(frozen=True)
class QueryDefaults:
    """What gather decided globally; each provider kind picks its defaults from it."""

    positive_label: str
    negative_label: str
    positive_search: tuple[str, ...]
    negative_search: tuple[str, ...]


class _ProviderBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    name: str | None = Field(None, description="instance name in manifests; default: the kind")
    positive_queries: list[str] | None = None
    negative_queries: list[str] | None = None
    limit: int | None = Field(None, ge=1, description="per-query limit; default: the global")

    @property
    def instance_name(self) -> str:
        return self.name or self.kind

    def default_queries(self, defaults: QueryDefaults) -> tuple[list[str], list[str]]:
        return list(defaults.positive_search), list(defaults.negative_search)

    def queries(self, defaults: QueryDefaults) -> tuple[list[str], list[str]]:
        """(positive queries, negative queries) for this provider."""
        positive, negative = self.default_queries(defaults)
        if self.positive_queries is not None:
            positive = list(self.positive_queries)
        if self.negative_queries is not None:
            negative = list(self.negative_queries)
        return positive, negative

    def build(self, defaults: QueryDefaults, user_agent: str = DEFAULT_USER_AGENT) -> ImageSource:
        """The provider this config describes."""
        raise NotImplementedError


class _WebProviderBase(_ProviderBase):
    endpoint: str
    timeout_s: float = Field(20.0, gt=0)
    max_attempts: int = Field(4, ge=1)
    backoff_base_s: float = Field(0.5, ge=0)
    max_retry_after_s: float = Field(300.0, ge=0)
    min_request_interval_s: float = Field(0.0, ge=0)

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, value: str) -> str:
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def http_client(self, user_agent: str) -> HttpClient:
        return HttpClient(
            self.instance_name,
            timeout_s=self.timeout_s,
            retry=RetryPolicy(
                max_attempts=self.max_attempts,
                backoff_base_s=self.backoff_base_s,
                max_retry_after_s=self.max_retry_after_s,
            ),
            user_agent=user_agent,
            min_interval_s=self.min_request_interval_s,
        )


_MASKED = "**********"
"""What `model_dump(mode="json")` writes for a SecretStr: a config that went through a dump
and back has lost the secret, so that value counts as "not set"."""


def _secret(value: SecretStr | None, env_name: str | None) -> str | None:
    if value is not None and value.get_secret_value() not in ("", _MASKED):
        return value.get_secret_value()
    return os.environ.get(env_name) if env_name else None


class BingConfig(_WebProviderBase):
    """A Bing Image Search v7-compatible service."""

    kind: Literal["bing"] = "bing"
    endpoint: str = DEFAULT_BING_ENDPOINT
    api_key: SecretStr | None = None
    api_key_env: str = "BING_SEARCH_V7_KEY"
    page_size: int = Field(50, ge=1, le=MAX_BING_COUNT)
    safe_search: Literal["Off", "Moderate", "Strict"] = "Moderate"
    market: str | None = None
    extra_params: dict[str, str] = Field(default_factory=dict)

    def build(
        self, defaults: QueryDefaults, user_agent: str = DEFAULT_USER_AGENT
    ) -> BingImageSearchV7:
        key = _secret(self.api_key, self.api_key_env)
        if not key:
            raise ValueError(
                f"{self.instance_name}: no API key; set api_key or the {self.api_key_env} "
                "environment variable"
            )
        return BingImageSearchV7(
            key,
            endpoint=self.endpoint,
            name=self.instance_name,
            page_size=self.page_size,
            safe_search=self.safe_search,
            market=self.market,
            extra_params=self.extra_params,
            http=self.http_client(user_agent),
        )


class OpenverseConfig(_WebProviderBase):
    """Openverse (openly licensed images); a token is optional."""

    kind: Literal["openverse"] = "openverse"
    endpoint: str = DEFAULT_OPENVERSE_ENDPOINT
    token: SecretStr | None = None
    token_env: str | None = "OPENVERSE_TOKEN"
    page_size: int = Field(20, ge=1, le=500)
    licences: list[str] | None = Field(None, description="e.g. [by, by-sa, cc0, pdm]")
    licence_type: str | None = Field(None, description="e.g. commercial, modification")
    extra_params: dict[str, str] = Field(default_factory=dict)

    def build(self, defaults: QueryDefaults, user_agent: str = DEFAULT_USER_AGENT) -> Openverse:
        return Openverse(
            endpoint=self.endpoint,
            name=self.instance_name,
            token=_secret(self.token, self.token_env),
            page_size=self.page_size,
            licences=self.licences,
            licence_type=self.licence_type,
            extra_params=self.extra_params,
            http=self.http_client(user_agent),
        )


class INaturalistConfig(_WebProviderBase):
    """iNaturalist observation photos; queries are taxon names or ids."""

    kind: Literal["inaturalist"] = "inaturalist"
    endpoint: str = DEFAULT_INATURALIST_ENDPOINT
    photo_licences: list[str] = Field(default_factory=lambda: list(DEFAULT_PHOTO_LICENCES))
    quality_grade: str = "research"
    per_page: int = Field(200, ge=1, le=200)
    photo_size: Literal["small", "medium", "large", "original"] = "large"
    photos_per_observation: int = Field(1, ge=1)
    min_request_interval_s: float = Field(1.0, ge=0)

    def default_queries(self, defaults: QueryDefaults) -> tuple[list[str], list[str]]:
        return [SNOW_LEOPARD_TAXON], list(DEFAULT_INATURALIST_NEGATIVE_TAXA)

    def build(self, defaults: QueryDefaults, user_agent: str = DEFAULT_USER_AGENT) -> INaturalist:
        return INaturalist(
            endpoint=self.endpoint,
            name=self.instance_name,
            photo_licences=self.photo_licences,
            quality_grade=self.quality_grade,
            per_page=self.per_page,
            photo_size=self.photo_size,
            photos_per_observation=self.photos_per_observation,
            http=self.http_client(user_agent),
        )


class LocalFolderConfig(_ProviderBase):
    """A sorted folder; queries are sub-folders (default: one named after each label)."""

    kind: Literal["local_folder"] = "local_folder"
    root: Path
    licence: str | None = None
    licence_url: str | None = None
    creator: str | None = None
    suffixes: list[str] = Field(default_factory=lambda: list(IMAGE_SUFFIXES))

    def default_queries(self, defaults: QueryDefaults) -> tuple[list[str], list[str]]:
        return [defaults.positive_label], [defaults.negative_label]

    def build(self, defaults: QueryDefaults, user_agent: str = DEFAULT_USER_AGENT) -> LocalFolder:
        return LocalFolder(
            self.root,
            name=self.instance_name,
            licence=self.licence,
            licence_url=self.licence_url,
            creator=self.creator,
            suffixes=self.suffixes,
        )


class CocoCameraTrapsConfig(_ProviderBase):
    """A COCO Camera Traps JSON file; queries are categories, `@other` = no positive one."""

    kind: Literal["coco_camera_traps"] = "coco_camera_traps"
    annotations: Path
    image_base: str | None = Field(
        None, description="folder or http(s) base URL; default: the JSON file's folder"
    )
    positive_categories: list[str] | None = Field(
        None, description="categories that make a frame positive; default: positive_queries"
    )
    licence: str | None = None
    licence_url: str | None = None
    creator: str | None = None

    def default_queries(self, defaults: QueryDefaults) -> tuple[list[str], list[str]]:
        return [defaults.positive_label], [OTHER_QUERY]

    def build(
        self, defaults: QueryDefaults, user_agent: str = DEFAULT_USER_AGENT
    ) -> CocoCameraTraps:
        positives = self.positive_categories or self.queries(defaults)[0]
        if not positives:
            raise ValueError(f"{self.instance_name}: set positive_categories")
        return CocoCameraTraps(
            self.annotations,
            positive_categories=positives,
            image_base=self.image_base,
            name=self.instance_name,
            licence=self.licence,
            licence_url=self.licence_url,
            creator=self.creator,
        )


ProviderConfig = Annotated[
    BingConfig | OpenverseConfig | INaturalistConfig | LocalFolderConfig | CocoCameraTrapsConfig,
    Field(discriminator="kind"),
]

CURATED_KINDS = frozenset({"local_folder", "coco_camera_traps"})
"""Kinds whose candidates are local files with human-chosen labels (file:// allowed)."""
