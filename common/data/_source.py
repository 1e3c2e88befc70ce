"""Helpers shared by the source readers (Amazon/P5, POG, MovieLens) and the prepare step.

- reading: :func:`text_lines` (numbered lines of a text file, gzip or not), :func:`parse_record` (one JSON
  object or Python dict literal per line), :func:`read_json` and :func:`load_pickle` (data-only unpickling).
  Each turns an undecodable or malformed file into a :class:`~common.data.corpus.DataError` naming the file
  and, for text and JSON, the 1-based line;
- folder checks (:func:`require_folder`) and local image discovery (:func:`local_images`).
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import os
import pickle
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.data.corpus import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GZIP_MAGIC = b"\x1f\x8b"


def _not_utf8(path: Path, lineno: int, line: bytes, column: int) -> DataError:
    """The error for a line of ``path`` whose byte at 0-based ``column`` starts no valid UTF-8 sequence."""
    return DataError(f"{path}:{lineno}: not valid UTF-8 (byte {line[column]:#04x} at column {column + 1})")


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) of a UTF-8 text file, gzip-compressed or not (told by its first bytes).

    Every line is yielded, empty ones included, with its ending (``\\r\\n`` becomes ``\\n``); a UTF-8
    byte-order mark at the start of the file is dropped. Lines are decoded one at a time, so bytes that are
    not UTF-8, or a damaged gzip stream, raise DataError naming the file and the line.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw, mode="rb") if gz else contextlib.nullcontext(raw) as f:
            lineno = 0
            try:
                for lineno, data in enumerate(f, 1):
                    try:
                        line = data.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise _not_utf8(path, lineno, data, e.start) from None
                    if lineno == 1 and line.startswith("\ufeff"):
                        line = line[1:]
                    if line.endswith("\r\n"):
                        line = line[:-2] + "\n"
                    yield lineno, line
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                if not gz:
                    raise
                raise DataError(f"{path}:{lineno + 1}: damaged gzip data ({type(e).__name__}: {e})") from None


def read_json(path: str | os.PathLike) -> Any:
    """Parse a UTF-8 JSON file; bytes that are not UTF-8 or invalid JSON raise DataError naming file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(path, data.count(b"\n", 0, start) + 1, data[start:], e.start - start) from None
    try:
        return json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None


def parse_record(path: str | os.PathLike, lineno: int, line: str) -> dict:
    """One record of a file with an object per line: a JSON object, else a Python dict literal.

    The Amazon-2014 meta files are Python literals (P5 used ``eval``); ``ast.literal_eval`` reads them without
    running code. Anything else raises DataError naming the file and the line.
    """
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        try:
            obj = ast.literal_eval(line.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            raise DataError(
                f"{path}:{lineno}: not a JSON object or Python dict literal ({type(e).__name__}: {e})"
            ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected one object per line, got {type(obj).__name__}")
    return obj


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only data: builtin containers and scalars, OrderedDict/defaultdict, numpy scalars and arrays."""

    ALLOWED = {
        ("builtins", n)
        for n in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                  "complex", "bool", "slice")
    } | {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("copyreg", "_reconstructor"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only plain data is allowed)")
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a data-only pickle; a corrupt file, or one that would import other code, raises DataError naming it."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f).load()
    except OSError:
        raise
    except Exception as e:  # corrupt pickles raise nearly anything: UnpicklingError, EOFError, KeyError, ...
        raise DataError(f"{path}: cannot read pickle ({type(e).__name__}: {e})") from e


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
