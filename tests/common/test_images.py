"""Resumable image download (common.data.images) against a local HTTP server on 127.0.0.1 only."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from common.data.images import (
    FAILURES,
    amazon_image_urls,
    download_amazon_images,
    download_images,
    is_decodable,
)


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


class _Shop:
    """Routes of the test server and how often each was requested."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.routes = {
            "/img/red.png": (200, "image/png", _png((255, 0, 0))),
            "/img/blue.jpg": (200, "image/png", _png((0, 0, 255))),  # the URL's suffix wins over content type
            "/img/green": (200, "image/png", _png((0, 255, 0))),  # no suffix: taken from the content type
            "/img/corrupt.jpg": (200, "image/jpeg", b"\xff\xd8 this is not a jpeg"),
        }

    def handle(self, path: str) -> tuple[int, str, bytes]:
        with self.lock:
            self.hits[path] += 1
            n = self.hits[path]
        if path == "/img/flaky.png":  # fails once, then works: must be retried
            return (503, "text/plain", b"busy") if n == 1 else (200, "image/png", _png((9, 9, 9)))
        return self.routes.get(path, (404, "text/plain", b"not found"))


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    shop = _Shop()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            code, ctype, body = shop.handle(self.path)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, shop
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_download_retry_failures_and_resume(server, tmp_path):
    base, shop = server
    urls = {
        "R": f"{base}/img/red.png",
        "B": f"{base}/img/blue.jpg",
        "G": f"{base}/img/green",
        "F": f"{base}/img/flaky.png",
        "X": f"{base}/img/corrupt.jpg",
        "M": f"{base}/img/missing.png",
    }
    out = tmp_path / "images"
    rep = download_images(urls, out, retries=2, timeout=5, workers=3, backoff=0, progress=False)
    assert (rep.ok, rep.skipped, rep.failed) == (4, 0, 2)
    assert rep.failed_keys == ["M", "X"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["R.png", "B.jpg", "G.png", "F.png", FAILURES])
    assert all(is_decodable(p) for p in rep.paths.values())
    assert Image.open(out / "R.png").getpixel((0, 0)) == (255, 0, 0)
    assert shop.hits["/img/flaky.png"] == 2  # failed once, retried
    assert shop.hits["/img/corrupt.jpg"] == 3  # corrupt content is retried, then given up, never written
    assert shop.hits["/img/missing.png"] == 1  # a 404 is final
    failures = json.loads((out / FAILURES).read_text())
    assert set(failures) == {"M", "X"} and "404" in failures["M"]["error"]
    assert failures["X"]["url"] == urls["X"] and "decodable" in failures["X"]["error"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    before = Counter(shop.hits)
    again = download_images(urls, out, retries=0, timeout=5, backoff=0, progress=False)
    assert (again.ok, again.skipped, again.failed) == (0, 4, 2)
    for path in ("/img/red.png", "/img/blue.jpg", "/img/green", "/img/flaky.png"):
        assert shop.hits[path] == before[path], f"{path} was requested again"
    assert set(again.paths) == {"R", "B", "G", "F"}


def test_broken_local_file_is_fetched_again(server, tmp_path):
    base, shop = server
    out = tmp_path / "images"
    out.mkdir()
    (out / "R.png").write_bytes(b"half an image")
    rep = download_images({"R": f"{base}/img/red.png"}, out, backoff=0, progress=False)
    assert (rep.ok, rep.skipped) == (1, 0) and is_decodable(out / "R.png")


def test_bad_urls_and_keys_fail_without_network(tmp_path):
    rep = download_images(
        {"a": "ftp://example.invalid/x.jpg", "../evil": "http://127.0.0.1:9/x.jpg"}, tmp_path, progress=False
    )
    assert rep.failed == 2 and "unsupported URL" in rep.errors["a"] and "plain file name" in rep.errors["../evil"]


def test_amazon_folder_urls_and_download(server, tmp_path):
    base, _ = server
    root = tmp_path / "beauty"
    root.mkdir()
    with gzip.open(root / "meta.json.gz", "wt") as f:
        f.write(repr({"asin": "A1", "imUrl": f"{base}/img/red.png"}) + "\n")
        f.write(repr({"asin": "A2", "title": "no image"}) + "\n")
    assert amazon_image_urls(root) == {"A1": f"{base}/img/red.png"}
    (root / "item2img_dict.pkl").write_bytes(pickle.dumps({"A1": f"{base}/img/blue.jpg", "A3": None}))
    assert amazon_image_urls(root) == {"A1": f"{base}/img/blue.jpg"}  # item2img_dict wins over meta
    rep = download_amazon_images(root, backoff=0, progress=False)
    assert rep.ok == 1 and (root / "images" / "A1.jpg").is_file()
