"""Training throughput of a config: iterations/s of train.py's own step, where each iteration's
time goes, and how many samples/s the data pipeline delivers alone.

    python scripts/bench_train.py --config configs/cpu/train_edsr-baseline-lmliif.yaml
    python scripts/bench_train.py --config configs/train/train_edsr-baseline-lmliif.yaml --data FOLDER \\
        --device cuda --amp bf16 --compile --iters 300 --workers 8 --pipeline-workers 0,8,16

The step is train.py's ``train_epoch`` (model, optimizer, loader, loss reads) on the config's
shapes; only the training images may be replaced (``--data FOLDER``, or ``--synthetic N``:
N smooth random images of DIV2K's size, 2040x1356, made once under outputs/, for machines without the data). Three
epochs run: a warm-up (start-up, compilation, the workers' first batches), one timed without
any synchronisation added (the it/s figure), and one with the profile's phase timers (on CUDA
each phase boundary synchronises: the breakdown, whose total is a little slower). The data
pipeline is then timed alone (datasets/throughput.py) for each ``--pipeline-workers`` count:
0 is one process reading items itself, i.e. what one worker can deliver.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import datasets  # noqa: E402
import train  # noqa: E402
from datasets.throughput import samples_per_second  # noqa: E402
from utils.cli import Parser, device_name, non_negative_int, pick_device, positive_int, run_main  # noqa: E402
from utils.config import TRAIN, load_config  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.profile import MODEL_PHASES, Profile  # noqa: E402

#: the rows of the breakdown, in step order (the model's own phases count as forward)
ROWS = ("data", "copy", "teacher", "forward", "backward", "optimizer", "bookkeeping")
RECIPE_ITERATIONS = 1_000_000  # the official EDSR-baseline recipe: 1000 epochs of 1000 iterations


def make_synthetic(folder: Path, n: int, size: tuple[int, int] = (2040, 1356)) -> Path:
    """``n`` smooth random RGB PNGs of ``size`` (bicubic-upsampled noise), once per folder."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"{i:04d}.png"
        if not path.exists():
            base = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(base).resize(size, Image.Resampling.BICUBIC).save(path, compress_level=1)
    return folder


def bench_config(args: argparse.Namespace) -> dict:
    """The config with the images replaced, enough repeats for the timed epochs, no validation."""
    cfg = copy.deepcopy(load_config(args.config, TRAIN, train.REGISTRIES))
    spec = cfg["train_dataset"]
    data = args.data
    if args.synthetic:
        data = str(make_synthetic(ROOT / "outputs" / f"bench_train_synthetic_{args.synthetic}", args.synthetic))
    if data:
        spec["dataset"]["args"]["root_path"] = data
    spec["dataset"]["args"]["repeat"] = 1
    listing = {**spec["dataset"], "args": {**spec["dataset"]["args"], "cache": "none"}}  # counted, not decoded
    n_images = len(datasets.make_dataset(listing))
    need = (max(args.iters, args.warmup) + 1) * spec["batch_size"]
    spec["dataset"]["args"]["repeat"] = math.ceil(need / n_images)
    cfg.pop("val_dataset", None)
    return cfg


