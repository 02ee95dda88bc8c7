"""Upscaling every image of a folder into another folder: what to do, and doing it with a progress
bar, one line per image and a summary. The per-image work is the caller's function (``demo.py``
passes the same function that upscales a single image), so a folder is nothing but many images.

* Inputs: the files of the folder (``recursive``: and of its subfolders, the output folder
  excepted) whose extension is one of :data:`utils.images.IMAGE_EXTENSIONS`, in name order;
  hidden files and folders (``.name``, e.g. temporary files) are left out. Each output has the
  input's path relative to the input folder, under the output folder.
* An output that exists is done: it is skipped, so running the same command again after an
  interruption resumes where it stopped (outputs are written atomically, so an existing output is
  a complete one); ``overwrite`` redoes them. Missing folders are made (``utils.cli.output_path``).
* Temporary files that a killed run left in the output folders (``.tmp-XXXXXXXX-NAME`` of an
  output still to do) are removed before the work starts.
* An image that fails (unreadable, too large, ...) is reported in one line and skipped; the others
  go on, and the run ends with an error that counts the failures (exit status 2).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from utils.atomic import stale_temps
from utils.cli import one_line, output_path
from utils.errors import UserError
from utils.images import IMAGE_EXTENSIONS
from utils.progress import Progress, duration


@dataclass
class FolderPlan:
    """The images to upscale (input, output), those whose output exists, and files left alone."""
    src: Path
    dst: Path
    todo: list[tuple[Path, Path]] = field(default_factory=list)
    done: list[tuple[Path, Path]] = field(default_factory=list)
    ignored: int = 0  # files that are not images by their extension


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def plan_folder(src: str | os.PathLike, dst: str | os.PathLike, recursive: bool = False,
                overwrite: bool = False) -> FolderPlan:
    """The work of upscaling the folder ``src`` into ``dst`` (one-line errors for bad folders)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"input folder {src} does not exist" if not src.exists() else f"--input {src} is not a folder")
    if (dst.exists() and not dst.is_dir()) or (not dst.exists() and dst.suffix.lower() in IMAGE_EXTENSIONS):
        what = "is a file" if dst.exists() else "names an image file"
        raise UserError(f"--output {dst} {what}; with a folder as --input, --output is a folder (made if missing)")
    src_r, dst_r = src.resolve(), dst.resolve()
    if src_r == dst_r:
        raise UserError(f"--output {dst} is the input folder; give another folder (the inputs are never replaced)")
    plan = FolderPlan(src, dst)
    for root, dirs, files in os.walk(src):
        here = Path(root)
        # the output folder inside the input folder is not input; hidden folders are left alone
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".") and (here / d).resolve() != dst_r)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = here / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                plan.ignored += 1
                continue
            out = dst / path.relative_to(src)
            (plan.done if out.is_file() and not overwrite else plan.todo).append((path, out))
    return plan


def _out_of_memory(e: BaseException) -> bool:
    # torch.OutOfMemoryError (CUDA) is matched by name: this module does not import torch
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"


def run_folder(plan: FolderPlan, work: Callable[[Path, Path], str], overwrite: bool = False) -> str:
    """``work(input, output)`` for every image to do (it writes ``output`` atomically and returns
    the line to print); one ``error: ...`` line on stderr for each image that fails, and the rest
    goes on. Returns the summary line; raises a :class:`UserError` that counts the failures if any.
    """
    n_all = len(plan.todo) + len(plan.done)
    if n_all == 0:
        raise UserError(f"no images in {plan.src} (looked for {', '.join(IMAGE_EXTENSIONS)}"
                        f"{'' if plan.ignored == 0 else f'; {plan.ignored} other file(s) left alone'})")
    if not plan.todo:
        return (f"nothing to do: all {n_all} images are done already in {plan.dst} (their outputs exist; "
                "--overwrite redoes them)")
    if plan.done:
        print(f"{len(plan.done)} of {n_all} images are done already (their outputs exist): skipped; "
              f"{len(plan.todo)} to do (--overwrite redoes them all)", flush=True)
    by_folder: dict[Path, set[str]] = {}
    for _, dst in plan.todo:
        by_folder.setdefault(dst.parent, set()).add(dst.name)
    stale = [p for folder, names in by_folder.items() for p in stale_temps(folder, names)]
    for p in stale:  # what a killed run was writing: it is written again below
        p.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} unfinished temporary file(s) left by an interrupted run", flush=True)
    progress = Progress(len(plan.todo), "image", desc=f"{plan.src} -> {plan.dst}")
    failed: list[str] = []
    t0 = time.perf_counter()
    try:
        for src, dst in plan.todo:
            try:
                line = work(src, output_path(dst, overwrite, "--output", "output image"))
            except UserError as e:
                failed.append(str(src))
                progress.write(f"error: {one_line(e)} (skipped; the other images go on)", file=sys.stderr)
            except Exception as e:  # an image too large for the memory left: skipped like an unreadable one
                if not _out_of_memory(e):
                    raise
                failed.append(str(src))
                progress.write(f"error: {src}: out of memory for this image (skipped; the other images go on; "
                               "a smaller --bsize lowers the peak)", file=sys.stderr)
            else:
                progress.write(line)
            progress.update()
    finally:
        progress.close()
    secs = time.perf_counter() - t0
    made = len(plan.todo) - len(failed)
    summary = (f"{made} image(s) upscaled into {plan.dst} in {duration(secs)} ({made / max(secs, 1e-9):.2f} images/s)"
               + (f", {len(plan.done)} skipped (done already)" if plan.done else "")
               + (f", {len(failed)} failed" if failed else "")
               + (f", {plan.ignored} other file(s) left alone" if plan.ignored else ""))
    if failed:
        print(summary, flush=True)
        raise UserError(f"{len(failed)} of {len(plan.todo)} image(s) failed (listed above); the others are written, "
                        "and running the same command again retries only the failed ones")
    return summary
