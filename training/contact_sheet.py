"""The contact sheet of `snowtrap evaluate`: the worst misses and false alarms, as tiles.

One PNG (sections of tiles, SHEET_COLUMNS a row) and one self-contained HTML page
(`contact_sheet_template.html`, Jinja2, autoescaped) with the same tiles inline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from snowtrap.training.drawing import draw_boxes, jpeg_data_uri
from snowtrap.training.html import render
from snowtrap.training.labelled_frames import LabelledFrame, decode_frame

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "SECTION_HEADER",
    "SHEET_COLUMNS",
    "SHEET_HTML",
    "SHEET_PNG",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "write_contact_sheet",
]

SHEET_PNG = "contact_sheet.png"
SHEET_HTML = "contact_sheet.html"
TEMPLATE = "contact_sheet_template.html"
TILE_WIDTH, TILE_HEIGHT, CAPTION_HEIGHT, SECTION_HEADER, SHEET_COLUMNS = 256, 192, 30, 26, 4
TRUTH_COLOUR = (40, 220, 60)
PREDICTION_COLOUR = (255, 40, 40)
SECTIONS = {
    "misses": "Leopard frames with the lowest classifier scores (worst misses)",
    "high_scoring_negatives": "Frames without a leopard, highest classifier scores",
    "negatives_with_boxes": "Frames without a leopard where the detector drew a crop-worthy box",
}


def _select(rows: Sequence[dict[str, Any]], max_sheet: int) -> dict[str, list[int]]:
    """Row indices per sheet section, worst first."""
    order = range(len(rows))
    leopards = sorted((i for i in order if rows[i]["label"]), key=lambda i: rows[i]["score"])
    negatives = [i for i in order if not rows[i]["label"]]
    return {
        "misses": leopards[:max_sheet],
        "high_scoring_negatives": sorted(negatives, key=lambda i: -rows[i]["score"])[:max_sheet],
        "negatives_with_boxes": sorted(
            (i for i in negatives if rows[i]["n_boxes_crop"]),
            key=lambda i: -(rows[i]["max_box_score"] or 0.0),
        )[:max_sheet],
    }


def _tile(frame: LabelledFrame, row: dict[str, Any], labels: Path) -> Image.Image:
    from PIL import Image, ImageDraw

    rgb = decode_frame(frame, labels, max(TILE_WIDTH, TILE_HEIGHT) * 2).rgb
    picture = Image.fromarray(rgb)
    picture.thumbnail((TILE_WIDTH, TILE_HEIGHT - CAPTION_HEIGHT))
    picture = draw_boxes(picture, np.array(row["truth"]), TRUTH_COLOUR)
    predicted = [box["xyxy"] for box in row["boxes"]]
    picture = draw_boxes(
        picture,
        np.array(predicted),
        PREDICTION_COLOUR,
        labels=[f"{box['score']:.2f}" for box in row["boxes"]],
    )
    tile = Image.new("RGB", (TILE_WIDTH, TILE_HEIGHT), (24, 24, 24))
    tile.paste(picture, ((TILE_WIDTH - picture.width) // 2, 0))
    draw = ImageDraw.Draw(tile)
    top = TILE_HEIGHT - CAPTION_HEIGHT + 2
    draw.text((4, top), f"id {row['id']}"[:40], fill=(235, 235, 235))
    box_text = "-" if row["max_box_score"] is None else f"{row['max_box_score']:.3f}"
    draw.text(
        (4, top + 13),
        f"score {row['score']:.3f} {'PASS' if row['passes_gate'] else 'below'} box {box_text}",
        fill=(235, 235, 235),
    )
    return tile


def write_contact_sheet(
    frames: Sequence[LabelledFrame],
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    labels: Path,
    out_dir: Path,
    max_sheet: int,
) -> dict[str, Any]:
    """Write the PNG and the HTML page to `out_dir`; `frames[i]` is the frame of `rows[i]`.

    `summary` holds the page's `title` and `lines` ((figure, value) pairs)."""
    from PIL import Image, ImageDraw

    chosen = _select(rows, max_sheet)
    tiles = {i: _tile(frames[i], rows[i], labels) for ids in chosen.values() for i in ids}
    width = TILE_WIDTH * SHEET_COLUMNS
    height = sum(
        SECTION_HEADER + math.ceil(len(ids) / SHEET_COLUMNS) * TILE_HEIGHT
        for ids in chosen.values()
    )
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for section, ids in chosen.items():
        draw.text((6, y + 7), f"{SECTIONS[section]}: {len(ids) or 'none'}", fill=(0, 0, 0))
        y += SECTION_HEADER
        for n, i in enumerate(ids):
            sheet.paste(
                tiles[i], ((n % SHEET_COLUMNS) * TILE_WIDTH, y + (n // SHEET_COLUMNS) * TILE_HEIGHT)
            )
        y += math.ceil(len(ids) / SHEET_COLUMNS) * TILE_HEIGHT
    png = out_dir / SHEET_PNG
    sheet.save(png)

    sections = [
        {
            "id": section,
            "title": SECTIONS[section],
            "figures": [
                {
                    "id": rows[i]["id"],
                    "file": rows[i]["file"],
                    "image": jpeg_data_uri(tiles[i], quality=82),
                    "score": f"{rows[i]['score']:.4f}",
                    "boxes": rows[i]["n_boxes"],
                }
                for i in ids
            ],
        }
        for section, ids in chosen.items()
    ]
    page = out_dir / SHEET_HTML
    html = render(TEMPLATE, title=summary["title"], lines=summary["lines"], sections=sections)
    page.write_text(html, encoding="utf-8")
    return {
        "png": str(png),
        "html": str(page),
        "sections": {name: [rows[i]["id"] for i in ids] for name, ids in chosen.items()},
    }