def run_epoch(tr: dict, epoch: int, iters: int, read_every: int, profile: Profile | None = None) -> float:
    """Train ``iters`` iterations as epoch ``epoch``; the seconds it took (device synchronised)."""
    cfg = {**tr["cfg"], "max_iters_per_epoch": iters}
    loader, device = tr["loader"], tr["device"]
    loader.sampler.set_epoch(epoch)
    losses = train.StepLosses(tr["log"], epoch, iters, every=read_every)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with profile if profile is not None else contextlib.nullcontext():
        train.train_epoch(tr["net"], loader, tr["optimizer"], cfg, device, tr["amp"], tr["log"], epoch, 1,
                          tr["scaler"], None, 0, losses, cudagraphs=train.uses_cudagraphs(tr["compile"]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def set_up(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    torch.manual_seed(cfg["seed"])
    model = train.build_model(cfg, args.config, device)
    opt_spec = copy.deepcopy(cfg["optimizer"])
    if args.optimizer != "fused":
        opt_spec.setdefault("args", {})["foreach"] = args.optimizer == "foreach"
    optimizer = train.make_optimizer(model.parameters(), opt_spec)
    amp, scaler = train.choose_amp(args.amp, device)
    procs = train.Processes(1, 0, device)
    loader = train.make_loader(cfg["train_dataset"], True, cfg["seed"], 1, 0, args.workers, device)
    net = train.training_net(model, procs, args.compile)
    return {"cfg": cfg, "model": model, "net": net, "compile": args.compile, "optimizer": optimizer, "amp": amp,
            "scaler": scaler, "loader": loader, "device": device, "log": train.Log(None)}


def breakdown(prof: Profile, iters: int) -> dict[str, float]:
    """Milliseconds per iteration for each row (the model's phases folded into forward)."""
    secs = dict(prof.seconds)
    secs["forward"] = secs.get("forward", 0.0) + sum(secs.pop(n, 0.0) for n in MODEL_PHASES)
    rows = {r: secs.pop(r, 0.0) for r in ROWS}
    rows["other"] = max(0.0, prof.wall - sum(rows.values()) - sum(secs.values())) + sum(secs.values())
    return {k: 1000 * v / iters for k, v in rows.items()}


def worker_counts(text: str) -> list[int]:
    """argparse type: comma-separated worker counts (empty: none)."""
    try:
        counts = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of worker counts") from None
    if any(c < 0 for c in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts must be >= 0")
    return counts


def build_parser() -> Parser:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a training config (YAML), e.g. configs/cpu/try_lmliif.yaml")
    ap.add_argument("--data", help="folder of training images replacing the config's")
    ap.add_argument("--synthetic", type=positive_int, metavar="N",
                    help="N synthetic DIV2K-sized images (made once under outputs/) instead of the config's")
    ap.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast, as train.py --amp")
    ap.add_argument("--compile", nargs="?", const="default", choices=train.COMPILE_MODES,
                    help="torch.compile the step, as train.py --compile")
    ap.add_argument("--optimizer", choices=["fused", "foreach", "single"], default="fused",
                    help="the optimizer's implementation (default and train.py's: fused)")
    ap.add_argument("--read-every", type=positive_int, default=50,
                    help="read the losses every N iterations (default and train.py's: 50; 1 is a host sync per step)")
    ap.add_argument("--iters", type=positive_int, default=20, help="timed iterations (default: 20)")
    ap.add_argument("--warmup", type=positive_int, default=5,
                    help="iterations run before timing: start-up, compilation, first batches (default: 5)")
    ap.add_argument("--workers", type=non_negative_int, help="DataLoader workers of the step (default: the config's)")
    ap.add_argument("--pipeline-workers", type=worker_counts, default=[0],
                    help="comma-separated worker counts to time the data pipeline alone with; 0 = one process "
                         "reading items itself, i.e. one worker's capacity; '' skips (default: 0)")
    ap.add_argument("--pipeline-samples", type=positive_int, default=400,
                    help="samples per pipeline measurement (default: 400)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: bench(build_parser().parse_args(argv)),
                    out_of_memory="out of memory; lower the config's batch_size or use --amp bf16",
                    interrupted="interrupted")


def bench(args: argparse.Namespace) -> None:
    if args.data and args.synthetic:
        raise UserError("give --data or --synthetic, not both")
    device = pick_device(args.device)
    cfg = bench_config(args)
    if args.workers is None:
        args.workers = cfg["num_workers"]
    spec = cfg["train_dataset"]
    wrapper = spec.get("wrapper") or {}
    shape = (f"batch {spec['batch_size']}, inp_size {wrapper.get('args', {}).get('inp_size')}, "
             f"sample_q {wrapper.get('args', {}).get('sample_q')}")
    print(f"# {args.config} ({shape}) on {device}, amp {args.amp}, compile {args.compile or 'off'}, "
          f"optimizer {args.optimizer}, loss read every {args.read_every}, DataLoader workers: {args.workers}, "
          f"torch {torch.__version__}, intra-op threads: {torch.get_num_threads()}", flush=True)

    tr = set_up(args, cfg, device)
    t = time.perf_counter()
    run_epoch(tr, 1, args.warmup, args.read_every)
    print(f"# warm-up: {args.warmup} iterations in {time.perf_counter() - t:.1f} s", flush=True)
    secs = run_epoch(tr, 2, args.iters, args.read_every)
    its = args.iters / secs
    prof = Profile(device)
    prof_secs = run_epoch(tr, 3, args.iters, args.read_every, prof)
    rows = breakdown(prof, args.iters)
    hours = RECIPE_ITERATIONS / its / 3600
    print(f"iterations/s: {its:.2f} over {args.iters} iterations ({1000 / its:.1f} ms/it; "
          f"{its * spec['batch_size']:.0f} samples/s); 1M iterations (the official recipes' length) would take "
          f"{hours:.1f} h at this rate")
    print(f"breakdown (a second, profiled epoch: {args.iters} iterations in {prof_secs:.2f} s"
          f"{', CUDA-synchronised at each phase' if device.type == 'cuda' else ''}):")
    total = sum(rows.values())
    for name, ms in rows.items():
        if ms > 0 or name in ROWS[:2]:
            print(f"  {name:<12} {ms:9.2f} ms/it {100 * ms / total:5.1f} %")

    pipeline: dict[str, float] = {}
    counts = args.pipeline_workers
    seeded = lambda ds: train.SeededItems(ds, cfg["seed"])  # noqa: E731  (as train.py reads items)
    for w in counts:
        rate = samples_per_second(spec, w, args.pipeline_samples, wrap=seeded)
        pipeline[str(w)] = rate
        what = "one process reading items itself (one worker's capacity)" if w == 0 else f"DataLoader, {w} workers"
        print(f"data pipeline alone, {what}: {rate:.0f} samples/s", flush=True)
    if "0" in pipeline:
        need = 100 * spec["batch_size"]
        print(f"  a GPU step at 100 it/s (the goal for the official recipes) would need {need} samples/s: "
              f"{math.ceil(need / pipeline['0'])} worker(s) at this per-worker rate, given a free core each")
    result = {"config": args.config, "device": str(device), "amp": args.amp, "compile": args.compile,
              "optimizer": args.optimizer, "read_every": args.read_every, "workers": args.workers,
              "iters_per_s": its, "ms_per_iter": rows, "hours_1M": hours, "pipeline_samples_per_s": pipeline}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
