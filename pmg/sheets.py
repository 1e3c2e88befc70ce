"""Contact sheets: one PNG per user showing what the generator saw and what it chose.

Layout (``cols = max(#history, #candidates) + 1``)::

    [title line, optional]
    history 1 | history 2 | ...            | target (optional)
    cand 1    | cand 2 (framed = chosen) ... | chosen

Each tile is ``tile x tile`` (images are fitted keeping their aspect ratio) with up to two label lines
below it, drawn with PIL's default font. The PNG is written atomically (:mod:`common.io`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from common.io import atomic_open

#: One image: PIL, or a [3, H, W] tensor (float in [0, 1] or uint8).
ImageLike = Image.Image | torch.Tensor

PAD = 4
FRAME = 3  # width of the frame around the chosen candidate
FRAME_COLOUR = (220, 30, 30)
BACKGROUND = (255, 255, 255)
TILE_BACKGROUND = (235, 235, 235)
LABEL_LINES = 2


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _line_height(font: ImageFont.ImageFont) -> int:
    box = font.getbbox("Ag")
    return box[3] - min(box[1], 0) + 2


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet: row 0 = history (+ target), row 1 = candidates (+ chosen); see :meth:`box`."""

    width: int
    height: int
    cols: int
    tile: int
    label_h: int
    top: int

    def box(self, row: int, col: int) -> tuple[int, int]:
        """Top-left corner of the image area of cell (row, col)."""
        return PAD + col * (self.tile + PAD), self.top + row * (self.tile + self.label_h + PAD)


def layout(n_history: int, n_candidates: int, tile: int = 128, title: bool = False) -> SheetLayout:
    font = _font()
    line = _line_height(font)
    label_h = LABEL_LINES * line
    top = PAD + (line + PAD if title else 0)
    cols = max(n_history, n_candidates, 1) + 1
    width = PAD + cols * (tile + PAD)
    height = top + 2 * (tile + label_h + PAD)
    return SheetLayout(width=width, height=height, cols=cols, tile=tile, label_h=label_h, top=top)


def to_pil(image: ImageLike) -> Image.Image:
    """PIL image, or a tensor [3, H, W] (float in [0, 1] or uint8) -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(x.permute(1, 2, 0).numpy(), mode="RGB")
    raise TypeError(f"expected a PIL image or a tensor, got {type(image).__name__}")


def _fit(image: ImageLike, tile: int) -> Image.Image:
    im = to_pil(image)
    scale = tile / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (tile, tile), TILE_BACKGROUND)
    canvas.paste(im, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return canvas


def _label(sheet: Image.Image, text: str, xy: tuple[int, int], geo: SheetLayout, font: ImageFont.ImageFont) -> None:
    # draw on a cell-sized strip so long labels are clipped instead of running into the next tile
    strip = Image.new("RGB", (geo.tile, geo.label_h), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    line = _line_height(font)
    for i, part in enumerate(text.splitlines()[:LABEL_LINES]):
        draw.text((1, i * line), part, fill=(0, 0, 0), font=font)
    sheet.paste(strip, (xy[0], xy[1] + geo.tile))


def contact_sheet(
    history: Sequence[ImageLike],
    candidates: Sequence[ImageLike],
    chosen_index: int,
    out_path: str | os.PathLike,
    tile: int = 128,
    labels: Sequence[str] | None = None,
    history_labels: Sequence[str] | None = None,
    target: ImageLike | None = None,
    title: str | None = None,
) -> Path:
    """Write one user's sheet (history row, candidate row with the chosen one framed, the chosen image).

    Args:
        history: the user's history images (PIL or [3, H, W] tensors).
        candidates: the generated candidates, one per weight pair.
        chosen_index: index of the selected candidate.
        out_path: PNG path (parent folders are created).
        tile: edge of each tile in pixels.
        labels: one label per candidate, e.g. ``"wp=2 wt=1\\nz=-1.23"`` (two lines at most).
        history_labels: one label per history image (default "history i").
        target: optional target image, shown at the end of the history row.
        title: optional line on top (user id, keywords).

    Returns:
        The written path.
    """
    if not 0 <= chosen_index < len(candidates):
        raise IndexError(f"chosen_index {chosen_index} out of range for {len(candidates)} candidates")
    if labels is not None and len(labels) != len(candidates):
        raise ValueError(f"{len(labels)} labels for {len(candidates)} candidates")
    geo = layout(len(history), len(candidates), tile, title is not None)
    font = _font()
    sheet = Image.new("RGB", (geo.width, geo.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title is not None:
        draw.text((PAD, PAD), title, fill=(0, 0, 0), font=font)

    def put(image: ImageLike, row: int, col: int, text: str) -> tuple[int, int]:
        xy = geo.box(row, col)
        sheet.paste(_fit(image, tile), xy)
        _label(sheet, text, xy, geo, font)
        return xy

    for i, im in enumerate(history):
        put(im, 0, i, history_labels[i] if history_labels else f"history {i + 1}")
    if target is not None:
        put(target, 0, geo.cols - 1, "target")
    for i, im in enumerate(candidates):
        xy = put(im, 1, i, labels[i] if labels else f"candidate {i + 1}")
        if i == chosen_index:
            x, y = xy
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=FRAME_COLOUR, width=FRAME)
    chosen_label = f"chosen #{chosen_index + 1}"
    if labels:
        chosen_label += "\n" + labels[chosen_index].splitlines()[-1]
    put(candidates[chosen_index], 1, geo.cols - 1, chosen_label)

    out_path = Path(out_path)
    with atomic_open(out_path, "wb") as f:
        sheet.save(f, format="PNG")
    return out_path
