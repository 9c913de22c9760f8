"""Failure reasons and their HTTP status codes.

An image the API cannot take fails with the same reason code the worker writes into its dead
letter (`models.decode.DecodeReason`, the worker's stage errors), so a client, a dashboard and
the dead-letter topic all speak one vocabulary. The reasons only the HTTP side has (queue
full, not ready, bad multipart...) are named here.
"""

from __future__ import annotations

from snowtrap.models.decode import DecodeReason
from snowtrap.stream.worker.batch_types import REASON_INTERNAL_ERROR, REASON_MODEL_ERROR

# Reasons of the HTTP side only (the worker never sees these requests).
UNAUTHORIZED = "unauthorized"
UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
BAD_MULTIPART = "bad_multipart"
NO_IMAGES = "no_images"
TOO_MANY_IMAGES = "too_many_images"
BAD_QUERY = "bad_query"
QUEUE_FULL = "queue_full"
NOT_READY = "not_ready"
TIMEOUT = "timeout"
CLIENT_GONE = "client_disconnected"
"""The client hung up before its body arrived: nobody to answer (499, as nginx logs it)."""

STATUS_BY_REASON: dict[str, int] = {
    # decode: the same reasons as the worker's dead letters
    DecodeReason.EMPTY.value: 400,
    "empty_payload": 400,  # the contract's name for a message with no bytes
    DecodeReason.TRUNCATED.value: 400,
    DecodeReason.CORRUPT.value: 400,
    "decode_failed": 400,
    DecodeReason.NOT_AN_IMAGE.value: 415,
    DecodeReason.UNSUPPORTED_FORMAT.value: 415,
    DecodeReason.TOO_LARGE_BYTES.value: 413,
    DecodeReason.TOO_MANY_PIXELS.value: 413,
    REASON_MODEL_ERROR: 500,
    REASON_INTERNAL_ERROR: 500,
    "crop_failed": 500,
    # the HTTP side
    UNAUTHORIZED: 401,
    UNSUPPORTED_CONTENT_TYPE: 415,
    BAD_MULTIPART: 400,
    NO_IMAGES: 400,
    TOO_MANY_IMAGES: 413,
    BAD_QUERY: 400,
    QUEUE_FULL: 503,
    NOT_READY: 503,
    TIMEOUT: 504,
    CLIENT_GONE: 499,
}


def status_for(reason: str) -> int:
    """The HTTP status of a failure reason; a reason nobody mapped is the server's fault."""
    return STATUS_BY_REASON.get(reason, 500)
