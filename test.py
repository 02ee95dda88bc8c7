"""Evaluate a super-resolution checkpoint on a test set: PSNR / SSIM per image and per scale.

    python test.py --config configs/test/test-set5.yaml --model lmliif.pth --scales 2,3,4,6,8,12

The protocol is the official ``eval_psnr``, with its quirks fixed (docs/differences.md):

* Per image: the LR input is normalised with ``data_norm``, the model predicts the whole HR query
  grid of the sample (chunked by ``--bsize``), the cell is enlarged by ``max(s / scale_max, 1)``
  per axis (``--scale-max``, default 4), the prediction is de-normalised and clamped to [0, 1]
  and compared **as floats** (not quantised to 8 bit) with the HR crop. PSNR as the reference
  ``calc_psnr`` (``benchmark-N``: Y of the difference, shave N; ``div2k-N``: RGB, shave N + 6),
  SSIM on Y with the same shave; both are averaged over images.
* ``--scales`` runs the config's HR folder once per scale, downsampled on the fly with
  ``sr-implicit-downsampled`` at exactly that scale. A scale may be non-integer (``2.5``) or
  asymmetric, written ``HxW``: ``3x2`` = 3 vertically (rows), 2 horizontally (columns). The N of
  a ``benchmark-N`` / ``div2k-N`` eval type is replaced by ``ceil(s)`` (the larger of the two
  for an asymmetric scale), so ×2.5 shaves 3 pixels. Without ``--scales`` the config's wrapper
  is used as is (official ``configs/test-lmf`` and paired ``test-original`` configs work).
* HR size (H, W) of a sample comes from its cell (``cell = (2/H, 2/W)`` of the HR crop the wrapper
  made) and is checked against the number of queries, so it is right for every wrapper
  (downsampled: ``round(h·s)``; paired: ``h·s``) without re-deriving the wrapper's rounding.
* The scale used for cell clipping is the nominal one (``--scales``, or the wrapper's fixed
  scale), else the sample's own ``H/h``, ``W/w`` (paired folders). For the official configs this
  is the scale of their ``eval_type`` — the same numbers.
* ``--window 8`` reproduces the official SwinIR protocol: the LR is mirror-padded (flip along H,
  then W) to ``(h // 8 + 1) · 8``, the grid ``(round(h_pad·sy), round(w_pad·sx))`` with cell
  2/grid is predicted and cropped top-left to the HR size. Our SwinIR encoder pads and crops
  internally, so this is only needed to reproduce official numbers.
* Booleans are real flags; CMSR is on only with ``--cmsr TABLE``; SR images are written only
  with ``--save-dir`` (``<dir>/x<scale>/<image stem>.png``), never into a dataset folder.
* Relative paths (in the config and on the command line) are resolved from the **current
  directory**; the configs in ``configs/test/`` assume the repository root.
* Images are evaluated one at a time (the config's ``batch_size`` is not used: HR crops differ
  in size); the official ``eval_bsize`` key is accepted and ignored (use ``--bsize``).
  Random-scale wrappers draw from ``random`` seeded with 0, so reruns see the same samples.

Every user error (bad argument, config, dataset, image, checkpoint) prints one line
``error: ...`` on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from utils.atomic import write_text_atomic
from utils.cli import (Parser, ScaleHW, add_overwrite, add_precision, check_output, device_name, no_torch_message,
                       non_negative_int, output_path, parse_scales, pick_device, positive_float, positive_int, program,
                       run_main, scale_label)
from utils.errors import UserError
from utils.profile import Profile, phase, process_start


# torch, models and datasets are imported inside the functions, after the arguments are parsed,
# so that --help and argument errors answer at once.
if TYPE_CHECKING:  # pragma: no cover
    import torch
    from models.cmsr import CMSR
    from models.decoder import ImplicitDecoder


# ---------------------------------------------------------------------------------------------
# arguments

def build_parser() -> argparse.ArgumentParser:
    p = Parser(description="Evaluate an SR checkpoint (PSNR/SSIM) on a test config. Relative paths "
                            "are resolved from the current directory.")
    p.add_argument("--config", required=True, help="test config YAML (configs/test/*.yaml or official test-lmf/test-original)")
    p.add_argument("--model", required=True, help="checkpoint (.pth, official or ours), or 'bicubic' for the Pillow bicubic baseline")
    p.add_argument("--scales", type=parse_scales, default=None,
                   help="comma list of scales overriding the config's, e.g. 2,3,4,6,8,12; non-integer "
                        "(2.5) and asymmetric HxW (3x2 = 3 vertically, 2 horizontally) allowed")
    p.add_argument("--device", type=device_name, default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    add_precision(p)
    p.add_argument("--bsize", type=positive_int, default=None, help="queries per decoding chunk (default: the model's)")
    p.add_argument("--cmsr", metavar="TABLE", default=None, help="enable CMSR with this Scale2Mod table (YAML)")
    p.add_argument("--save-dir", default=None, help="write SR images as <dir>/x<scale>/<stem>.png (folders created)")
    p.add_argument("--out", default=None, help="write per-image results and means (.json or .csv; folders created)")
    add_overwrite(p, "--out file or --save-dir image")
    p.add_argument("--scale-max", type=lambda t: positive_float(t, "--scale-max"), default=4.0, help="training scale: cells are enlarged by max(s/scale_max, 1) (default 4)")
    p.add_argument("--window", type=non_negative_int, default=0, help="official SwinIR test padding to a multiple of WINDOW (8); default 0 = off")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images (per scale)")
    p.add_argument("--profile", action="store_true",
                   help="print where the wall time went: start-up, reading, encoder, latent, render, CMSR, metrics, writing")
    return p


# ---------------------------------------------------------------------------------------------
# runs: one dataset (and eval type) per scale

@dataclass
class Run:
    label: str | None              # scale label, None when the wrapper decides per image
    scale: ScaleHW | None          # nominal scale (cell clipping, window grid)
    eval_type: str | None
    dataset: Any
    names: list[str]
    roots: list[Path]
    records: list[dict] = field(default_factory=list)


def eval_type_for(eval_type: str | None, s: ScaleHW) -> str | None:
    """``benchmark-N`` / ``div2k-N`` with N = ceil of the (larger) scale."""
    if eval_type is None:
        return None
    m = re.fullmatch(r"(benchmark|div2k)(-\d+)?", eval_type)
    if m is None:
        return eval_type
    return f"{m.group(1)}-{math.ceil(max(s) - 1e-9)}"


def _fixed_scale(wrapper: dict) -> ScaleHW | None:
    """The scale a ``sr-implicit-downsampled`` wrapper spec always uses, if it is fixed."""
    if wrapper.get("name") != "sr-implicit-downsampled":
        return None
    a = wrapper.get("args") or {}
    if a.get("scale_hw") is not None:
        sy, sx = (float(v) for v in a["scale_hw"])
        return sy, sx
    lo = a.get("scale_min", 1)
    hi = a.get("scale_max")
    hi = lo if hi is None else hi
    return (float(lo), float(lo)) if lo == hi else None


def _dataset_files(ds: Any) -> tuple[list[str], list[Path]]:
    """Image names (for reports/saving) and the dataset folders (never written into)."""
    inner = getattr(ds, "dataset", ds)
    if hasattr(inner, "dataset_2"):  # paired: name after the HR image
        files, roots = inner.dataset_2.files, [inner.dataset_1.root, inner.dataset_2.root]
    elif hasattr(inner, "files"):
        files, roots = inner.files, [inner.root]
    else:
        return [f"{i:04d}" for i in range(len(ds))], []
    n = len(files)
    names = [files[i % n].name if i < n else f"{Path(files[i % n]).stem}_r{i // n}{Path(files[i % n]).suffix}"
             for i in range(len(ds))]
    return names, list(roots)


def build_runs(cfg: dict, config_path: str, scales: list[ScaleHW] | None) -> list[Run]:
    import datasets
    from utils.metrics import parse_eval_type

    td = cfg["test_dataset"]
    eval_type = cfg.get("eval_type")
    try:  # fail early on an unknown eval type, naming the file it is in
        parse_eval_type(eval_type)
    except UserError as e:
        raise UserError(f"{config_path}: eval_type: {e}") from None
    wrapper = td.get("wrapper")
    if wrapper is not None and (wrapper.get("args") or {}).get("sample_q") is not None:
        raise UserError(f"{config_path}: test_dataset.wrapper.args.sample_q: evaluation needs the "
                        "full HR grid; remove sample_q")
    runs = []
    if scales is None:
        if wrapper is None:
            raise UserError(f"{config_path}: test_dataset has no wrapper; add one "
                            "(sr-implicit-downsampled or sr-implicit-paired) or pass --scales")
        fixed = _fixed_scale(wrapper)
        ds = datasets.make_dataset(td["dataset"], wrapper)
        names, roots = _dataset_files(ds)
        runs.append(Run(None if fixed is None else scale_label(fixed), fixed, eval_type, ds, names, roots))
        return runs
    if wrapper is not None and wrapper["name"] != "sr-implicit-downsampled":
        raise UserError(f"--scales needs HR images downsampled on the fly (wrapper sr-implicit-downsampled); "
                        f"{config_path} uses {wrapper['name']!r}: run it without --scales")
    base = dict((wrapper or {}).get("args") or {})
    if base.get("inp_size") is not None:
        raise UserError(f"{config_path}: test_dataset.wrapper.args.inp_size: --scales evaluates whole "
                        "images; remove inp_size")
    for k in ("scale_min", "scale_max", "scale_hw"):
        base.pop(k, None)
    inner = datasets.make(td["dataset"])
    for s in scales:
        args = dict(base, **({"scale_min": s[0], "scale_max": s[0]} if s[0] == s[1] else {"scale_hw": list(s)}))
        ds = datasets.make({"name": "sr-implicit-downsampled", "args": args}, args={"dataset": inner})
        names, roots = _dataset_files(ds)
        runs.append(Run(scale_label(s), s, eval_type_for(eval_type, s), ds, names, roots))
    return runs


# ---------------------------------------------------------------------------------------------
# evaluation of one sample

def hr_size(item: dict) -> tuple[int, int]:
    """(H, W) of the sample's HR crop, from its cell (2/H, 2/W), checked against Q."""
    cell, q = item["cell"], item["gt"].shape[0]
    if cell.shape[0] == 0:
        raise UserError("a test sample has no queries")
    H, W = round(2.0 / float(cell[0, 0])), round(2.0 / float(cell[0, 1]))
    if H * W != q or item["coord"].shape[0] != q:
        raise UserError(f"a test sample has {q} queries, not the full {H}x{W} HR grid "
                        "(the wrapper must not subsample queries: remove sample_q)")
    return H, W


