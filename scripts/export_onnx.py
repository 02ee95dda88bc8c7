#!/usr/bin/env python
"""Export a trained model to ONNX, for upscaling without PyTorch (onnxruntime, TensorRT, ...).

    python scripts/export_onnx.py --out export/lmliif                  # the bundled model
    python scripts/export_onnx.py --model save/run/epoch-best.pth --out export/run [--opset 18]
    python demo.py --onnx export/lmliif --input x.png --scale 3.5 --output y.png   # no torch

Writes three graphs with dynamic sizes — ``encoder.onnx`` (image -> features, once per image),
``latent.onnx`` (a band of feature rows -> per-LR-cell tables) and ``render.onnx`` (tables, a
chunk of query coordinates and cells -> RGB) — and ``model.json`` (model name, normalisation,
render chunk, training scale range, CMSR table if any). Exportable decoders: LIIF, LTE, LM-LIIF,
LM-LTE, with an EDSR or RDN encoder (SwinIR is refused: the exporter fixes its input size). After exporting,
the graphs are checked against PyTorch on a small random image (``--no-check`` skips it).
An existing export in ``--out`` is only replaced with ``--overwrite`` (the flag every program of the
project uses for this; ``--force``, its former name, still works). See docs/export.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "weights" / "lmliif_edsr-b_cpu.pth"
FILES = ("encoder.onnx", "latent.onnx", "render.onnx", "model.json")
CHECK_TOL = 1e-4


def _check_out(out: Path, overwrite: bool) -> None:
    from utils.errors import UserError

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the exported graphs")
    if out.is_dir():
        present = [f for f in FILES if (out / f).exists()]
        if present and not overwrite:
            raise UserError(f"--out {out} already holds an export ({', '.join(present)}); "
                            "pass --overwrite to replace it")
        others = sorted(p.name for p in out.iterdir() if p.name not in FILES and not p.name.startswith(".export-"))
        if others and not overwrite:  # an export is a folder of its own; do not mix it into the user's files
            raise UserError(f"--out {out} holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                            "export into a new or empty folder (or pass --overwrite to add the export there)")
    parent = out if out.is_dir() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not writable")


def check_parity(folder: Path, model) -> float:
    """Max |ONNX - PyTorch| in [0, 1] on a small random image at x2.5 (both without CMSR)."""
    import numpy as np
    import torch

    from models.inference import upsample
    from utils.onnx_runner import OnnxUpscaler

    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 11, 14, generator=g)
    size = (28, 35)
    ref = upsample(model, img, size, cmsr=False)[0].numpy()
    out = OnnxUpscaler(folder, threads=torch.get_num_threads()).upsample(img[0].numpy(), size)
    return float(np.abs(out - ref).max())


def load_request(args: argparse.Namespace):
    """Check everything the export needs before anything is written: (model path, model, CMSR table)."""
    from utils.errors import UserError

    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    if not model_path.is_file():
        raise UserError(f"model checkpoint {model_path} does not exist")
    _check_out(Path(args.out), args.overwrite)
    try:
        import onnx  # noqa: F401  (the exporter needs both; say so in one line)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"exporting needs the optional packages in requirements-export.txt ({e.name} is "
                        "missing): pip install -r requirements-export.txt") from None

    import models
    from models import onnx_export
    from models.cmsr import CMSR, Scale2Mod

    model = models.load_model(model_path, device="cpu")
    try:
        name = onnx_export.check_request(model, args.opset)
    except UserError as e:
        raise UserError(f"{model_path}: {e}") from None
    table = None
    if args.cmsr is not None:
        if name not in ("lmliif", "lmlte"):
            raise UserError(f"--cmsr: model {name!r} has no modulations; CMSR applies to LM-LIIF and LM-LTE only")
        s2m = Scale2Mod.load(args.cmsr)
        CMSR(s2m).check_model(model)  # a table built for other weights is refused, as in demo/test
        table = s2m.to_dict()
    return model_path, model, table


def run(args: argparse.Namespace) -> str:
    from models import onnx_export
    from utils.errors import UserError

    model_path, model, table = load_request(args)
    name, out = onnx_export.model_name(model), Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    except OSError as e:
        raise UserError(f"--out {out}: cannot create files there ({e.strerror or e})") from None
    try:
        try:
            meta = onnx_export.export(model, tmp, opset=args.opset, chunk=args.chunk, cmsr_table=table,
                                      source=model_path.name, verbose=args.verbose)
        except UserError:
            raise
        except Exception as e:  # the exporter's errors are long; keep the first line
            raise UserError(f"the ONNX exporter failed on {name} with {onnx_export.model_name(model.encoder)} "
                            f"(opset {args.opset}): {type(e).__name__}: {_first_line(e)}") from None
        diff = None
        if not args.no_check:
            try:
                diff = check_parity(tmp, model)
            except UserError:
                raise
            except Exception as e:  # onnxruntime cannot run what the exporter wrote
                raise UserError(f"the exported graphs do not run in onnxruntime ({_first_line(e)}); "
                                "nothing was written") from None
            if not diff <= CHECK_TOL:
                raise UserError(f"the exported graphs differ from PyTorch by {diff:.2e} (> {CHECK_TOL:g}); "
                                "nothing was written")
        for f in FILES:
            os.replace(tmp / f, out / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sizes = ", ".join(f"{f} {(out / f).stat().st_size / 1e6:.2f} MB" for f in FILES[:3])
    check = "" if diff is None else f"; max |ONNX - PyTorch| = {diff:.1e}"
    return f"{model_path} ({meta['model']}, {meta['encoder']}) -> {out}/ ({sizes}{check})"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def build_parser():
    from utils.cli import Parser, add_overwrite, positive_int

    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help=f"checkpoint (default: the bundled {DEFAULT_MODEL.name})")
    ap.add_argument("--out", required=True, help="folder for the graphs and model.json (created)")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; at least 18)")
    ap.add_argument("--chunk", type=positive_int, help="queries per render call recorded for runners (default per model)")
    ap.add_argument("--cmsr", help="Scale2Mod table (YAML) to record in model.json (LM-LIIF/LM-LTE)")
    add_overwrite(ap, "export in --out (--force: its former name)", "--force")
    ap.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    ap.add_argument("--verbose", action="store_true", help="show the exporter's own messages")
    return ap


def main(argv: list[str] | None = None) -> int:
    from utils.cli import run_main

    def body() -> None:
        print(run(build_parser().parse_args(argv)))

    return run_main(body, out_of_memory="out of memory while exporting",
                    interrupted="interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
