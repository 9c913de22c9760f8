"""Location privacy at the station: GPS leaves no image the uploader sends, nothing else
changes (pixels, capture time, make/model), and what cannot be cleaned is not sent."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers.location import (
    DATETIME_ORIGINAL,
    EXIF_IFD,
    MAKE,
    WHEN,
    XMP,
    assert_no_location,
    gps_fingerprints,
    trap_exif,
)
from PIL import Image

from snowtrap.models.decode import read_capture_time, sniff_image_format
from snowtrap.stream.uploader.claim_checks import OwnPathStore
from snowtrap.stream.uploader.files import Candidate
from snowtrap.stream.uploader.prepare import NotSent, PhaseTimes, Prepared, prepare
from snowtrap.stream.uploader.privacy import (
    GPS_INFO_TAG,
    LocationStripError,
    strip_gps_in_tiff,
    strip_location,
)
from snowtrap.stream.uploader.settings import UploaderSettings


def pixels() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def encoded(fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels()).save(out, format=fmt, **options)
    return out.getvalue()


def assert_same_image(before: bytes, after: bytes) -> None:
    """Pixels identical (no re-encoding), capture time and make kept."""
    old, new = Image.open(io.BytesIO(before)), Image.open(io.BytesIO(after))
    assert np.array_equal(np.asarray(old.convert("RGB")), np.asarray(new.convert("RGB")))
    assert new.getexif().get(MAKE) == "snowtrap"
    assert read_capture_time(after) == WHEN


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_gps_is_removed_losslessly(fmt: str):
    options = {"exif": trap_exif(), **({"lossless": True} if fmt == "WEBP" else {})}
    original = encoded(fmt, **options)
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(GPS_INFO_TAG)
    assert any(f in original for f in gps_fingerprints())

    stripped = strip_location(original, fmt)

    assert_no_location(stripped)
    assert_same_image(original, stripped)
    assert len(stripped) == len(original)  # edited in place: nothing moved
    assert strip_location(stripped, fmt) == stripped  # idempotent: the image id is stable


def test_images_without_gps_are_sent_byte_for_byte():
    for fmt, options in (("JPEG", {"exif": trap_exif(gps=False)}), ("PNG", {}), ("BMP", {})):
        data = encoded(fmt, **options)
        assert strip_location(data, fmt) is data


def test_tiff_structure_loses_its_gps_ifd_and_keeps_the_rest():
    tiff = bytearray(trap_exif().tobytes()[6:])  # Pillow writes "Exif\0\0" + TIFF
    assert tiff[:2] in (b"II", b"MM")
    assert strip_gps_in_tiff(tiff, 0, len(tiff))
    exif = Image.Exif()
    exif.load(b"Exif\x00\x00" + bytes(tiff))
    assert GPS_INFO_TAG not in exif and exif[MAKE] == "snowtrap"
    assert exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] == "2024:02:01 04:05:06"
    assert not strip_gps_in_tiff(tiff, 0, len(tiff))
    # A TIFF file is the structure itself.
    tiff_file = Image.Exif()
    tiff_file.load(b"Exif\x00\x00" + strip_location(trap_exif().tobytes()[6:], "TIFF"))
    assert GPS_INFO_TAG not in tiff_file and tiff_file[MAKE] == "snowtrap"
    with pytest.raises(LocationStripError):
        strip_location(b"II*\x00\xff\xff\xff\x7f", "TIFF")


def test_jpeg_xmp_naming_gps_and_unreadable_exif_are_dropped():
    xmp_segment = b"\xff\xe1" + struct.pack(">H", 2 + 29 + len(XMP))
    xmp_segment += b"http://ns.adobe.com/xap/1.0/\x00" + XMP
    plain = encoded("JPEG", exif=trap_exif())
    with_xmp = plain[:2] + xmp_segment + plain[2:]
    stripped = strip_location(with_xmp, "JPEG")
    assert b"GPSLatitude" not in stripped and b"adobe" not in stripped
    assert_no_location(stripped)
    assert_same_image(plain, stripped)

    # EXIF whose GPS IFD points outside the block: the APP1 segment goes whole.
    broken = bytearray(plain)
    at = broken.find(b"Exif\x00\x00") + 6
    tiff = bytes(broken[at:])
    order = "<" if tiff[:2] == b"II" else ">"
    ifd0 = struct.unpack_from(f"{order}I", tiff, 4)[0]
    count = struct.unpack_from(f"{order}H", tiff, ifd0)[0]
    for index in range(count):
        entry = ifd0 + 2 + 12 * index
        if struct.unpack_from(f"{order}H", tiff, entry)[0] == GPS_INFO_TAG:
            struct.pack_into(f"{order}I", broken, at + entry + 8, 0x7FFFFFF0)
    cleaned = strip_location(bytes(broken), "JPEG")
    assert b"Exif\x00\x00" not in cleaned
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(cleaned)).convert("RGB")),
        np.asarray(Image.open(io.BytesIO(plain)).convert("RGB")),
    )


def test_heif_like_containers_are_edited_in_place_and_xmp_blanked():
    # Any container: an Exif item ("Exif\0\0" + TIFF) and an XMP packet somewhere inside.
    body = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"mdat" + trap_exif().tobytes()
    body += b"\x00" * 16 + XMP + b"\x00" * 16
    stripped = strip_location(body, "HEIF")
    assert len(stripped) == len(body)
    assert b"GPSLatitude" not in stripped
    at = stripped.find(b"Exif\x00\x00")
    exif = Image.Exif()
    exif.load(stripped[at:])
    assert GPS_INFO_TAG not in exif and exif[MAKE] == "snowtrap"


def test_png_xmp_text_chunks_are_dropped():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    original = encoded("PNG", exif=trap_exif(), pnginfo=info)
    stripped = strip_location(original, "PNG")
    assert_no_location(stripped)
    assert_same_image(original, stripped)
    Image.open(io.BytesIO(stripped)).load()  # CRCs right


def prepared_from(tmp_path: Path, data: bytes, **settings) -> Prepared | NotSent:
    path = tmp_path / "IMG_0001.JPG"
    path.write_bytes(data)
    config = UploaderSettings(camera_id="cam", station_id="st", **settings)
    return prepare(
        Candidate(path, path.name), config, OwnPathStore(), PhaseTimes(), lambda *_: None
    )


def test_uploader_strips_by_default_and_sends_as_is_when_the_operator_opts_out(tmp_path: Path):
    original = encoded("JPEG", exif=trap_exif())
    stripped = prepared_from(tmp_path, original)
    assert isinstance(stripped, Prepared) and stripped.image.payload is not None
    assert_no_location(stripped.image.payload)
    assert stripped.image.capture_time == WHEN and stripped.image.camera_id == "cam"
    kept = prepared_from(tmp_path, original, strip_gps=False)
    assert isinstance(kept, Prepared) and kept.image.payload == original
    assert kept.image.image_id != stripped.image.image_id
    assert sniff_image_format(stripped.image.payload) == "JPEG"


def test_what_cannot_be_cleaned_is_not_sent(tmp_path: Path):
    broken_tiff = prepared_from(tmp_path, b"II*\x00\xff\xff\xff\x7f" + b"\x00" * 64)
    assert isinstance(broken_tiff, NotSent) and broken_tiff.result == "rejected"
    assert "cannot remove the location" in broken_tiff.reason
    # Over the message limit with GPS and no store: the file itself would travel.
    big = encoded("JPEG", exif=trap_exif())
    too_big = prepared_from(
        tmp_path, big, max_message_bytes=65 * 1024 + len(big) // 2, header_room_bytes=65 * 1024
    )
    assert isinstance(too_big, NotSent) and "claim_check_store" in too_big.reason
