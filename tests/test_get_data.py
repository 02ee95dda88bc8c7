"""scripts/get_data.py against a local HTTP server (127.0.0.1) serving archives made here:
download, verification, resume of a cut download, and no half-written folder on failure."""
from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import get_data  # noqa: E402


def _png(seed: int, w: int, h: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {"a.png": _png(0, 20, 16), "b.png": _png(1, 17, 23), "c.png": _png(2, 31, 9)}


def _tar_gz(prefix: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {**IMAGES, "README.txt": b"not an image"}.items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(f"{prefix}/sub/d.png")  # a subfolder's images are not taken
        info.size = len(IMAGES["a.png"])
        tf.addfile(info, io.BytesIO(IMAGES["a.png"]))
    return buf.getvalue()


def _zip(prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in IMAGES.items():
            zf.writestr(f"{prefix}/{name}", data)
    return buf.getvalue()


class _Server:
    """Serves ``files`` with HTTP Range support; ``cut[name] = n`` sends only n bytes of the
    next full-body answer for ``name`` and drops the connection (a cut download)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.cut, self.log = files, {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.log.append((name, self.headers.get("Range")))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start, status = int(rng[6:-1]), 206
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                n = outer.cut.pop(name, None)
                self.wfile.write(body if n is None else body[:n])
                if n is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    big = _tar_gz("pkg-123/sets/demo")
    s = _Server({"demo.tar.gz": big, "demo.zip": _zip("DEMO_HR")})
    yield s
    s.close()


def _sources(tmp_path: Path, server: _Server, **over) -> Path:
    files = {n: [*Image.open(io.BytesIO(d)).size, hashlib.sha256(d).hexdigest()] for n, d in IMAGES.items()}
    entry = {"url": server.url + "demo.tar.gz", "member": "pkg-123/sets/demo", "dest": "bench/Demo/HR",
             "count": 3, "files": files}
    entry.update(over)
    zipped = {"url": server.url + "demo.zip", "member": "DEMO_HR", "dest": "zipped", "count": 3}
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"demo": entry, "zipped": zipped}))
    return path


def _run(tmp_path, sources, *names):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "get_data.py"), *names, "--root",
                           str(tmp_path / "data"), "--sources", str(sources)],
                          capture_output=True, text=True, timeout=120)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_download_unpack_verify(tmp_path, server):
    r = _run(tmp_path, _sources(tmp_path, server), "demo", "zipped")
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "data" / "bench" / "Demo" / "HR"
    assert sorted(p.name for p in dest.iterdir()) == sorted(IMAGES)
    assert all((dest / n).read_bytes() == d for n, d in IMAGES.items())
    assert sorted(p.name for p in (tmp_path / "data" / "zipped").iterdir()) == sorted(IMAGES)
    assert "3 images, sizes and sha256 of 3 checked" in r.stdout
    # nothing else is left behind: no temporary folders, no archives
    assert _tree(tmp_path / "data") == sorted(["bench", "bench/Demo", "bench/Demo/HR", "zipped", ".downloads",
                                               *[f"bench/Demo/HR/{n}" for n in IMAGES],
                                               *[f"zipped/{n}" for n in IMAGES]])
    # a second run leaves the folder alone
    r = _run(tmp_path, _sources(tmp_path, server), "demo")
    assert r.returncode == 0 and "already present" in r.stdout


def test_cut_download_resumes_with_a_range_request(tmp_path, server):
    size = len(server.files["demo.tar.gz"])
    server.cut["demo.tar.gz"] = size // 2
    sources = _sources(tmp_path, server)
    r = _run(tmp_path, sources, "demo")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "resume" in r.stderr
    part = tmp_path / "data" / ".downloads" / "demo.tar.gz.part"
    assert part.stat().st_size == size // 2
    assert not (tmp_path / "data" / "bench" / "Demo").exists()  # no half-made set folder
    r = _run(tmp_path, sources, "demo")
    assert r.returncode == 0, r.stderr
    assert server.log[-1] == ("demo.tar.gz", f"bytes={size // 2}-")
    dest = tmp_path / "data" / "bench" / "Demo" / "HR"
    assert all((dest / n).read_bytes() == d for n, d in IMAGES.items())
    assert not part.exists()


def test_failed_verification_leaves_no_folder(tmp_path, server):
    sources = _sources(tmp_path, server)
    data = yaml.safe_load(sources.read_text())
    data["demo"]["files"]["b.png"][2] = "0" * 64  # a wrong checksum
    sources.write_text(yaml.safe_dump(data))
    r = _run(tmp_path, sources, "demo")
    assert r.returncode == 2 and "sha256" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "bench" / "Demo").exists()
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []   # bad archive removed too
    r = _run(tmp_path, _sources(tmp_path, server, count=4), "demo")
    assert r.returncode == 2 and "expected 4 images" in r.stderr
    assert not (tmp_path / "data" / "bench" / "Demo").exists()


def test_unknown_set_and_shipped_list():
    assert get_data.main(["nope", "--root", "/nonexistent-root"]) == 2
    sources = get_data.load_sources(get_data.SOURCES)
    for name in ("set5", "set14", "b100", "urban100", "div2k-train", "div2k-valid", "bsd200"):
        assert sources[name]["url"].startswith("https://")
    assert len(sources["set5"]["files"]) == sources["set5"]["count"] == 5
