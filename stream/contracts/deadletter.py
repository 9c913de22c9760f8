"""`trap.deadletter`: key = source key, value = original bytes, headers = original + why."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from snowtrap.stream.contracts.headers import (
    H,
    Headers,
    HeadersIn,
    header_float,
    header_text,
    headers_to_dict,
    image_id_of,
    is_image_id,
)


@dataclass(frozen=True)
class DeadLetter:
    """Anything that could not be processed: the original message plus why and where."""

    reason: str
    """Short machine-readable code, e.g. 'truncated', 'missing_header', 'model_error'."""
    stage: str
    """Where it failed: 'contract', 'decode', 'classify', 'detect', 'crop', 'produce'."""
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    failed_at: float = field(default_factory=time.time)

    @property
    def image_id(self) -> str:
        """The image id from the original headers, else the sha256 of the bytes."""
        given = self.headers.get(H.IMAGE_ID, b"").decode("utf-8", "replace")
        return given if is_image_id(given) else image_id_of(self.value or b"")


DL_HEADERS = (
    H.DL_REASON,
    H.DL_STAGE,
    H.DL_ERROR,
    H.DL_SOURCE_TOPIC,
    H.DL_SOURCE_PARTITION,
    H.DL_SOURCE_OFFSET,
    H.DL_FAILED_AT,
)


def build_deadletter_message(letter: DeadLetter) -> tuple[bytes | None, bytes, Headers]:
    """(key, value, headers) for `trap.deadletter`: original bytes and headers, plus why."""
    headers: Headers = [(k, v) for k, v in letter.headers.items() if k not in DL_HEADERS]
    if H.IMAGE_ID not in letter.headers:
        headers.append((H.IMAGE_ID, letter.image_id.encode()))
    headers += [
        (H.DL_REASON, letter.reason.encode()),
        (H.DL_STAGE, letter.stage.encode()),
        (H.DL_ERROR, letter.error[:2000].encode("utf-8", "replace")),
        (H.DL_SOURCE_TOPIC, letter.source_topic.encode()),
        (H.DL_SOURCE_PARTITION, str(letter.source_partition).encode()),
        (H.DL_SOURCE_OFFSET, str(letter.source_offset).encode()),
        (H.DL_FAILED_AT, repr(letter.failed_at).encode()),
    ]
    return letter.key, letter.value or b"", headers


def parse_deadletter_message(
    key: bytes | None,
    value: bytes | None,
    headers: HeadersIn,
) -> DeadLetter:
    """Read a `trap.deadletter` message back (for tests, replays and dashboards)."""
    h = headers_to_dict(headers)
    original = {k: v for k, v in h.items() if k not in DL_HEADERS}
    return DeadLetter(
        reason=header_text(h, H.DL_REASON) or "",
        stage=header_text(h, H.DL_STAGE) or "",
        error=header_text(h, H.DL_ERROR, required=False) or "",
        source_topic=header_text(h, H.DL_SOURCE_TOPIC) or "",
        source_partition=int(header_float(h, H.DL_SOURCE_PARTITION) or 0),
        source_offset=int(header_float(h, H.DL_SOURCE_OFFSET) or 0),
        key=key,
        value=value,
        headers=original,
        failed_at=header_float(h, H.DL_FAILED_AT) or 0.0,
    )
