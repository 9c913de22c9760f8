"""Safe decoding of untrusted trap images: every bad input is a DecodeError with a reason."""

from __future__ import annotations

import io
import struct
import zlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image, ImageFile

from snowtrap.models.decode import (
    DecodeError,
    DecodeLimits,
    DecodeReason,
    decode_trap_image,
    looks_like_night_ir,
    read_capture_time,
    sniff_image_format,
    strip_metadata_jpeg,
)
from snowtrap.models.inference import resize_rgb

EXIF_IFD = 0x8769
GPS_IFD = 0x8825


def scene(height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """A colourful, textured frame (gradients + noise) that compresses like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)])
    noisy = base.transpose(1, 2, 0) + rng.integers(-20, 20, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", **save_args: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **save_args)
    return out.getvalue()


def exif_bytes(
    orientation: int | None = None,
    taken: str | None = None,
    offset: str | None = None,
    subsec: str | None = None,
    gps: bool = False,
) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    exif_ifd = exif.get_ifd(EXIF_IFD)
    if taken is not None:
        exif_ifd[0x9003] = taken
    if offset is not None:
        exif_ifd[0x9011] = offset
    if subsec is not None:
        exif_ifd[0x9291] = subsec
    if gps:
        exif.get_ifd(GPS_IFD).update({1: "N", 2: (27.0, 59.0, 17.0), 3: "E", 4: (86.0, 55.0, 31.0)})
    return exif.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def reason_of(data: bytes, **kwargs: object) -> DecodeReason:
    with pytest.raises(DecodeError) as caught:
        decode_trap_image(data, **kwargs)  # type: ignore[arg-type]
    assert caught.value.message  # readable text, not just a code
    return caught.value.reason


# --- failures ---------------------------------------------------------------------------


def test_empty_bytes() -> None:
    assert reason_of(b"") == DecodeReason.EMPTY


@pytest.mark.parametrize(
    "data",
    [b"hello, this is a text file\n" * 10, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"],
    ids=["text", "pdf"],
)
def test_not_an_image(data: bytes) -> None:
    assert sniff_image_format(data) is None
    assert reason_of(data) == DecodeReason.NOT_AN_IMAGE


def test_format_outside_the_allowed_list() -> None:
    gif = encode(scene(32, 32), "GIF")
    assert sniff_image_format(gif) == "GIF"
    assert reason_of(gif) == DecodeReason.UNSUPPORTED_FORMAT


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_jpeg(keep: float) -> None:
    data = encode(scene(), quality=90)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert reason_of(data[: int(len(data) * keep)]) == DecodeReason.TRUNCATED


def test_truncated_png() -> None:
    data = encode(scene(), "PNG")
    assert reason_of(data[: len(data) // 2]) == DecodeReason.TRUNCATED
    assert reason_of(data[:-12]) == DecodeReason.TRUNCATED  # only IEND missing


def test_corrupt_jpeg_entropy_segment() -> None:
    # Flipping entropy-coded bytes often decodes to silent garbage; a marker (here DHT,
    # 0xFFC4) planted inside the scan data makes libjpeg stop with an error every time.
    data = bytearray(encode(scene(), quality=90))
    middle = len(data) // 2
    data[middle : middle + 2] = b"\xff\xc4"
    assert reason_of(bytes(data)) == DecodeReason.CORRUPT


def test_corrupt_png_checksum() -> None:
    data = bytearray(encode(scene(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # inside the compressed data: the chunk CRC no longer matches
    assert reason_of(bytes(data)) == DecodeReason.CORRUPT


def test_too_many_bytes() -> None:
    data = encode(scene(), quality=90)
    assert reason_of(data, limits=DecodeLimits(max_bytes=len(data) - 1)) == (
        DecodeReason.TOO_LARGE_BYTES
    )


def test_pixel_bomb_rejected_from_the_header() -> None:
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 200
    assert reason_of(bomb) == DecodeReason.TOO_MANY_PIXELS


def test_pixel_limit_holds_without_pillows_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert reason_of(png_claiming(100_000, 100_000)) == DecodeReason.TOO_MANY_PIXELS
    small_limit = DecodeLimits(max_pixels=320 * 240 - 1)
    assert reason_of(encode(scene()), limits=small_limit) == DecodeReason.TOO_MANY_PIXELS


def test_refuses_to_run_with_truncated_loading_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_trap_image(encode(scene()))


# --- successful decodes -------------------------------------------------------------------


def test_plain_jpeg() -> None:
    decoded = decode_trap_image(encode(scene(), quality=90))
    assert decoded.rgb.shape == (240, 320, 3) and decoded.rgb.dtype == np.uint8
    assert (decoded.width, decoded.height, decoded.format) == (320, 240, "JPEG")
    assert decoded.capture_time is None and not decoded.looks_like_night_ir


def test_exif_orientation_rotates_pixels_and_size() -> None:
    frame = scene(240, 320)
    frame[:40, :40] = (255, 0, 0)  # red patch in the stored top-left corner
    data = encode(frame, quality=95, exif=exif_bytes(orientation=6))
    decoded = decode_trap_image(data)
    assert decoded.exif_orientation == 6
    assert decoded.rgb.shape == (320, 240, 3)
    assert (decoded.width, decoded.height) == (240, 320)
    # Orientation 6 = rotate 90 degrees clockwise: the stored top-left ends top-right.
    top_right = decoded.rgb[:40, -40:].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60


def test_capture_time_with_offset_and_subseconds() -> None:
    data = encode(
        scene(),
        exif=exif_bytes(taken="2024:01:15 03:22:10", offset="+05:45", subsec="25"),
    )
    expected = datetime(2024, 1, 15, 3, 22, 10, 250000, tzinfo=timezone(timedelta(minutes=345)))
    assert read_capture_time(data) == expected
    assert decode_trap_image(data).capture_time == expected


def test_capture_time_naive_without_offset_and_none_when_unset() -> None:
    naive = encode(scene(), exif=exif_bytes(taken="2023:12:31 23:59:59"))
    assert read_capture_time(naive) == datetime(2023, 12, 31, 23, 59, 59)
    unset = encode(scene(), exif=exif_bytes(taken="0000:00:00 00:00:00"))
    assert read_capture_time(unset) is None
    with pytest.raises(DecodeError):
        read_capture_time(b"not an image")


def test_reduced_decoding_keeps_the_full_size() -> None:
    data = encode(scene(1200, 1600), quality=90)
    decoded = decode_trap_image(data, max_side=224)
    assert max(decoded.rgb.shape[:2]) <= 224
    assert decoded.rgb.shape[:2] == (168, 224)
    assert (decoded.width, decoded.height) == (1600, 1200)
    assert decoded.scale == pytest.approx(224 / 1600)


def test_reduced_decoding_with_orientation_and_png() -> None:
    rotated = encode(scene(600, 800), quality=90, exif=exif_bytes(orientation=8))
    decoded = decode_trap_image(rotated, max_side=200)
    assert decoded.rgb.shape == (200, 150, 3)
    assert (decoded.width, decoded.height) == (600, 800)
    png = decode_trap_image(encode(scene(600, 800), "PNG"), max_side=100)
    assert png.rgb.shape == (75, 100, 3) and (png.width, png.height) == (800, 600)


def test_min_size_decodes_the_smallest_dct_scale_that_covers_the_model_input() -> None:
    data = encode(scene(960, 1280), quality=90)
    squashed = decode_trap_image(data, min_size=(224, 224))
    assert squashed.rgb.shape == (240, 320, 3)  # 1/4: the 240 rows still cover 224
    assert (squashed.width, squashed.height) == (1280, 960)
    fitted = decode_trap_image(data, min_size=448)
    assert fitted.rgb.shape == (480, 640, 3)  # 1/2: 1/4 would give a 320 side
    assert decode_trap_image(data, min_size=2000).rgb.shape == (960, 1280, 3)
    # The covered size is nearly the reference full decode, reduced by area averaging.
    reference = resize_rgb(decode_trap_image(data).rgb, 224, 224).astype(np.float64)
    served = resize_rgb(squashed.rgb, 224, 224).astype(np.float64)
    assert np.abs(served - reference).mean() < 3.0
    with pytest.raises(ValueError, match="not both"):
        decode_trap_image(data, max_side=224, min_size=224)
    with pytest.raises(ValueError, match="positive"):
        decode_trap_image(data, min_size=(0, 10))


def test_min_size_reduces_past_dct_scaling_and_other_formats_by_whole_factors() -> None:
    big = encode(scene(1200, 1600), quality=90)
    assert decode_trap_image(big, min_size=(50, 50)).rgb.shape == (50, 67, 3)  # 1/8, then 1/3
    png = decode_trap_image(encode(scene(600, 800), "PNG"), min_size=(200, 150))
    assert png.rgb.shape == (150, 200, 3)  # a whole factor of 4
    rotated = encode(scene(600, 800), quality=90, exif=exif_bytes(orientation=8))
    upright = decode_trap_image(rotated, min_size=(150, 200))  # display: 600 wide, 800 tall
    assert upright.rgb.shape == (200, 150, 3) and (upright.width, upright.height) == (600, 800)


def test_reduced_decoding_averages_areas_as_the_classifier_resize_does() -> None:
    """Halving a frame with a sharp edge on an even column: each output pixel is the mean of
    its own 2 x 2 block (area averaging), so the edge stays two levels, as cv2 INTER_AREA
    (`resize_rgb`) keeps it; a bilinear filter would smear it over intermediate values."""
    rgb = np.zeros((100, 200, 3), dtype=np.uint8)
    rgb[:, 100:] = 200
    rgb[::2, ::2] = 40  # a fine pattern the area mean turns into a flat 10 / 160
    decoded = decode_trap_image(encode(rgb, "PNG"), max_side=100).rgb
    expected = resize_rgb(rgb, 50, 100)
    assert sorted(np.unique(decoded).tolist()) == [10, 160]
    np.testing.assert_array_equal(decoded, expected)


def test_night_ir_frames_are_recognised() -> None:
    grey = scene()[:, :, 1]
    as_l_mode = decode_trap_image(encode(grey, quality=90))
    assert as_l_mode.rgb.shape == (240, 320, 3) and as_l_mode.looks_like_night_ir
    grey_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert decode_trap_image(encode(grey_rgb, quality=90)).looks_like_night_ir
    assert not looks_like_night_ir(scene())


def test_other_modes_become_rgb() -> None:
    sixteen_bit = np.full((16, 16), 32768, dtype=np.uint16)
    decoded = decode_trap_image(encode(sixteen_bit, "PNG"))
    assert decoded.rgb.shape == (16, 16, 3) and int(decoded.rgb[0, 0, 0]) == 127
    palette = Image.fromarray(scene(32, 32)).convert("P")
    out = io.BytesIO()
    palette.save(out, "PNG")
    assert decode_trap_image(out.getvalue()).rgb.shape == (32, 32, 3)
    cmyk = io.BytesIO()
    Image.fromarray(scene(32, 32)).convert("CMYK").save(cmyk, "JPEG")
    assert decode_trap_image(cmyk.getvalue()).rgb.shape == (32, 32, 3)
    tiff = decode_trap_image(encode(scene(32, 48), "TIFF"))
    assert tiff.format == "TIFF" and tiff.rgb.shape == (32, 48, 3)
    webp = decode_trap_image(encode(scene(32, 48), "WEBP", quality=90))
    assert webp.format == "WEBP" and webp.rgb.shape == (32, 48, 3)


def test_stripped_jpeg_carries_no_metadata() -> None:
    source = encode(scene(), exif=exif_bytes(taken="2024:01:15 03:22:10", gps=True))
    assert Image.open(io.BytesIO(source)).getexif().get_ifd(GPS_IFD)
    crop = decode_trap_image(source).rgb[10:90, 20:120]
    stripped = strip_metadata_jpeg(crop, quality=90)
    assert b"Exif" not in stripped and b"GPS" not in stripped and b"ICC_PROFILE" not in stripped
    reopened = Image.open(io.BytesIO(stripped))
    assert len(reopened.getexif()) == 0 and "exif" not in reopened.info
    assert reopened.size == (100, 80)


@pytest.mark.parametrize("seed", range(8))
def test_noise_over_jpeg_scan_data_is_corrupt_not_silent_garbage(seed: int) -> None:
    # libjpeg only warns about damaged entropy-coded data and returns grey-filled pixels;
    # the marker walk catches the stray markers that noise always holds.
    data = encode(scene(), quality=90)
    third = len(data) // 3
    noise = np.random.default_rng(seed).integers(0, 256, third, dtype=np.uint8).tobytes()
    assert reason_of(data[:third] + noise + data[2 * third :]) == DecodeReason.CORRUPT


@pytest.mark.parametrize(
    "options",
    [
        {"progressive": True},
        {"progressive": True, "optimize": True},
        {"restart_marker_blocks": 1},
        {"subsampling": 0, "quality": 95},
    ],
    ids=["progressive", "progressive-optimized", "restart-markers", "444"],
)
def test_valid_jpeg_variants_pass_the_marker_walk(options: dict) -> None:
    data = encode(scene(), **options)
    decode_trap_image(data)
    decode_trap_image(data + b"\xff\xd8maker trailer after EOI\xff\xc0")