def mirror_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Official SwinIR test padding: append flipped copies along H then W up to
    ``(n // multiple + 1) * multiple`` (always at least one row/column)."""
    import torch

    h, w = x.shape[-2:]
    th, tw = (h // multiple + 1) * multiple, (w // multiple + 1) * multiple
    while x.shape[-2] < th:
        x = torch.cat([x, x.flip(-2)], dim=-2)
    x = x[..., :th, :]
    while x.shape[-1] < tw:
        x = torch.cat([x, x.flip(-1)], dim=-1)
    return x[..., :tw]


@dataclass
class Options:
    scale_max: float = 4.0
    window: int = 0
    bsize: int | None = None
    cmsr: "CMSR | None" = None
    inp_norm: tuple = ((0.5,), (0.5,))
    gt_norm: tuple = ((0.5,), (0.5,))


def super_resolve(model: ImplicitDecoder | None, item: dict, scale: ScaleHW | None, opt: Options,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, ScaleHW, dict]:
    """One sample -> (SR (3, H, W) in [0, 1] on the model's device, HR (3, H, W) on the CPU, scale
    used, stats)."""
    from models.inference import predict
    from utils.coords import make_cell, make_coord

    H, W = hr_size(item)
    inp = item["inp"].unsqueeze(0).to(device)
    h, w = inp.shape[-2:]
    s = scale if scale is not None else (H / h, W / w)
    stats: dict = {}
    hr = item["gt"].view(H, W, 3).permute(2, 0, 1).contiguous()
    if model is None:  # the bicubic baseline: Pillow bicubic upscaling of the (8-bit) LR image
        from datasets.resize import resize_bicubic
        return resize_bicubic(item["inp"], (H, W)), hr, s, stats
    kw: dict[str, Any] = dict(scale_hw=s, scale_max=opt.scale_max, bsize=opt.bsize,
              cmsr=opt.cmsr if opt.cmsr is not None else False, stats=stats,
              inp_norm=opt.inp_norm, gt_norm=opt.gt_norm)
    if opt.window > 0:
        inp = mirror_pad(inp, opt.window)
        hp, wp = inp.shape[-2:]
        gh, gw = round(hp * s[0]), round(wp * s[1])
        if gh < H or gw < W:
            raise UserError(f"--window: padded grid {gh}x{gw} is smaller than the HR crop {H}x{W}")
        coord = make_coord((gh, gw), device=device).unsqueeze(0)
        cell = make_cell((gh, gw), device=device).unsqueeze(0)
        pred = predict(model, inp, coord, cell, **kw).view(gh, gw, 3)[:H, :W]
    else:
        coord = item["coord"].unsqueeze(0).to(device)
        cell = item["cell"].unsqueeze(0).to(device)
        pred = predict(model, inp, coord, cell, **kw).view(H, W, 3)
    sr = pred.permute(2, 0, 1).float()
    return sr, hr, s, stats


def _metric_scale(s: ScaleHW) -> int:
    return max(1, math.ceil(max(s) - 1e-9))


# ---------------------------------------------------------------------------------------------
# output

def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def check_not_in_dataset(path: Path, roots: Sequence[Path], what: str) -> None:
    for r in roots:
        if _inside(path, r):
            raise UserError(f"{what} {path} is inside the dataset folder {r}; choose another location")


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def summarise(runs: list[Run]) -> list[dict]:
    means = []
    for run in runs:
        recs = run.records
        if not recs:
            continue
        labels = sorted({r["scale"] for r in recs})
        label = run.label or (labels[0] if len(labels) == 1 else "mixed")
        means.append({"scale": label, "eval_type": run.eval_type, "images": len(recs),
                      "psnr": _mean([r["psnr"] for r in recs]), "ssim": _mean([r["ssim"] for r in recs]),
                      "cmsr_skipped": _mean([r["cmsr_skipped"] for r in recs])})
    return means


CSV_FIELDS = ("kind", "image", "scale", "eval_type", "images", "psnr", "ssim", "cmsr_skipped",
              "lr_h", "lr_w", "hr_h", "hr_w")


def results_text(path: Path, records: list[dict], means: list[dict], meta: dict) -> str:
    if path.suffix.lower() == ".json":
        return json.dumps({**meta, "records": records, "means": means}, indent=1) + "\n"
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in records:
        wr.writerow({"kind": "image", "images": 1, **r, "lr_h": r["lr_size"][0], "lr_w": r["lr_size"][1],
                     "hr_h": r["hr_size"][0], "hr_w": r["hr_size"][1]})
    for m in means:
        wr.writerow({"kind": "mean", "image": "", **m})
    return buf.getvalue()


def _row(name: str, scale: str, p: float, s: float, skipped: float | None, extra: str = "") -> str:
    line = f"{name:<24} {scale:>8} {p:>9.4f} {s:>8.4f}"
    if skipped is not None:
        line += f" {100 * skipped:>8.2f}%"
    return line + extra


# ---------------------------------------------------------------------------------------------
# main

@dataclass
class Outputs:
    """Where results go (each checked before any image is evaluated) and what must not be written."""
    out_path: Path | None
    save_dir: Path | None
    roots: list[Path]              # dataset folders: nothing is written inside them
    input_files: set[str]          # resolved paths of every input image
    overwrite: bool = False        # --overwrite: existing result files and SR images may be replaced
    written: set[Path] = field(default_factory=set)

    def sr_path(self, name: str, label: str, taken: set[Path] | None = None) -> Path:
        """``<save-dir>/x<label>/<stem>.png``, or ``<stem>_<ext>.png`` when another image of the
        same stem already took that name (a.png and a.jpg in one folder: both are kept)."""
        assert self.save_dir is not None
        taken = self.written if taken is None else taken
        dest = self.save_dir / f"x{label}" / f"{Path(name).stem}.png"
        if dest in taken:
            dest = dest.with_name(f"{Path(name).stem}_{Path(name).suffix.lstrip('.')}.png")
        taken.add(dest)
        return dest


def check_outputs(args: argparse.Namespace, runs: list[Run]) -> Outputs:
    out_path = Path(args.out) if args.out else None
    if out_path is not None and out_path.suffix.lower() not in (".json", ".csv"):
        raise UserError(f"--out {out_path}: the file must end in .json or .csv")
    save_dir = Path(args.save_dir) if args.save_dir else None
    roots = [r for run_ in runs for r in run_.roots]
    if save_dir is not None:
        check_not_in_dataset(save_dir, roots, "--save-dir")
        if save_dir.exists() and not save_dir.is_dir():
            raise UserError(f"--save-dir {save_dir} exists and is not a folder")
    if out_path is not None:
        check_not_in_dataset(out_path, roots, "--out")
        check_output(out_path, args.overwrite, "--out", "results file")  # before any image is evaluated
    input_files: set[str] = set()
    for run_ in runs:
        inner = getattr(run_.dataset, "dataset", None)
        for ds in (inner, getattr(inner, "dataset_1", None), getattr(inner, "dataset_2", None)):
            input_files.update(str(p.resolve()) for p in getattr(ds, "files", []) or [])
    outputs = Outputs(out_path, save_dir, roots, input_files, args.overwrite)
    if save_dir is not None:  # the SR images whose names are known now (a run with a fixed scale)
        taken: set[Path] = set()
        for run_ in runs:
            label = run_.label
            if label is None:  # the wrapper decides each image's scale: checked when it is written
                continue
            for name in run_.names:
                check_output(outputs.sr_path(name, label, taken), args.overwrite, "--save-dir", "SR image")
    return outputs


def save_sr(outputs: Outputs, name: str, label: str, sr: torch.Tensor) -> None:
    """``<save-dir>/x<label>/<stem>.png``; never into a dataset folder or over an input image."""
    from utils.images import save_image

    dest = outputs.sr_path(name, label)
    check_not_in_dataset(dest, outputs.roots, "output image")
    if str(dest.resolve()) in outputs.input_files:
        raise UserError(f"refusing to overwrite input image {dest}")
    save_image(sr, output_path(dest, outputs.overwrite, "--save-dir", "SR image"))


def read_item(run_: Run, i: int) -> dict:
    """Sample ``i`` of ``run_``: the image files, the bicubic LR, the query grid."""
    try:
        return run_.dataset[i]
    except UserError as e:  # name the image when the dataset's message does not
        name = run_.names[i]
        raise (e if name in str(e) else UserError(f"{name}: {e}")) from None


def evaluate_item(model: ImplicitDecoder | None, run_: Run, i: int, item: dict, opt: Options,
                  device: torch.device) -> tuple[dict, torch.Tensor]:
    """Image ``i`` of ``run_`` (``item``, read) -> (its record, the SR image)."""
    from utils.metrics import psnr, ssim

    name = run_.names[i]
    sr, hr, s, stats = super_resolve(model, item, run_.scale, opt, device)
    label = run_.label or scale_label((round(s[0], 4), round(s[1], 4)))
    try:
        with phase("metrics"):  # on the model's device: the HR crop goes there, only the numbers come back
            hr = hr.to(sr.device)
            p = psnr(sr, hr, run_.eval_type, scale=_metric_scale(s))
            q = ssim(sr, hr, run_.eval_type, scale=_metric_scale(s))
    except ValueError as e:
        raise UserError(f"{name} at x{label}: {e}") from None
    skipped = None if opt.cmsr is None else float(stats.get("cmsr_skipped_fraction", 0.0))
    rec = {"image": name, "scale": label, "scale_h": s[0], "scale_w": s[1],
           "eval_type": run_.eval_type, "lr_size": list(item["inp"].shape[-2:]),
           "hr_size": list(hr.shape[-2:]), "psnr": p, "ssim": q, "cmsr_skipped": skipped}
    return rec, sr


def evaluate(runs: list[Run], model: ImplicitDecoder | None, opt: Options, device: torch.device,
             outputs: Outputs, limit: int | None) -> None:
    """Every image of every run: a line per image on stdout, records kept on the runs."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from tqdm import tqdm

    # the next image is read in a thread while the model works on this one (in order, so random
    # wrappers draw the same samples); "reading" is then only the time spent waiting for it
    with torch.no_grad(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="read") as pool:
        for run_ in runs:
            n = len(run_.dataset) if limit is None else min(limit, len(run_.dataset))
            bar = tqdm(range(n), desc=f"x{run_.label}" if run_.label else "test", file=sys.stderr,
                       disable=None, leave=False, dynamic_ncols=True)
            ahead = pool.submit(read_item, run_, 0) if n else None
            for i in bar:
                assert ahead is not None
                with phase("reading"):
                    item = ahead.result()
                ahead = pool.submit(read_item, run_, i + 1) if i + 1 < n else None
                rec, sr = evaluate_item(model, run_, i, item, opt, device)
                run_.records.append(rec)
                if outputs.save_dir is not None:
                    with phase("writing"):
                        save_sr(outputs, rec["image"], rec["scale"], sr.cpu())
                bar.set_postfix(psnr=f"{_mean([r['psnr'] for r in run_.records]):.4f}")
                tqdm.write(_row(rec["image"], f"x{rec['scale']}", rec["psnr"], rec["ssim"], rec["cmsr_skipped"]),
                           file=sys.stdout)
                sys.stdout.flush()
            bar.close()


def print_means(means: list[dict], elapsed: float, cmsr: bool) -> None:
    print()
    print(f"# {'means':<22} {'scale':>8} {'PSNR':>9} {'SSIM':>8}" + (f" {'skipped':>9}" if cmsr else "")
          + "  images  eval_type")
    for m in means:
        print(_row("mean", f"x{m['scale']}", m["psnr"], m["ssim"], m["cmsr_skipped"],
                   f"  {m['images']:>6}  {m['eval_type']}"))
    print(f"# {sum(m['images'] for m in means)} evaluations in {elapsed:.1f} s")


def write_results(args: argparse.Namespace, out_path: Path, runs: list[Run], means: list[dict],
                  device: torch.device) -> None:
    records = [r for run_ in runs for r in run_.records]
    meta = {"model": args.model, "config": args.config, "device": str(device),
            "scale_max": args.scale_max, "window": args.window, "cmsr": args.cmsr}
    write_text_atomic(output_path(out_path, args.overwrite, "--out", "results file"),
                      results_text(out_path, records, means, meta))
    print(f"# results written to {out_path}")


def set_up(args: argparse.Namespace) -> tuple[list[Run], Outputs, Options, torch.device, Any]:
    """Seeds, config, runs, output checks, device, CMSR and model: everything before evaluating."""
    import numpy as np
    import torch

    import datasets
    import models
    from models.cmsr import CMSR, Scale2Mod
    from models.registry import MODELS
    from utils.config import TEST, load_config

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    cfg = load_config(args.config, TEST, registries={"model": MODELS, "dataset": datasets.DATASETS})
    runs = build_runs(cfg, args.config, args.scales)
    outputs = check_outputs(args, runs)
    cmsr = CMSR(Scale2Mod.load(args.cmsr)) if args.cmsr else None
    device = pick_device(args.device)
    model = None if args.model == "bicubic" else models.load_model(args.model, device=device, precision=args.precision)
    norm = cfg["data_norm"]
    opt = Options(scale_max=args.scale_max, window=args.window, bsize=args.bsize, cmsr=cmsr,
                  inp_norm=(norm["inp"]["sub"], norm["inp"]["div"]),
                  gt_norm=(norm["gt"]["sub"], norm["gt"]["div"]))
    return runs, outputs, opt, device, model


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with Profile() as prof:
        prof.begin_at(process_start())  # the interpreter and the imports count as start-up
        with phase("start-up"):  # torch, the config, the dataset index, the weights
            runs, outputs, opt, device, model = set_up(args)
        prof.device = device
        kind = "Pillow bicubic baseline" if model is None else type(model).__name__
        print(f"# model {args.model} ({kind}) on {device}; config {args.config}", flush=True)
        print(f"# {'image':<22} {'scale':>8} {'PSNR':>9} {'SSIM':>8}" + (f" {'skipped':>9}" if opt.cmsr else ""),
              flush=True)
        t0 = time.perf_counter()
        evaluate(runs, model, opt, device, outputs, args.limit)
        means = summarise(runs)
        print_means(means, time.perf_counter() - t0, opt.cmsr is not None)
        if outputs.out_path is not None:
            with phase("writing"):
                write_results(args, outputs.out_path, runs, means, device)
    if args.profile:
        print(prof.report("test.py time breakdown"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(lambda: run(argv),
                    out_of_memory="out of memory while decoding; pass a smaller --bsize (queries per chunk)",
                    interrupted="error: interrupted", no_torch=no_torch_message("test.py"))


if __name__ == "__main__":
    sys.exit(program(main))
