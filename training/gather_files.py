"""The files a gather run writes: atomic writes, JSON lines, where each image lives.

Kept images sit under `images/<label>/<sha256>.<ext>`, dropped ones under `rejected/<label>/`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["place_image", "stored_image", "write_atomic", "write_lines"]


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_atomic(path, buffer.getvalue().encode())


def stored_image(out_dir: Path, labels: Sequence[str], sha: str, ext: str) -> Path | None:
    name = f"{sha}.{ext}"
    for folder in ("images", "rejected"):
        for label in labels:
            path = out_dir / folder / label / name
            if path.is_file():
                return path
    return None


def place_image(
    out_dir: Path, labels: Sequence[str], label: str, sha: str, ext: str, keep: bool
) -> None:
    """Put the file of (label, sha) under images/ when kept, else under rejected/."""
    name = f"{sha}.{ext}"
    target = out_dir / ("images" if keep else "rejected") / label / name
    other = out_dir / ("rejected" if keep else "images") / label / name
    if target.is_file():
        other.unlink(missing_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if other.is_file():
        os.replace(other, target)
        return
    source = stored_image(out_dir, labels, sha, ext)
    if source is not None:
        shutil.copyfile(source, target)
