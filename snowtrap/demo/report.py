"""The demo's HTML report: every image with its boxes, and the dead letters (autoescaped)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

THUMBNAIL_WIDTH = 320
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass
class ImageRow:
    path: Path
    file_name: str
    image_id: str | None
    truth_boxes: list[list[float]]
    size: tuple[int, int]
    detection: Any = None
    letter: Any = None
    upload_note: str = ""


def _thumbnail(row: ImageRow) -> str | None:
    """A base64 JPEG of the image with ground truth (green) and predictions (red) drawn on."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(row.path) as opened:
            image = opened.convert("RGB")
    except Exception:  # the corrupt file: no thumbnail, the dead letter says why
        return None
    width, height = image.size
    scale = THUMBNAIL_WIDTH / width
    image = image.resize((THUMBNAIL_WIDTH, max(1, round(height * scale))))
    draw = ImageDraw.Draw(image)
    for x, y, w, h in row.truth_boxes:
        draw.rectangle(
            [x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=(0, 220, 0), width=2
        )
    if row.detection is not None:
        for detection in row.detection.detections:
            x, y, w, h = detection.bbox
            box = [x * THUMBNAIL_WIDTH, y * image.height, (x + w) * THUMBNAIL_WIDTH]
            box.append((y + h) * image.height)
            draw.rectangle(box, outline=(255, 30, 30), width=2)
            label = f"{detection.conf:.2f}"
            text_y = max(0.0, box[1] - 11)
            draw.rectangle(
                [box[0], text_y, box[0] + 6 * len(label) + 4, text_y + 11], fill=(255, 30, 30)
            )
            draw.text((box[0] + 2, text_y), label, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return base64.b64encode(out.getvalue()).decode("ascii")


@dataclass
class Card:
    """One image of the report's grid, as the template shows it."""

    file_name: str
    status: str
    """'leopard' (the detector ran), 'empty' or 'dead' (no record): the frame's colour."""
    picture: str | None
    """Base64 JPEG thumbnail; None when the file cannot be decoded."""
    caption: str
    reason: str | None = None
    stage: str | None = None


def _card(row: ImageRow) -> Card:
    picture = _thumbnail(row)
    if row.detection is not None:
        d = row.detection
        leopards = len(d.detections)
        verdict = f"{leopards} leopard box(es)" if leopards else "no box"
        if not d.detector_ran:
            verdict = "below the gate"
        caption = f"P(leopard) {d.leopard_score:.2f} · {verdict} · truth: {len(row.truth_boxes)}"
        status = "leopard" if d.detector_ran else "empty"
        return Card(row.file_name, status, picture, caption)
    if row.letter is not None:
        return Card(
            row.file_name, "dead", picture, "dead letter:", row.letter.reason, row.letter.stage
        )
    return Card(row.file_name, "dead", picture, row.upload_note or "no outcome")


def write_report(
    path: Path,
    rows: list[ImageRow],
    summary: list[tuple[str, str]],
    rejected: list[tuple[str, str]],
) -> None:
    """`report.html`: the summary table, dead letters, uploader rejections, every image."""
    document = _TEMPLATES.get_template("report_template.html.j2").render(
        thumbnail_width=THUMBNAIL_WIDTH,
        summary=summary,
        letters=[(row.file_name, row.letter) for row in rows if row.letter is not None],
        rejected=rejected,
        cards=[_card(row) for row in rows],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)
