"""EXIF, as far as camera traps need it: orientation and capture time.

Cheap cameras write malformed EXIF often; nothing here raises on it: a bad orientation reads as
1 (upright), a bad or unset timestamp as None.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from PIL import Image

__all__ = [
    "ORIENTATIONS_SWAPPING_AXES",
    "ORIENTATION_TRANSPOSE",
    "capture_time_from_image",
    "exif_orientation",
    "parse_exif_datetime",
]

# EXIF tags (TIFF/EXIF 2.32 numbering).
_TAG_ORIENTATION = 0x0112
_TAG_EXIF_IFD = 0x8769
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_DATETIME_DIGITIZED = 0x9004
_TAG_OFFSET_TIME_ORIGINAL = 0x9011
_TAG_OFFSET_TIME_DIGITIZED = 0x9012
_TAG_SUBSEC_TIME_ORIGINAL = 0x9291
_TAG_SUBSEC_TIME_DIGITIZED = 0x9292

# EXIF orientation -> the transpose that brings the stored pixels upright.
ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ORIENTATIONS_SWAPPING_AXES = frozenset({5, 6, 7, 8})


def exif_orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_TAG_ORIENTATION, 1))
    except Exception:  # malformed EXIF must not make a good image undecodable
        return 1
    return value if 1 <= value <= 8 else 1


_EXIF_DATETIME = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


def parse_exif_datetime(value: object, offset: object, subsec: object) -> datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' (+ 'OffsetTime' '+HH:MM', + 'SubSecTime' digits)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _EXIF_DATETIME.match(value.strip().strip("\x00"))
    if match is None:
        return None
    try:
        moment = datetime(*(int(part) for part in match.groups()))  # type: ignore[misc]
    except ValueError:  # '0000:00:00 00:00:00' is what unset camera clocks write
        return None
    if isinstance(subsec, bytes):
        subsec = subsec.decode("ascii", "replace")
    if isinstance(subsec, str):
        digits = subsec.strip().strip("\x00")
        if digits.isdigit():
            moment = moment.replace(microsecond=int(digits[:6].ljust(6, "0")))
    if isinstance(offset, bytes):
        offset = offset.decode("ascii", "replace")
    if isinstance(offset, str):
        off = _EXIF_OFFSET.match(offset.strip().strip("\x00"))
        if off is not None:
            sign = -1 if off.group(1) == "-" else 1
            delta = timedelta(hours=int(off.group(2)), minutes=int(off.group(3)))
            if delta < timedelta(hours=24):
                moment = moment.replace(tzinfo=timezone(sign * delta))
    return moment


def capture_time_from_image(img: Image.Image) -> datetime | None:
    """DateTimeOriginal (else DateTimeDigitized) with its offset and sub-seconds, if any."""
    try:
        exif_ifd = img.getexif().get_ifd(_TAG_EXIF_IFD)
    except Exception:  # malformed EXIF is common on cheap cameras: no time, not no image
        return None
    for tag, offset_tag, subsec_tag in (
        (_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_TIME_ORIGINAL, _TAG_SUBSEC_TIME_ORIGINAL),
        (_TAG_DATETIME_DIGITIZED, _TAG_OFFSET_TIME_DIGITIZED, _TAG_SUBSEC_TIME_DIGITIZED),
    ):
        moment = parse_exif_datetime(
            exif_ifd.get(tag), exif_ifd.get(offset_tag), exif_ifd.get(subsec_tag)
        )
        if moment is not None:
            return moment
    return None
