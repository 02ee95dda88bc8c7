#!/usr/bin/env python
"""Download, unpack and verify a named data set into the data root.

    python scripts/get_data.py set5                 # -> load/benchmark/Set5/HR (or $LMF_DATA/...)
    python scripts/get_data.py set14 bsd200         # several at once
    python scripts/get_data.py --list               # the sets, from scripts/data_sources.yaml
    python scripts/get_data.py div2k-valid --root /data/sr

The download URLs, the folder each set becomes and what to verify (image count, and per file
the size and sha256 where known) are kept in one file, ``scripts/data_sources.yaml``.

* A download goes to ``<root>/.downloads/<file>.part`` with a progress bar; if it is cut
  (network error, Ctrl-C), running the same command again resumes it with an HTTP range request
  (a server that ignores ranges makes it start over).
* The archive is unpacked into a temporary folder next to the destination, verified, and only
  then renamed into place: the destination is either absent or complete, never half-written.
* An existing destination folder is left alone ("already present"); delete it to fetch again.
* The archive is deleted after success (``--keep-archive`` keeps it) and after a failed
  verification (it is not what the list describes).

Errors are one line ``error: ...`` with exit status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = ROOT / "scripts" / "data_sources.yaml"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CHUNK = 1 << 20


class DataError(Exception):
    """One-line failure of this script (exit status 2)."""


def load_sources(path: Path) -> dict:
    from utils.config import read_yaml
    from utils.errors import UserError

    try:
        data = read_yaml(path, "source list")
    except UserError as e:
        raise DataError(str(e)) from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a mapping name -> {{url, member, dest, count, files}}")
    for name, entry in data.items():
        missing = [k for k in ("url", "member", "dest") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DataError(f"{path}: set {name!r} lacks {', '.join(missing)}")
    return data


def _bar(total: int | None, initial: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a requirement
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, mininterval=0.5, leave=False)


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``dest`` via ``dest.part``, resuming a partial ``.part`` with a Range request."""
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "lmf-sr-get-data/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    how = f"run the same command again to resume ({part} is kept)"
    try:
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing after `have`: the .part is already complete
                size = e.headers.get("Content-Range", "").rpartition("/")[2]
                if size.isdigit() and int(size) == have:
                    os.replace(part, dest)
                    return
                part.unlink()
                raise DataError(f"cannot resume {url} (HTTP 416); the partial file was removed: run again") from None
            raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        with resp:
            if have and resp.status == 206:
                start = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
                if start != str(have):
                    raise DataError(f"cannot resume {url}: the server answered range {start!r} for {have}")
                mode = "ab"
                print(f"resuming {url} at {have / 2**20:.1f} MiB", file=sys.stderr)
            else:
                if have:
                    print(f"{url}: the server does not resume downloads; starting over", file=sys.stderr)
                have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            bar = _bar(total, have, dest.name)
            got = have
            try:
                with open(part, mode) as f:
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        got += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except (urllib.error.URLError, HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"download of {url} failed ({type(e).__name__}: {reason}); {how}") from None
    if total is not None and got != total:
        raise DataError(f"download of {url} was cut short ({got} of {total} bytes); {how}")
    os.replace(part, dest)


def _is_wanted(name: str, member: str) -> str | None:
    """The file name if archive entry ``name`` is an image directly inside folder ``member``."""
    name = name.replace("\\", "/")
    folder, _, base = name.rpartition("/")
    if folder.strip("/") != member.strip("/") or not base or base.startswith("."):
        return None
    return base if base.lower().endswith(IMAGE_EXTENSIONS) else None


def unpack(archive: Path, member: str, out: Path) -> int:
    """Copy the image files directly inside ``member`` of ``archive`` to ``out``; return how many.

    Entries are streamed to ``out/<base name>``, so no entry can write outside ``out``; links and
    special files are skipped.
    """
    out.mkdir()
    n = 0
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    base = _is_wanted(info.filename, member)
                    if base and not info.is_dir():
                        with zf.open(info) as src, open(out / base, "xb") as dst:
                            shutil.copyfileobj(src, dst, CHUNK)
                        n += 1
        else:
            with tarfile.open(archive, "r:*") as tf:
                for entry in tf:
                    base = _is_wanted(entry.name, member)
                    if base and entry.isfile():
                        data = tf.extractfile(entry)  # a regular file: never None
                        if data is None:
                            continue
                        with data, open(out / base, "xb") as dst:
                            shutil.copyfileobj(data, dst, CHUNK)
                        n += 1
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"cannot unpack {archive}: {type(e).__name__}: {e}") from None
    return n


