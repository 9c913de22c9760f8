"""Images that carry a location, and the checks that none is left (privacy tests)."""

from __future__ import annotations

import io
import struct
from datetime import datetime
from pathlib import Path

from PIL import Image

from snowtrap.stream.uploader.privacy import GPS_INFO_TAG

EXIF_IFD, DATETIME_ORIGINAL, MAKE = 0x8769, 0x9003, 0x010F
LATITUDE = (35.0, 52.0, 12.5)
LONGITUDE = (76.0, 30.0, 1.25)
WHEN = datetime(2024, 2, 1, 4, 5, 6)
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
    b'exif:GPSLatitude="35,52.2083N" exif:GPSLongitude="76,30.0208E"/></rdf:RDF></x:xmpmeta>'
)


def trap_exif(gps: bool = True) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "snowtrap"
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = WHEN.strftime("%Y:%m:%d %H:%M:%S")
    if gps:
        block = exif.get_ifd(GPS_INFO_TAG)
        block[1], block[2], block[3], block[4] = "N", LATITUDE, "E", LONGITUDE
    return exif


def gps_fingerprints() -> list[bytes]:
    """The GPS values as EXIF stores them (rationals, both byte orders) and the XMP text."""
    found = []
    for value in (12.5, 1.25):
        numerator, denominator = value.as_integer_ratio()
        for order in "<>":
            found.append(struct.pack(f"{order}II", numerator, denominator))
    return [*found, b"GPSLatitude"]


def assert_no_location(data: bytes) -> None:
    """No GPS values anywhere in the bytes, and (when Pillow can open them) no GPS IFD."""
    for fingerprint in gps_fingerprints():
        assert fingerprint not in data, fingerprint
    try:
        exif = Image.open(io.BytesIO(data)).getexif()
    except Exception:  # corrupt on purpose (dead letters): the byte check above stands
        return
    assert GPS_INFO_TAG not in exif and not exif.get_ifd(GPS_INFO_TAG)


def add_location(path: Path) -> None:
    """Rewrite the JPEG at `path` with the test position in its EXIF (other tags kept)."""
    image = Image.open(path)
    exif = image.getexif()
    block = exif.get_ifd(GPS_INFO_TAG)
    block[1], block[2], block[3], block[4] = "N", LATITUDE, "E", LONGITUDE
    image.save(path, format="JPEG", quality=92, exif=exif)
    assert any(fingerprint in path.read_bytes() for fingerprint in gps_fingerprints())
