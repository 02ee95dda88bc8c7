"""What train.py, test.py and demo.py share: the argument parser and its value types, the scale
syntax, the device picker and the mapping of errors to one line and an exit code.

Scales are written the same way everywhere (command line, Python API, tables):

* ``4`` or ``2.5``: the same factor along both axes;
* ``HxW``, e.g. ``3x2``: 3 vertically (rows, height) and 2 horizontally (columns, width) — the
  order of ``scale_hw=(3, 2)`` in the Python API and of image shapes ``(H, W)``.

``2,3`` is not a scale: test.py reads commas as a list of scales (``--scales 2,3,4``) and demo.py
refuses them with a line that says to write ``HxW``. (``--size`` of demo.py is an output size in
pixels, written ``WIDTHxHEIGHT`` as image sizes usually are.)

torch is imported only inside :func:`pick_device`, so ``--help`` and argument errors answer at once.
Run as programs (:func:`program`), the scripts pause the garbage collector until then.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

from utils.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

ScaleHW = tuple[float, float]

EXIT_ERROR = 2          # every user error: one line ``error: ...`` on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class Parser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`UserError` (one line, exit code 2 via :func:`run_main`)
    instead of printing the usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


# --- value types (argparse ``type=``; their ArgumentTypeError becomes "argument --x: ...") ------
def positive_float(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} must be a finite number > 0")
    return v


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return v
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def device_name(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N."""
    if text in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected auto, cpu, cuda or cuda:N")


def parse_scale(text: str, what: str = "scale") -> ScaleHW:
    """``'4'`` -> (4, 4); ``'3x2'`` -> (3, 2) = (vertical, horizontal). Raises ArgumentTypeError."""
    tok = text.strip()
    if "," in tok:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r}: write an asymmetric scale as HxW (rows x columns), e.g. 3x2 for x3 "
            "vertically and x2 horizontally; commas separate scales only in test.py --scales")
    parts = tok.lower().split("x")
    if len(parts) == 1:
        s = positive_float(parts[0], what)
        return s, s
    if len(parts) == 2:
        name = f"{what} {text!r} (HxW)"
        return positive_float(parts[0], name), positive_float(parts[1], name)
    raise argparse.ArgumentTypeError(f"{what} {text!r}: expected one factor or two as HxW (e.g. 4, 2.5 or 3x2)")


def parse_scales(text: str) -> list[ScaleHW]:
    """``'2,3.5,3x2'`` -> [(2, 2), (3.5, 3.5), (3, 2)]; duplicates dropped, order kept."""
    out: list[ScaleHW] = []
    for tok in text.split(","):
        if not tok.strip():
            raise argparse.ArgumentTypeError(f"empty scale in {text!r} (write e.g. 2,3,4 or 3x2)")
        hw = parse_scale(tok)
        if hw not in out:
            out.append(hw)
    return out


def scale_label(s: ScaleHW) -> str:
    """``4``, ``2.5`` or ``3x2`` (HxW): the written form of a scale (tables, JSON, folder names)."""
    def fmt(x: float) -> str:
        return f"{x:.10g}"
    return fmt(s[0]) if s[0] == s[1] else f"{fmt(s[0])}x{fmt(s[1])}"


# --- outputs -------------------------------------------------------------------------------------
def output_path(path: str | os.PathLike, overwrite: bool = False, flag: str = "--output",
                what: str = "output") -> Path:
    """The one rule for every file a program writes for its user (demo, test.py --out, export,
    scripts): an existing file is refused unless ``overwrite`` (nothing is ever lost without an
    explicit request), a folder given where a file is meant is refused, and missing parent
    folders are created. Returns the path; the caller writes it atomically (utils.atomic)."""
    p = check_output(path, overwrite, flag, what)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {p}: cannot create the folder {p.parent}: {e.strerror or e}") from None
    return p


