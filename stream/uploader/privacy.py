"""Location privacy: remove GPS from an image before it leaves the camera station.

Snow-leopard locations are what poachers look for, and `trap.images` and the dead-letter
topic keep the uploaded bytes for days to months. So the uploader removes the location by
byte surgery, never by re-encoding: pixels, capture time, make/model and every other tag stay
exactly as the camera wrote them.

- EXIF (a TIFF structure, in JPEG APP1, PNG `eXIf`, WebP `EXIF`, HEIF `Exif` items, or the
  TIFF file itself): the GPSInfo entry is removed from IFD0/IFD1 and the GPS IFD with its
  values is overwritten with zeros, in place. Nothing moves, so every offset in the file
  stays valid.
- XMP (which can repeat the position as `exif:GPSLatitude`): JPEG and WebP packets that name
  GPS are dropped, PNG XMP and raw-profile text chunks are dropped, elsewhere (HEIF, GIF)
  a packet naming GPS is blanked with spaces (same length, as XMP padding is).
- Metadata that cannot be parsed is dropped whole where the container allows it (JPEG, PNG,
  WebP); where it does not (a TIFF file, HEIF), `LocationStripError` says why and the
  uploader rejects the file rather than send a location.

Pure functions over bytes: no I/O, no Pillow.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

GPS_INFO_TAG = 0x8825
EXIF_HEADER = b"Exif\x00\x00"
XMP_JPEG_HEADERS = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
MAX_IFDS = 8
"""IFDs followed along one chain (IFD0, the thumbnail's IFD1, rare extras); guards loops."""

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
"""Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ...)."""


class LocationStripError(ValueError):
    """Location metadata that cannot be removed without losing the image: reject the file."""


def strip_location(data: bytes, fmt: str) -> bytes:
    """`data` (an image of sniffed format `fmt`) without GPS; the same bytes if it had none."""
    strip = _STRIPPERS.get(fmt, _strip_scanned)
    return strip(data)


# --- EXIF: a TIFF structure -----------------------------------------------------------------


def strip_gps_in_tiff(buf: bytearray, start: int, end: int) -> bool:
    """Remove GPSInfo from the TIFF structure in `buf[start:end]`, in place; True if found.

    The entry is cut out of its IFD (later entries move up 12 bytes, the count drops by one,
    the freed slot is zeroed) and the GPS IFD and its out-of-line values are zeroed. Raises
    `LocationStripError` on a structure it cannot follow.
    """
    if end - start < 8:
        raise LocationStripError("EXIF block shorter than a TIFF header")
    order = bytes(buf[start : start + 2])
    if order not in (b"II", b"MM"):
        raise LocationStripError("EXIF block has no TIFF byte-order mark")
    e = "<" if order == b"II" else ">"
    magic, first = struct.unpack_from(f"{e}HI", buf, start + 2)
    if magic != 42:
        raise LocationStripError(f"TIFF magic {magic} (BigTIFF and others are not handled)")

    def u16(at: int) -> int:
        return int(struct.unpack_from(f"{e}H", buf, at)[0])

    def u32(at: int) -> int:
        return int(struct.unpack_from(f"{e}I", buf, at)[0])

    def ifd_at(offset: int) -> tuple[int, int]:
        at = start + offset
        if offset < 8 or at + 2 > end:
            raise LocationStripError(f"IFD offset {offset} outside the EXIF block")
        count = u16(at)
        if at + 2 + 12 * count + 4 > end:
            raise LocationStripError(f"IFD at {offset} runs past the EXIF block")
        return at, count

    found = False
    offset, seen = first, set()
    while offset and len(seen) < MAX_IFDS and offset not in seen:
        seen.add(offset)
        at, count = ifd_at(offset)
        index = 0
        while index < count:
            entry = at + 2 + 12 * index
            if u16(entry) != GPS_INFO_TAG:
                index += 1
                continue
            _zero_gps_ifd(buf, start, end, u32(entry + 8), ifd_at, u16, u32)
            tail_end = at + 2 + 12 * count + 4  # entries after this one, then next-IFD offset
            buf[entry : tail_end - 12] = buf[entry + 12 : tail_end]
            buf[tail_end - 12 : tail_end] = bytes(12)
            count -= 1
            struct.pack_into(f"{e}H", buf, at, count)
            found = True
        offset = u32(at + 2 + 12 * count)
    return found


def _zero_gps_ifd(
    buf: bytearray,
    start: int,
    end: int,
    offset: int,
    ifd_at: Callable[[int], tuple[int, int]],
    u16: Callable[[int], int],
    u32: Callable[[int], int],
) -> None:
    """Overwrite the GPS IFD (entries, next pointer, out-of-line values) with zeros."""
    at, count = ifd_at(offset)
    for index in range(count):
        entry = at + 2 + 12 * index
        size = _TYPE_SIZES.get(u16(entry + 2), 1) * u32(entry + 4)
        if size > 4:
            value_at = start + u32(entry + 8)
            if value_at < start + 8 or value_at + size > end:
                raise LocationStripError("a GPS value lies outside the EXIF block")
            buf[value_at : value_at + size] = bytes(size)
    buf[at : at + 2 + 12 * count + 4] = bytes(2 + 12 * count + 4)


def _strip_tiff_file(data: bytes) -> bytes:
    buf = bytearray(data)
    return bytes(buf) if strip_gps_in_tiff(buf, 0, len(buf)) else data


# --- containers -----------------------------------------------------------------------------


def _strip_jpeg(data: bytes) -> bytes:
    """APP1 EXIF edited in place; XMP naming GPS and EXIF that cannot be parsed dropped."""
    buf = bytearray(data)
    drops: list[tuple[int, int]] = []
    pos, size = 2, len(buf)
    while pos + 4 <= size:
        if buf[pos] != 0xFF:  # stray byte between segments: skip it, as decoders do
            pos += 1
            continue
        marker = buf[pos + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no metadata after this
            break
        seg_end = pos + 2 + (buf[pos + 2] << 8 | buf[pos + 3])
        if seg_end > size or seg_end < pos + 4:
            drops.append((pos, size))  # cut short inside a segment: nothing usable follows
            break
        if marker == 0xE1:
            payload = bytes(buf[pos + 4 : pos + 4 + 64])
            if payload.startswith(EXIF_HEADER):
                try:
                    strip_gps_in_tiff(buf, pos + 4 + len(EXIF_HEADER), seg_end)
                except LocationStripError:
                    drops.append((pos, seg_end))
            elif payload.startswith(XMP_JPEG_HEADERS) and b"GPS" in buf[pos:seg_end]:
                drops.append((pos, seg_end))
        pos = seg_end
    return _without(buf, drops) if drops or buf != data else data


def _strip_png(data: bytes) -> bytes:
    """`eXIf` edited in place (CRC redone); XMP and raw EXIF text chunks dropped."""
    buf = bytearray(data)
    drops: list[tuple[int, int]] = []
    pos, size = 8, len(buf)
    while pos + 12 <= size:
        length = int.from_bytes(buf[pos : pos + 4], "big")
        kind = bytes(buf[pos + 4 : pos + 8])
        chunk_end = pos + 12 + length
        if chunk_end > size:
            if b"eXIf" in buf[pos:] or b"XML:com.adobe.xmp" in buf[pos:]:
                drops.append((pos, size))
            break
        body = pos + 8
        if kind == b"eXIf":
            try:
                if strip_gps_in_tiff(buf, body, body + length):
                    crc = zlib.crc32(buf[pos + 4 : body + length])
                    buf[body + length : chunk_end] = crc.to_bytes(4, "big")
            except LocationStripError:
                drops.append((pos, chunk_end))
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword = bytes(buf[body : body + 80]).split(b"\x00", 1)[0]
            if keyword == b"XML:com.adobe.xmp" or keyword.startswith(b"Raw profile type"):
                drops.append((pos, chunk_end))
        elif kind == b"IEND":
            break
        pos = chunk_end
    return _without(buf, drops) if drops or buf != data else data


_VP8X_EXIF_FLAG, _VP8X_XMP_FLAG = 0x08, 0x04


def _strip_webp(data: bytes) -> bytes:
    """`EXIF` chunk edited in place; `XMP ` chunks and EXIF that cannot be parsed dropped."""
    buf = bytearray(data)
    drops: list[tuple[int, int]] = []
    cleared_flags = 0
    pos, size = 12, len(buf)
    while pos + 8 <= size:
        kind = bytes(buf[pos : pos + 4])
        length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        chunk_end = pos + 8 + length + (length & 1)
        body = pos + 8
        if kind == b"EXIF":
            start = body + (len(EXIF_HEADER) if buf[body : body + 6] == EXIF_HEADER else 0)
            try:
                strip_gps_in_tiff(buf, start, min(body + length, size))
            except LocationStripError:
                drops.append((pos, min(chunk_end, size)))
                cleared_flags |= _VP8X_EXIF_FLAG
        elif kind == b"XMP ":
            drops.append((pos, min(chunk_end, size)))
            cleared_flags |= _VP8X_XMP_FLAG
        pos = chunk_end
    if not drops:
        return bytes(buf) if buf != data else data
    out = _without(buf, drops)
    out_buf = bytearray(out)
    out_buf[4:8] = (len(out_buf) - 8).to_bytes(4, "little")
    if out_buf[12:16] == b"VP8X" and len(out_buf) > 20:
        out_buf[20] &= ~cleared_flags & 0xFF
    return bytes(out_buf)


def _strip_scanned(data: bytes) -> bytes:
    """Containers parsed no further (HEIF, GIF, BMP): every `Exif\\0\\0`+TIFF block edited
    in place, every XMP packet naming GPS blanked; nothing moves, so offsets stay valid."""
    buf = bytearray(data)
    at = buf.find(EXIF_HEADER)
    while at != -1:
        tiff = at + len(EXIF_HEADER)
        if bytes(buf[tiff : tiff + 4]) in (b"II*\x00", b"MM\x00*"):
            strip_gps_in_tiff(buf, tiff, len(buf))  # a failure rejects the file
        at = buf.find(EXIF_HEADER, tiff)
    at = buf.find(b"<x:xmpmeta")
    while at != -1:
        close = buf.find(b"</x:xmpmeta>", at)
        if close == -1:
            if b"GPS" in buf[at:]:
                raise LocationStripError("an XMP packet naming GPS has no end")
            break
        close += len(b"</x:xmpmeta>")
        if b"GPS" in buf[at:close]:
            buf[at:close] = b" " * (close - at)
        at = buf.find(b"<x:xmpmeta", close)
    return bytes(buf) if buf != data else data


def _without(buf: bytearray, drops: list[tuple[int, int]]) -> bytes:
    """`buf` with the byte ranges in `drops` (sorted, not overlapping) left out."""
    parts, pos = [], 0
    for start, end in drops:
        parts.append(bytes(buf[pos:start]))
        pos = end
    parts.append(bytes(buf[pos:]))
    return b"".join(parts)


_STRIPPERS: dict[str, Callable[[bytes], bytes]] = {
    "JPEG": _strip_jpeg,
    "PNG": _strip_png,
    "WEBP": _strip_webp,
    "TIFF": _strip_tiff_file,
    "HEIF": _strip_scanned,
    "GIF": _strip_scanned,
    "BMP": _strip_scanned,
}