def verify(folder: Path, entry: dict, name: str) -> str:
    """Check image count, and per listed file its size and sha256; return what was checked."""
    from PIL import Image

    names = sorted(p.name for p in folder.iterdir())
    count = entry.get("count")
    if count is not None and len(names) != count:
        raise DataError(f"{name}: expected {count} images in the archive's {entry['member']}, found {len(names)}")
    files = entry.get("files") or {}
    missing = sorted(set(files) - set(names))
    if missing:
        raise DataError(f"{name}: {len(missing)} expected file(s) missing, e.g. {missing[0]}")
    for fn in names:
        p = folder / fn
        try:
            with Image.open(p) as im:
                size = im.size
                im.verify()
        except Exception as e:
            raise DataError(f"{name}: {fn} is not a readable image ({type(e).__name__}: {e})") from None
        if fn in files:
            w, h, sha = files[fn]
            if size != (w, h):
                raise DataError(f"{name}: {fn} is {size[0]}x{size[1]}, expected {w}x{h}")
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest != sha:
                raise DataError(f"{name}: {fn} has sha256 {digest[:16]}..., expected {sha[:16]}...")
    what = f"{len(names)} images"
    if files:
        what += f", sizes and sha256 of {len(files)} checked"
    return what


def fetch(name: str, entry: dict, root: Path, keep_archive: bool, downloaded: dict[str, Path]) -> None:
    dest = root / entry["dest"]
    if dest.exists():
        print(f"{name}: {dest} is already present (delete it to fetch again)")
        return
    url = entry["url"]
    archive = downloaded.get(url)
    if archive is None:
        dl = root / ".downloads"
        dl.mkdir(parents=True, exist_ok=True)
        archive = dl / (Path(urlparse(url).path).name or f"{name}.archive")
        if not archive.exists():
            print(f"{name}: downloading {url}", file=sys.stderr)
            download(url, archive)
        downloaded[url] = archive
    created = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]  # to undo on failure
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=dest.parent))
    ok = False
    try:
        staged = tmp / dest.name
        unpack(archive, entry["member"], staged)
        try:
            what = verify(staged, entry, name)
        except DataError as e:
            archive.unlink(missing_ok=True)
            downloaded.pop(url, None)
            raise DataError(f"{e} (the downloaded archive was removed)") from None
        os.rename(staged, dest)  # atomic: dest appears complete or not at all
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok:
            for p in created:  # innermost first; only the empty folders made above
                try:
                    p.rmdir()
                except OSError:
                    break
    print(f"{name}: {what} -> {dest}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="sets to fetch (see --list)")
    ap.add_argument("--root", help="data root (default: $LMF_DATA, else load/ in the repository)")
    ap.add_argument("--sources", default=str(SOURCES), help="the URL list (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="list the known sets and exit")
    ap.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    args = ap.parse_args(argv)
    try:
        from utils.config import data_root

        sources = load_sources(Path(args.sources))
        root = Path(args.root).absolute() if args.root else data_root()
        if args.list:
            for name, entry in sources.items():
                print(f"{name:12s} -> {root / entry['dest']}  {entry.get('description', '')}")
            return 0
        if not args.names:
            raise DataError(f"name the set(s) to fetch: {', '.join(sources)} (--list describes them)")
        unknown = [n for n in args.names if n not in sources]
        if unknown:
            raise DataError(f"unknown set {unknown[0]!r}; known: {', '.join(sources)}")
        downloaded: dict[str, Path] = {}
        try:
            for name in args.names:
                fetch(name, sources[name], root, args.keep_archive, downloaded)
        finally:
            if not args.keep_archive:
                for archive in downloaded.values():
                    archive.unlink(missing_ok=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a partial download is kept and resumes on the next run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
