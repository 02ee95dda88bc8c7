"""The one atomic file writer: every file the project writes for a user goes through it.

The content is written to a temporary sibling ``.tmp-<random>-<name>`` (created exclusively, so
it honours the umask and never follows a planted file), flushed and fsynced, then renamed over
the target, and the folder entry is fsynced. A crash at any moment leaves either the old file
or the new one, never a partial file; the temporary file is removed on any error.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from utils.errors import UserError

TMP_PREFIX = ".tmp-"  # train.py removes ``.tmp-*.pth`` left by a checkpoint write a crash cut short


def temp_sibling(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], what: str = "") -> None:
    """Call ``write(f)`` on a temporary sibling of ``path`` and rename it into place.

    An ``OSError`` (full disk, missing permission, ...) becomes a one-line :class:`UserError`
    ``cannot write <what> <path>: <reason>``.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        try:
            with open(tmp, "xb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {what + ' ' if what else ''}{path}: {e.strerror or e}") from None
    _fsync_folder(path.parent)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, what: str = "") -> None:
    """Move a finished temporary sibling (:func:`temp_sibling`) into place for a writer that cannot
    write through a file object (e.g. a video muxer that opens its own file): the file is fsynced,
    renamed over ``path`` and the folder entry fsynced, as :func:`write_atomic` does."""
    tmp, path = Path(tmp), Path(path)
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {what + ' ' if what else ''}{path}: {e.strerror or e}") from None
    _fsync_folder(path.parent)


def stale_temps(folder: str | os.PathLike, names: set[str] | frozenset[str]) -> list[Path]:
    """The temporary siblings (:func:`temp_sibling`) of the files ``names`` in ``folder`` that a
    killed writer left behind: ``.tmp-XXXXXXXX-NAME``, a pattern only this module makes. A program
    about to write those files again removes them (a video's can be large)."""
    folder = Path(folder)
    pattern = re.compile(re.escape(TMP_PREFIX) + r"[0-9a-f]{8}-(.+)")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for e in entries:
        m = pattern.fullmatch(e.name)
        if m and m.group(1) in names and e.is_file(follow_symlinks=False):
            out.append(Path(e.path))
    return out


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "") -> None:
    """:func:`write_atomic` for UTF-8 text (newlines written as given)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), what)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