def check_output(path: str | os.PathLike, overwrite: bool = False, flag: str = "--output",
                 what: str = "output") -> Path:
    """:func:`output_path`'s refusals without creating anything: for a program that checks its
    outputs before long work and creates their folders only when it writes (nothing is left
    behind by a run that fails)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a folder; give a file name")
    if p.exists() and not overwrite:
        raise UserError(f"{flag} {p}: the {what} exists; pass --overwrite to replace it, or choose another name")
    return p


def add_overwrite(parser: argparse.ArgumentParser, what: str = "output file", *aliases: str) -> None:
    """``--overwrite`` (plus ``aliases``, e.g. an older ``--force``): replace existing outputs,
    the one explicit request that :func:`output_path` accepts."""
    parser.add_argument("--overwrite", *aliases, action="store_true", dest="overwrite",
                        help=f"replace an existing {what} (without it, an existing one is refused)")


def no_torch_message(program: str, alternative: str = "") -> str:
    """What a program says on a machine without PyTorch (for example one with only the ONNX
    runner's packages) instead of a ModuleNotFoundError; ``alternative``: what works there."""
    return (f"{program} needs PyTorch, which is not installed here (install it as the README's Set-up "
            f"says){'; ' + alternative if alternative else ''}")


def exit_without_torch(program: str, alternative: str = "") -> NoReturn:
    """For a script that imports torch at its top: the one line of :func:`no_torch_message`, exit 2."""
    print(f"error: {no_torch_message(program, alternative)}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


# --- precision -----------------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16")  # what models.set_precision accepts


def add_precision(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16`` of demo.py and test.py."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: the encoder (on CUDA also the latent stage) in bfloat16 autocast; "
                        "faster on GPUs and on CPUs with bf16 units, PSNR cost in the README (default fp32)")


# --- a program's start-up --------------------------------------------------------------------------
_collector_paused = False  # by program(), until imports_done()


def program(main: Callable[[], int]) -> int:
    """Run an entry script's ``main`` as a program (its ``if __name__ == "__main__"`` block): in an
    interpreter started to run that script, the cyclic garbage collector is paused until
    :func:`imports_done`, which every program calls after its heavy imports (through
    :func:`pick_device`; the ONNX runner itself), and which then freezes (``gc.freeze``) the
    objects made so far and resumes the collector.

    Importing torch makes about a million objects that live as long as the process. Left to the
    collector, it walks them during the import, at every later full collection and again at the
    interpreter's exit: ~0.35 s of every run on the 2-core development CPU (docs/speed.md). What
    freezing costs: cyclic garbage made before the device is picked (the arguments, the config)
    is kept until the process ends. A script run inside another Python process (``runpy``,
    IPython's ``%run``), or ``main`` called as a function (tests, a library), leaves the
    collector alone: freezing would keep that process's garbage for good."""
    global _collector_paused
    if not gc.isenabled() or not _started_for(getattr(sys.modules.get(main.__module__), "__file__", None)):
        return main()
    _collector_paused = True
    gc.disable()
    try:
        return main()
    finally:
        imports_done()


def _started_for(script: str | None) -> bool:
    """Whether this interpreter was started to run ``script`` (``python [options] script ...``)."""
    if not script:
        return False
    target = Path(script).resolve()
    return any(not a.startswith("-") and Path(a).resolve() == target for a in getattr(sys, "orig_argv", [])[1:])


def imports_done() -> None:
    """A program's heavy imports are done: freeze what exists and resume the collector (see
    :func:`program`; nothing otherwise)."""
    global _collector_paused
    if _collector_paused:
        _collector_paused = False
        gc.freeze()
        gc.enable()


# --- device --------------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int | None = None, flag: str = "--device") -> "torch.device":
    """auto (CUDA if available, else CPU), cpu, cuda or cuda:N -> a device with an index, made
    this process's current CUDA device. ``local_rank`` (torchrun) picks the process's GPU;
    ``flag`` is how the caller's user wrote the choice (``--device``, ``device=``), for messages.

    The device returned for CUDA always carries its index: ``torch.cuda.set_device`` refuses an
    index-less ``cuda`` (as do DDP's ``device_ids``), and the memory queries of a device must name
    the same GPU that its tensors live on. An unavailable or absent device is a UserError.
    """
    import torch

    imports_done()  # a program's heavy imports are done (see program)
    asked = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {asked!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise UserError(f"{flag} {asked}: CUDA is not available on this machine (PyTorch "
                        f"{torch.__version__}{'' if torch.version.cuda else ', a CPU-only build'}); "
                        f"use {flag} cpu or auto")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if dev.index is not None and dev.index != local_rank:
            raise UserError(f"{flag} {asked}: under torchrun each process uses the GPU of its LOCAL_RANK "
                            f"(here cuda:{local_rank}); pass {flag} auto or cuda")
        index = local_rank
    else:
        index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= count:
        which = f"LOCAL_RANK {local_rank} needs cuda:{index}" if local_rank is not None else f"{flag} {asked}"
        raise UserError(f"{which}, but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    dev = torch.device("cuda", index)
    torch.cuda.set_device(dev)
    return dev


def device_label(device: "torch.device") -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu``: the device a program runs on, for its first lines."""
    if device.type != "cuda":
        return str(device)
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})"


# --- errors -> one line and an exit code -------------------------------------------------------
def one_line(e: BaseException) -> str:
    """The message of an error on one line. One re-raised from a DataLoader worker carries the
    worker's whole traceback ("Caught UserError in DataLoader worker ... Original Traceback ..."),
    of which the last line is the original message."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
        msg = last[len(prefix):] if last.startswith(prefix) else last
    return " ".join(msg.split())


def _is_out_of_memory(e: BaseException) -> bool:
    # torch.OutOfMemoryError (CUDA, MPS) is a RuntimeError; matched by name so torch stays unimported
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"


def run_main(body: Callable[[], object], out_of_memory: str, interrupted: str, no_torch: str | None = None) -> int:
    """Run an entry script's ``body``: 0 on success; a :class:`UserError` (bad argument, config,
    file, ...) -> ``error: <one line>`` and 2; running out of memory -> ``error: <out_of_memory>``
    and 2; Ctrl-C -> ``<interrupted>`` and 130; torch missing (imported inside ``body``) ->
    ``error: <no_torch>`` and 2 when given. Anything else is a bug and keeps its traceback."""
    try:
        body()
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:  # one re-raised with a message says what was kept (train.py)
        print(e.args[0] if e.args and isinstance(e.args[0], str) else interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if no_torch is not None and isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "torch":
            print(f"error: {no_torch}", file=sys.stderr)
            return EXIT_ERROR
        if not _is_out_of_memory(e):
            raise
        print(f"error: {out_of_memory}", file=sys.stderr)
        return EXIT_ERROR
    return 0
