"""Checks that real messages follow the checked-in JSON Schemas (stream/contracts/*.schema.json)
and the pydantic wire models they are generated from."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema

from snowtrap.stream.contracts.wire import WIRE_MODELS, header_text, schema_path


@cache
def _validator(stem: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_path(stem).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def assert_follows_schema(stem: str, instance: Any) -> None:
    """`instance` (a JSON body as bytes, a header list, or a dict) is valid for both the
    checked-in schema `<stem>.schema.json` and its pydantic model."""
    if isinstance(instance, bytes):
        instance = json.loads(instance)
    elif isinstance(instance, list) or (
        isinstance(instance, dict) and instance and isinstance(next(iter(instance.values())), bytes)
    ):
        instance = header_text(instance)
    _validator(stem).validate(instance)
    WIRE_MODELS[stem].model_validate(instance)
