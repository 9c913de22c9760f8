"""Request bodies into images, within limits, without trusting the client.

A body larger than `max_body_bytes` is refused before it is read whole: a `Content-Length`
over the limit is refused before a byte is read, and a chunked body (no length) is counted
as it streams and refused as soon as the count passes the limit. Accepted: one image as the
body (`image/*`, `application/octet-stream` or no type), or `multipart/form-data` with one
image per file part. Anything else is refused with a reason (see `reasons`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from snowtrap.models.decode import DecodeReason
from snowtrap.stream.serve.reasons import (
    BAD_MULTIPART,
    NO_IMAGES,
    TOO_MANY_IMAGES,
    UNSUPPORTED_CONTENT_TYPE,
)

RAW_TYPES = ("", "application/octet-stream")
MULTIPART = "multipart/form-data"
MAX_TEXT_FIELDS = 16
"""Non-file multipart fields tolerated (and ignored); more is a malformed request."""


class RequestRefused(Exception):
    """The request cannot be taken; `reason` is a code from `reasons`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class BodyImage:
    """One image found in a request body and the name it came under."""

    file_name: str
    data: bytes


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_declared_length(request: Request, max_body_bytes: int) -> None:
    """Refuse a body whose `Content-Length` is over the limit, before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise RequestRefused(
            DecodeReason.TOO_LARGE_BYTES.value,
            f"Content-Length {declared} exceeds the limit of {max_body_bytes} bytes",
        )


async def counted(stream: AsyncIterator[bytes], max_body_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused as soon as more than `max_body_bytes` have arrived."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_body_bytes:
            raise RequestRefused(
                DecodeReason.TOO_LARGE_BYTES.value,
                f"body exceeds the limit of {max_body_bytes} bytes ({received} read so far)",
            )
        yield chunk


async def read_images(
    request: Request, *, max_body_bytes: int, max_images: int, default_name: str
) -> list[BodyImage]:
    """The images of a request body, or `RequestRefused`."""
    check_declared_length(request, max_body_bytes)
    kind = media_type(request)
    stream = counted(request.stream(), max_body_bytes)
    if kind == MULTIPART:
        return await _multipart_images(request, stream, max_images)
    if kind in RAW_TYPES or kind.startswith("image/"):
        return [BodyImage(default_name, b"".join([chunk async for chunk in stream]))]
    raise RequestRefused(
        UNSUPPORTED_CONTENT_TYPE,
        f"Content-Type {kind!r}: send image bytes (image/*, application/octet-stream) "
        f"or {MULTIPART} with one file part per image",
    )


async def _multipart_images(
    request: Request, stream: AsyncIterator[bytes], max_images: int
) -> list[BodyImage]:
    parser = MultiPartParser(
        request.headers, stream, max_files=max_images, max_fields=MAX_TEXT_FIELDS
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        reason = TOO_MANY_IMAGES if "Too many files" in str(error) else BAD_MULTIPART
        raise RequestRefused(reason, str(error)) from error
    try:
        images = []
        for index, (_, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile):
                name = value.filename or f"image-{index}"
                images.append(BodyImage(name, await value.read()))
    finally:
        await form.close()
    if not images:
        raise RequestRefused(NO_IMAGES, "the multipart body has no file part")
    return images
