"""Checks on decoded JSON: a provider that changed its response shape fails loudly, by name."""

from __future__ import annotations

from typing import Any

from snowtrap.training.sources.base import FailureReason, SourceError

__all__ = ["expect_list", "expect_mapping", "http_url", "optional_int", "optional_str"]


def expect_mapping(value: Any, provider: str, url: str, what: str) -> dict[str, Any]:
    """`value` as a JSON object, else `SourceError(unexpected_shape)` naming `what`."""
    if not isinstance(value, dict):
        raise SourceError(
            provider,
            url,
            FailureReason.UNEXPECTED_SHAPE,
            f"expected {what} to be an object, got {type(value).__name__}",
        )
    return value


def expect_list(value: Any, provider: str, url: str, what: str) -> list[Any]:
    """`value` as a JSON array, else `SourceError(unexpected_shape)` naming `what`."""
    if not isinstance(value, list):
        raise SourceError(
            provider,
            url,
            FailureReason.UNEXPECTED_SHAPE,
            f"expected {what} to be an array, got {type(value).__name__}",
        )
    return value


def optional_int(value: Any) -> int | None:
    """An integer field that providers sometimes omit or send as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def optional_str(value: Any) -> str | None:
    """A text field; empty strings and non-strings become None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def http_url(value: Any) -> str | None:
    """A URL field that is usable for downloading: http(s) only, else None."""
    url = optional_str(value)
    return url if url is not None and url.lower().startswith(("http://", "https://")) else None
