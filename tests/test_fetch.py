"""Fetching a source's archive from a local HTTP server on 127.0.0.1: checksum, resume, safe extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import real_fixtures as fx
from medvlm.pipeline.download import download_stage
from medvlm.data.fetch import extract, fetch_source
from medvlm.data.manifest import read_manifest
from medvlm.io import DataError
from medvlm.params import parse_params


class ArchiveServer:
    """Serves `payload` at /set.tar.gz with HTTP Range support; `cut_first` responses stop half-way."""

    def __init__(self):
        self.payload = b""
        self.cut_first = 0
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_GET(self):
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                body = server.payload[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(body)))
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                if server.cut_first > 0:
                    server.cut_first -= 1
                    body = body[: len(body) // 2]  # the connection drops mid-transfer
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/set.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server():
    serving = ArchiveServer()
    yield serving
    serving.httpd.shutdown()


def csv_archive(tmp_path: Path) -> bytes:
    """A tar.gz of one folder holding a generic classification CSV and its images."""
    fx.csv_source(tmp_path / "set" / "cls", "cls_id")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        bundle.add(tmp_path / "set", arcname="my-set")
    return buffer.getvalue()


def params_with(url: str, sha256: str):
    source = {"source": "csv", "url": url, "sha256": sha256, "subdir": "my-set/cls/cls_id.csv"}
    tiny = {key: 8 for key in ("pretrain_train", "pretrain_val", "cls_train", "cls_test", "ood_test", "vqa_train",
                               "vqa_test")}
    return parse_params({"data": {"image_size": 16, "workers": 1, **tiny, "cls_id": source, "cls_ood": source}})


def test_fetch_resumes_a_cut_transfer_and_checks_the_sha256(tmp_path, server):
    server.payload = csv_archive(tmp_path)
    server.cut_first, server.ranges = 1, []
    digest = hashlib.sha256(server.payload).hexdigest()
    out, cache = tmp_path / "data" / "raw", tmp_path / "downloads"
    meta = download_stage(params=params_with(server.url, digest), out=out, cache=cache)
    assert server.ranges[0] is None and server.ranges[1].startswith("bytes=")  # the second request resumed
    assert int(server.ranges[1].removeprefix("bytes=").rstrip("-")) == len(server.payload) // 2
    assert meta["real"]["cls_id"]["from"] == server.url
    assert len(read_manifest(out, "cls_id", out.parent)) == 8
    assert sorted(p.name for p in cache.iterdir()) == [digest]  # archive removed once extracted

    server.ranges = []
    download_stage(params=params_with(server.url, digest), out=tmp_path / "data" / "again", cache=cache)
    assert server.ranges == []  # the extracted copy is reused


def test_wrong_checksum_and_transfer_that_never_completes(tmp_path, server):
    server.payload = csv_archive(tmp_path)
    server.cut_first = 0
    out, cache = tmp_path / "data" / "raw", tmp_path / "downloads"
    wrong = "0" * 64
    with pytest.raises(DataError, match="SHA-256 mismatch: expected 0000") as excinfo:
        download_stage(params=params_with(server.url, wrong), out=out, cache=cache)
    assert server.url in str(excinfo.value)
    assert not list(cache.iterdir()) and not (tmp_path / "data").exists()

    server.cut_first = 100  # every response is cut off
    digest = hashlib.sha256(server.payload).hexdigest()
    with pytest.raises(DataError, match="download incomplete after 3 attempts"):
        download_stage(params=params_with(server.url, digest), out=out, cache=cache)
    partial = cache / f"{digest}.archive.part"
    assert 0 < partial.stat().st_size < len(server.payload)  # kept outside data/ to resume next time
    assert not (tmp_path / "data").exists()
    server.cut_first = 0
    download_stage(params=params_with(server.url, digest), out=out, cache=cache)
    assert (out / "cls_id.csv").is_file()


def test_extraction_refuses_members_outside_the_target(tmp_path):
    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as bundle:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        bundle.addfile(info, io.BytesIO(b"hi"))
    link_tar = tmp_path / "link.tar"
    with tarfile.open(link_tar, "w") as bundle:
        info = tarfile.TarInfo("inside/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bundle.addfile(info)
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as bundle:
        bundle.writestr("fine.txt", "ok")
        bundle.writestr("../../escaped.txt", "hi")
    for archive, member in ((evil_tar, "../escaped.txt"), (link_tar, "inside/passwd"), (evil_zip, "../../escaped.txt")):
        target = tmp_path / "out" / archive.stem
        with pytest.raises(DataError, match="refused") as excinfo:
            extract(archive, target)
        assert member in str(excinfo.value)
        assert not target.exists() and not (tmp_path / "escaped.txt").exists()
    not_archive = tmp_path / "plain.bin"
    not_archive.write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        extract(not_archive, tmp_path / "out" / "plain")


def test_only_http_urls(tmp_path):
    with pytest.raises(DataError, match="only http"):
        fetch_source("file:///etc/passwd", "0" * 64, tmp_path)
