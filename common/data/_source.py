"""Small helpers shared by the source readers (Amazon/P5, POG, MovieLens): folder checks and local images."""

from __future__ import annotations

import os
from pathlib import Path

from common.data.corpus import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def require_folder(root: Path, required: list[str], how_to_get: str) -> None:
    """Raise a DataError saying what to download and where, if ``root`` or a required file is absent."""
    if root.is_dir() and all((root / name).is_file() for name in required):
        return
    problem = (
        f"data folder {root} does not exist"
        if not root.is_dir()
        else "missing " + ", ".join(n for n in required if not (root / n).is_file()) + f" in {root}"
    )
    raise DataError(f"{problem}. {how_to_get}")


def local_images(folder: Path) -> dict[str, str]:
    """Map file stem -> path relative to the folder's parent for every image in ``folder`` (one directory scan).

    When both ``x.png`` and ``x.jpg`` exist the first suffix in IMAGE_SUFFIXES wins, so the choice is stable.
    """
    if not folder.is_dir():
        return {}
    found: dict[str, str] = {}
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file())
    rank = {s: n for n, s in enumerate(IMAGE_SUFFIXES)}
    for name in sorted(names, key=lambda n: rank.get(Path(n).suffix.lower(), len(rank))):
        p = Path(name)
        if p.suffix.lower() in rank and p.stem not in found:
            found[p.stem] = f"{folder.name}/{name}"
    return found


def is_url(ref: str) -> bool:
    return "://" in ref
