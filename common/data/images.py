"""Resumable item-image download (stdlib urllib; no extra dependency).

``download_images`` fetches ``key -> URL`` into ``out_dir/<key><ext>``:
- a file already there that PIL can decode is skipped (and not requested again), so reruns resume;
- each download goes to a temporary file and is renamed into place (common.io), so no half image is left;
- content PIL cannot decode counts as a failure and is never written as the image;
- failures are retried with exponential backoff (4xx answers other than 408/429 are final at once), and the
  final ones are listed in ``out_dir/_failures.json`` and in the returned report.

``download_amazon_images(root)`` runs it on a prepared P5-layout folder: images land in ``<root>/images/<ASIN>.jpg``,
where the Amazon reader looks for them.
"""

from __future__ import annotations

import io
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from common.data._source import load_pickle, parse_record, text_lines
from common.data.corpus import DataError
from common.io import write_bytes, write_json

log = logging.getLogger(__name__)

FAILURES = "_failures.json"
# Suffixes the readers pick up (common.data._source.IMAGE_SUFFIXES); the first is the default.
SUFFIXES = (".jpg", ".jpeg", ".png")
_CONTENT_TYPES = {"image/jpeg": ".jpg", "image/jpg": ".jpg", "image/pjpeg": ".jpg", "image/png": ".png"}
_USER_AGENT = "vip5-pmg-image-fetch/0.1"


@dataclass
class DownloadReport:
    """Outcome of one ``download_images`` call.

    Attributes:
        ok: images downloaded in this call.
        skipped: images already present and decodable (not requested).
        failed: images that could not be obtained.
        failed_keys: their keys, sorted.
        errors: key -> last error message.
        paths: key -> image file, for every image present after the call.
    """

    ok: int = 0
    skipped: int = 0
    failed: int = 0
    failed_keys: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        head = f"images: {self.ok} downloaded, {self.skipped} already present, {self.failed} failed"
        return head + (f" (first: {', '.join(self.failed_keys[:5])})" if self.failed else "")


class _Permanent(Exception):
    """A failure that retrying cannot fix (HTTP 404, bad URL)."""


def is_decodable(src: Path | bytes, full: bool = True) -> bool:
    """True when PIL can read the image: a structure check, plus a full decode (catches truncation) if ``full``."""

    def _open() -> Image.Image:
        return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)

    try:
        with _open() as im:
            im.verify()
        if full:
            with _open() as im:
                im.load()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return False


def _existing(out_dir: Path, key: str) -> Path | None:
    for suffix in SUFFIXES:
        p = out_dir / f"{key}{suffix}"
        if p.is_file():
            return p
    return None


def _suffix(url: str, content_type: str | None) -> str:
    ext = Path(urllib.parse.urlparse(url).path).suffix.lower()
    if ext in SUFFIXES:
        return ext
    return _CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower(), SUFFIXES[0])


def _fetch(url: str, timeout: float) -> tuple[bytes, str | None]:
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise _Permanent(f"unsupported URL {url!r} (http/https only)")
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read(), resp.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise _Permanent(f"HTTP {e.code} {e.reason}") from e
        raise


def _download_one(key: str, url: str, out_dir: Path, retries: int, timeout: float, backoff: float) -> Path:
    """Fetch, check and atomically write one image; raise with the last error after ``1 + retries`` attempts."""
    if not key or "/" in key or "\\" in key or key.startswith("."):
        raise _Permanent(f"key {key!r} is not a plain file name")
    error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            data, content_type = _fetch(url, timeout)
            if not is_decodable(data):
                raise ValueError(f"downloaded {len(data)} bytes that are not a decodable image")
            path = out_dir / f"{key}{_suffix(url, content_type)}"
            write_bytes(path, data)
            return path
        except _Permanent:
            raise
        except Exception as e:  # network errors, timeouts, 5xx, corrupt content: retried
            error = e
    assert error is not None
    raise error


def download_images(
    urls: dict[str, str],
    out_dir: Path,
    retries: int = 3,
    timeout: float = 10.0,
    workers: int = 4,
    backoff: float = 0.5,
    progress: bool = True,
) -> DownloadReport:
    """Download ``key -> URL`` into ``out_dir/<key><ext>``, resuming from what is already there.

    Args:
        urls: key (an Amazon ASIN, an item id) -> http(s) URL.
        out_dir: image folder (created if needed).
        retries: extra attempts after a failed one (HTTP 4xx other than 408/429 is not retried).
        timeout: seconds per request.
        workers: parallel downloads (threads).
        backoff: seconds before the first retry; doubled for each further one.
        progress: show a tqdm bar.

    Returns:
        A :class:`DownloadReport`; the failures are also written to ``out_dir/_failures.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DownloadReport()
    todo: dict[str, str] = {}
    for key, url in urls.items():
        path = _existing(out_dir, key)
        if path is not None and is_decodable(path, full=False):  # files we wrote are whole (atomic)
            report.skipped += 1
            report.paths[key] = path
            continue
        if path is not None:
            log.warning("%s is not a decodable image; downloading it again", path)
            path.unlink()
        todo[key] = url

    failures: dict[str, dict[str, str]] = {}
    if todo:
        with (
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            tqdm(total=len(todo), desc="images", unit="img", disable=not progress) as bar,
        ):
            futures = {
                pool.submit(_download_one, key, url, out_dir, retries, timeout, backoff): key
                for key, url in todo.items()
            }
            for fut in as_completed(futures):
                key = futures[fut]
                try:
                    report.paths[key] = fut.result()
                    report.ok += 1
                except Exception as e:
                    failures[key] = {"url": todo[key], "error": f"{type(e).__name__}: {e}"}
                bar.update()
    report.failed = len(failures)
    report.failed_keys = sorted(failures)
    report.errors = {k: v["error"] for k, v in sorted(failures.items())}
    write_json(out_dir / FAILURES, dict(sorted(failures.items())))
    if failures:
        log.warning("%s; see %s", report, out_dir / FAILURES)
    return report


def amazon_image_urls(root: Path) -> dict[str, str]:
    """ASIN -> image URL of a prepared P5-layout folder (``item2img_dict.pkl``, else ``meta.json.gz`` imUrl)."""
    root = Path(root)
    img_dict, meta = root / "item2img_dict.pkl", root / "meta.json.gz"
    if img_dict.is_file():
        raw = load_pickle(img_dict)
        if not isinstance(raw, dict):
            raise DataError(f"{img_dict}: expected a dict ASIN -> image URL, got {type(raw).__name__}")
    elif meta.is_file():
        raw = {}
        for n, line in text_lines(meta):
            if line.strip():
                row = parse_record(meta, n, line)
                raw[row.get("asin")] = row.get("imUrl")
    else:
        raise DataError(f"{root}: neither item2img_dict.pkl nor meta.json.gz, so no image URLs are known")
    return {str(k): v for k, v in raw.items() if k and isinstance(v, str) and "://" in v}


def download_amazon_images(root: Path, **kwargs) -> DownloadReport:
    """Download the item images of a prepared Amazon folder into ``<root>/images`` (see :func:`download_images`)."""
    return download_images(amazon_image_urls(root), Path(root) / "images", **kwargs)
