"""Pictures for the HTML pages: boxes and LIME importances drawn onto frames, data URIs.

Pure functions, arrays in and images out; the report and the contact sheet share them.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DETECTION_COLOUR",
    "GROUP_COLOUR",
    "REGION_COLOUR",
    "SINGLE_COLOUR",
    "TRUTH_COLOUR",
    "draw_boxes",
    "importance_overlay",
    "jpeg_data_uri",
]

TRUTH_COLOUR = (255, 255, 255)
SINGLE_COLOUR = (255, 215, 0)
GROUP_COLOUR = (0, 200, 255)
DETECTION_COLOUR = (255, 60, 200)
REGION_COLOUR = (160, 90, 255)


def jpeg_data_uri(image: Image.Image, quality: int = 80) -> str:
    """`data:image/jpeg;base64,...` for an inline <img>."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def draw_boxes(
    image: Image.Image,
    boxes: np.ndarray,
    colour: tuple[int, int, int],
    width: int = 2,
    labels: list[str] | None = None,
) -> Image.Image:
    """Normalised xyxy boxes drawn onto a copy of `image`."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x0, y0, x1, y1 = box * np.array([w, h, w, h])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        if labels:
            draw.text((x0 + 3, y0 + 2), labels[i], fill=colour)
    return out


def importance_overlay(
    rgb: np.ndarray, segments: np.ndarray, importances: np.ndarray, selected: np.ndarray
) -> tuple[Image.Image, Image.Image]:
    """Two panels at the working size: importances (green +, red -) with superpixel borders,
    and the frame with only the selected superpixels left bright."""
    from skimage.segmentation import find_boundaries

    height, width = segments.shape
    base = np.asarray(Image.fromarray(rgb).resize((width, height)), dtype=np.float32)
    values = np.asarray(importances, dtype=np.float64)
    scale = max(float(np.abs(values).max()), 1e-12)
    per_pixel = values[segments] / scale
    heat = np.zeros_like(base)
    heat[..., 1] = np.clip(per_pixel, 0, 1) * 255
    heat[..., 0] = np.clip(-per_pixel, 0, 1) * 255
    alpha = np.abs(per_pixel)[..., None] * 0.6
    blended = base * (1 - alpha) + heat * alpha
    blended[find_boundaries(segments, mode="thick")] = (255, 255, 0)
    chosen = np.isin(segments, selected)
    dimmed = np.where(chosen[..., None], base, base * 0.3)
    return (
        Image.fromarray(blended.clip(0, 255).astype(np.uint8)),
        Image.fromarray(dimmed.clip(0, 255).astype(np.uint8)),
    )
