"""`trap.images` messages built the way the uploader builds them, for worker tests.

`image_message` gives (key, value, headers) through the contract's own builder; the worker's
unit tests wrap it as an `InboundMessage`, the Kafka tests produce it as it is (for inputs the
uploader refuses to send, such as a text file named .jpg, which another station's uploader
might still send).
"""

from __future__ import annotations

import time
from datetime import datetime

from snowtrap.stream.contracts import Headers, TrapImage, build_image_message, image_id_of

CAMERA = "cam-k2-07"
STATION = "station-k2"


def image_message(
    data: bytes,
    file_name: str,
    *,
    camera_id: str = CAMERA,
    station_id: str = STATION,
    content_type: str = "image/jpeg",
    capture_time: datetime | None = None,
    sent_at: float | None = None,
) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of one inline image, following the contract."""
    return build_image_message(
        TrapImage(
            image_id=image_id_of(data),
            camera_id=camera_id,
            station_id=station_id,
            file_name=file_name,
            content_type=content_type,
            capture_time=capture_time,
            sent_at=time.time() if sent_at is None else sent_at,
            payload=data,
        )
    )


def text_file_bytes() -> bytes:
    """A field note saved with a .jpg name: no image signature at all."""
    return b"camera K2-07 serviced 2025-01-03, batteries 80%, lens cleaned\n" * 20


def pdf_bytes() -> bytes:
    """The start of a PDF (a scanned datasheet copied onto the card)."""
    body = b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n" * 30
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + body + b"%%EOF\n"


def truncated_jpeg(jpeg: bytes, keep: float = 0.5) -> bytes:
    """A JPEG cut short (an interrupted write to the SD card)."""
    return jpeg[: max(4, int(len(jpeg) * keep))]


def garbled_jpeg(jpeg: bytes, seed: int) -> bytes:
    """A JPEG whose entropy-coded middle third is overwritten with noise (flash rot).

    The signature and headers survive, so the uploader sends it; the decoder must refuse it.
    """
    import numpy as np

    third = len(jpeg) // 3
    noise = np.random.default_rng(seed).integers(0, 256, third, dtype=np.uint8).tobytes()
    return jpeg[:third] + noise + jpeg[2 * third :]
