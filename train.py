#!/usr/bin/env python
"""Train an arbitrary-scale SR model from a YAML config (LIIF / LTE / LM-LIIF / LM-LTE ...).

    python train.py --config configs/cpu/train_edsr-baseline-lmliif.yaml [--name NAME] [--device auto]
    python train.py --config ... --name NAME --resume            # continue save/NAME/epoch-last.pth
    torchrun --nproc_per_node 2 train.py --config ...            # DistributedDataParallel

Runs write to ``save/<name>/``: config.yaml, log.txt, tensorboard/, epoch-last.pth (every
epoch), epoch-best.pth (best validation PSNR) and epoch-<N>.pth every ``epoch_save``. Every
checkpoint is written atomically and holds the official layout (``model``: name/args/sd,
``optimizer``, ``epoch``) plus what an exact resume needs (best PSNR, config, and for a checkpoint
written within an epoch, ``iter_save``, how far into the next epoch it is). The learning rate is
a function of the position (utils/schedule.py), so nothing else needs restoring.

Determinism: every sample's randomness (scale, crop, flips, query subset) is seeded from
(seed, epoch, sample index), and the shuffling from (seed, epoch); so a resumed run, or a run on
a different number of processes with the same global batch, sees exactly the same data.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Sized

import numpy as np

try:  # a machine with only the ONNX runner's packages: one line, not a ModuleNotFoundError
    import torch
except ModuleNotFoundError:
    from utils.cli import exit_without_torch
    exit_without_torch("train.py")
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

import datasets
import models
from models import distill
from models.decoder import ImplicitDecoder
from models.inference import normalise, predict
from utils import metrics
from utils.atomic import TMP_PREFIX, write_text_atomic
from utils.checkpoint import load_checkpoint, save_atomic
from utils.cli import Parser, device_name, non_negative_int, pick_device, program, run_main
from utils.config import TRAIN, load_config
from utils.errors import UserError
from utils.profile import phase
from utils.schedule import learning_rate
from utils.tb_events import ScalarWriter, drop_steps_from

REGISTRIES = {"model": models.registry.MODELS, "dataset": datasets.DATASETS}


class NonFinite(UserError):
    """The loss or the weights became inf/NaN (training diverged)."""


# --- data --------------------------------------------------------------------------------------
class SeededItems(Dataset):
    """Seeds Python/NumPy/torch RNGs from (seed, epoch, index) before each item.

    The SR wrappers draw their randomness from the global RNGs; seeding per item makes every
    sample independent of which worker or process loads it and of what was loaded before.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return n_items(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        """``key``: an index (drawn as in ``self.epoch``) or an (epoch, index) pair."""
        epoch, idx = key if isinstance(key, tuple) else (self.epoch, key)
        s = (self.seed * 1_000_003 + epoch * 10_007 + idx) % (2 ** 32)
        random.seed(s)
        np.random.seed(s)
        # the CPU generator only: torch.manual_seed would also queue the seeding of every CUDA
        # device, which costs ~0.5 ms per item in a DataLoader worker (where CUDA is not set up)
        torch.default_generator.manual_seed(s)
        return self.dataset[idx]


def n_items(ds: Dataset) -> int:
    """The length of a map-style dataset (all of ours have one)."""
    if not isinstance(ds, Sized):
        raise TypeError(f"{type(ds).__name__} has no length")
    return len(ds)


def make_loader(spec: dict, train: bool, seed: int, world: int, rank: int, workers: int,
                device: torch.device, wrap=None) -> DataLoader:
    """Training: the global batch is split over the processes (DistributedSampler, shuffled per
    epoch). Validation: every process takes every world-th item, no padding/duplicates.
    ``wrap(dataset)`` may replace the seeded dataset (the distillation cache)."""
    ds = SeededItems(datasets.make_dataset(spec["dataset"], spec.get("wrapper")), seed)
    if wrap is not None:
        ds, workers = wrap(ds), 0  # cached samples live in this process's memory
    batch = spec["batch_size"]
    pin = device.type == "cuda"  # pinned host memory: the copies to the GPU run asynchronously
    if not train:
        part = Subset(ds, range(rank, len(ds), world))
        return DataLoader(part, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=pin)
    if batch % world:
        raise UserError(f"batch_size {batch} is not divisible by the number of processes {world}")
    sampler = SkippingSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.keyed = isinstance(ds, SeededItems)
    return DataLoader(ds, batch_size=batch // world, sampler=sampler, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0)


class SkippingSampler(DistributedSampler):
    """The epoch's shuffled order as (epoch, index) keys, without its first ``skip`` items (this
    process's share of the batches a resumed run already trained on; ``skip`` applies to one
    epoch). The keys carry the epoch to :class:`SeededItems`, so workers that live across
    epochs (``persistent_workers``) draw each epoch's samples."""

    skip = 0
    keyed = True  # (epoch, index) keys; plain indices for datasets that draw nothing per epoch

    def __iter__(self):
        indices = super().__iter__()
        keys = ((self.epoch, i) for i in indices) if self.keyed else indices
        return itertools.islice(keys, self.skip, None)  # (the length stays the epoch's)


# --- set-up ------------------------------------------------------------------------------------
def make_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    """The config's optimizer; its fused implementation (one kernel over all parameters, on CUDA
    and on the CPU) unless the config sets ``fused`` or ``foreach``. On this project's model the
    fused Adam step is ~4x faster than the default one on the CPU and agrees with it to ~1e-8."""
    args = dict(spec.get("args") or {})
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[spec["name"]]
    params = list(params)
    if "fused" not in args and "foreach" not in args:
        try:
            return cls(params, fused=True, **args)
        except RuntimeError:  # a device without a fused kernel: the default implementation
            pass
    return cls(params, **args)


def check_schedule(cfg: dict, source: str) -> None:
    if cfg.get("multi_step_lr") and cfg.get("cosine_lr"):
        raise UserError(f"{source}: give either multi_step_lr or cosine_lr, not both")


def warn_settings(cfg: dict, n_iter: int, log: "Log") -> None:
    """Settings that would silently do nothing."""
    if cfg.get("iter_save") and cfg["iter_save"] >= n_iter:
        log(f"warning: iter_save={cfg['iter_save']} is not below the {n_iter} iterations of an epoch: "
            "only the end of each epoch is saved")
    total = cfg["epoch_max"] * n_iter
    if cfg.get("warmup_iters") and cfg["warmup_iters"] > total:
        log(f"warning: warmup_iters={cfg['warmup_iters']} is longer than the run ({total} iterations): "
            "the learning rate never reaches its base value")


class Log:
    """log.txt + stdout (rank 0 only) and TensorBoard scalars.

    Lines are printed at once but reach ``log.txt`` only once :meth:`start` has made the run
    folder, so a start that fails (missing data, bad config) leaves no folder behind.
    """

    def __init__(self, folder: str | None) -> None:
        self.folder = folder
        self.writer: ScalarWriter | None = None
        self.started, self.pending = False, list[str]()

    def start(self, resume_step: int | None = None) -> None:
        """The run folder exists now: write the pending lines and open TensorBoard.
        ``resume_step``: the first step a resumed run logs; events that the interrupted run wrote
        from there on are removed first (they are about to be logged again)."""
        if self.folder is None:
            return
        self.started = True
        pending, self.pending = self.pending, []
        with open(os.path.join(self.folder, "log.txt"), "a") as f:
            f.writelines(m + "\n" for m in pending)
        try:
            import tensorboardX  # noqa: F401  (the event format's protocol buffers)
        except ImportError:
            self("warning: tensorboardX is not installed; no TensorBoard logs")
            return
        tb = os.path.join(self.folder, "tensorboard")
        if resume_step is not None and os.path.isdir(tb):
            n = drop_steps_from(tb, resume_step)
            if n:
                self(f"TensorBoard: removed {n} event(s) logged after the point this run continues from "
                     f"(step >= {resume_step})")
        self.writer = ScalarWriter(tb)

    def __call__(self, msg: str) -> None:
        if self.folder is None:
            return
        print(msg, flush=True)
        if not self.started:
            self.pending.append(msg)
            return
        with open(os.path.join(self.folder, "log.txt"), "a") as f:
            f.write(msg + "\n")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def record(self, msg: str) -> None:
        """``msg`` into log.txt only (the caller prints it): why a run stopped."""
        if self.folder is not None and self.started:
            with open(os.path.join(self.folder, "log.txt"), "a") as f:
                f.write(msg + "\n")

    def flush(self) -> None:
        """Events logged so far reach the disk (done with each checkpoint, so a killed run's
        TensorBoard holds every step up to its checkpoint)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def checkpoint(model: nn.Module, cfg: dict, optimizer, epoch: int, best: float,
               within: tuple[int, float] | None = None) -> dict:
    """``epoch``: the last completed epoch. ``within``: for a checkpoint written during the next
    epoch, its iterations done and their summed loss."""
    ck = {
        "model": {"name": cfg["model"]["name"], "args": cfg["model"]["args"], "sd": model.state_dict()},
        "optimizer": {"name": cfg["optimizer"]["name"], "args": cfg["optimizer"].get("args"),
                      "sd": optimizer.state_dict()},
        "epoch": epoch,
        "best_val": best,
        "config": cfg,
    }
    if within is not None:
        ck["epoch_iters"], ck["epoch_loss_sum"] = within
    return ck


# --- train / validate ----------------------------------------------------------------------------
class StepLosses:
    """The training losses, kept on the device and read in one host synchronisation every
    ``every`` iterations (and at the epoch's end), so the GPU is never made to wait for the
    host in between. Reading them checks them (a non-finite loss stops the run, naming its
    iteration), sums them for the epoch mean and logs each one to TensorBoard at its own step.
    """

    def __init__(self, log: "Log", epoch: int, n_iter: int, every: int = 50,
                 total: float = 0.0, count: int = 0) -> None:
        self.log, self.epoch, self.n_iter, self.every = log, epoch, n_iter, every
        self.pending: list[torch.Tensor] = []
        self.total, self.count = total, count  # over the epoch's iterations read so far

    def add(self, loss: torch.Tensor) -> bool:
        """Keep one iteration's loss; True when it is time to read them."""
        self.pending.append(loss.detach())
        return len(self.pending) >= self.every

    def read(self) -> None:
        if not self.pending:
            return
        values = torch.stack(self.pending).tolist()
        self.pending = []
        for v in values:
            if not math.isfinite(v):
                raise NonFinite(f"loss became {v} at epoch {self.epoch}, iteration {self.count + 1}")
            self.total += v
            self.count += 1
            self.log.scalar("loss/train", v, self.step(self.count - 1))

    def step(self, it: int) -> int:
        """The run's step (the TensorBoard axis, from 1) of the epoch's iteration ``it`` (from 0)."""
        return (self.epoch - 1) * self.n_iter + it + 1

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


def to_device(batch: dict, device: torch.device, cfg: dict) -> dict[str, torch.Tensor]:
    """A training batch on the device (asynchronous copies from pinned memory), normalised."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    for key, norm in (("inp", cfg["data_norm"]["inp"]), ("gt", cfg["data_norm"]["gt"])):
        out[key] = normalise(out[key], norm["sub"], norm["div"])
    return out


def train_epoch(model, loader, optimizer, cfg, device, amp, log: Log, epoch: int, rank: int,
                scaler=None, teacher: distill.Teacher | None = None, start_it: int = 0,
                losses: StepLosses | None = None, on_iteration=None, cudagraphs: bool = False) -> float:
    """Train iterations ``start_it``..n_iter-1 of ``epoch`` (the loader yields from ``start_it``
    on); returns the epoch's mean loss. Each step is marked in phases (data, copy, teacher,
    forward, backward, optimizer, bookkeeping) for :mod:`utils.profile`; nothing in the step
    waits for the device except the loss reads of :class:`StepLosses`. ``on_iteration(it,
    losses)`` runs after each iteration (the mid-epoch checkpoints). ``cudagraphs``: the model is
    compiled in a mode that replays CUDA graphs, so each iteration marks a new step for them."""
    model.train()
    n_iter = iters_per_epoch(cfg, loader)
    base_lr = optimizer.defaults["lr"]
    if losses is None:
        losses = StepLosses(log, epoch, n_iter)
    bar = _progress(n_iter, f"epoch {epoch}", rank, start_it)
    t_start, report_every = time.time(), max(1, n_iter // 4)
    batches = iter(loader)
    for it in range(start_it, n_iter):
        with phase("data"):
            batch = next(batches)
        with phase("copy"):
            b = to_device(batch, device, cfg)
        target = b.get("target")
        if target is None and teacher is not None:
            with phase("teacher"):
                target = teacher.predict(b["inp"], b["coord"], b["cell"])
        lr = learning_rate(cfg, base_lr, epoch, it, n_iter)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with phase("forward"), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            feat = {"feat": b["feat"]} if "feat" in b else {}
            pred = model(b["inp"], b["coord"], b["cell"], **feat)
            loss = training_loss(pred.float(), b["gt"], target, cfg.get("teacher"))
        optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            (scaler.scale(loss) if scaler is not None else loss).backward()
        with phase("optimizer"):
            optimizer_step(optimizer, scaler, epoch, it)
        with phase("bookkeeping"):
            due = losses.add(loss) or it + 1 == n_iter or (it + 1) % report_every == 0
            if due:
                losses.read()
                log.scalar("lr", lr, losses.step(it))
            if bar is not None:
                bar.update(1)
                if due:
                    bar.set_postfix(loss=f"{losses.mean:.4f}")
            elif rank == 0 and (it + 1) % report_every == 0 and it + 1 < n_iter:
                spi = (time.time() - t_start) / (it + 1 - start_it)
                print(f"  epoch {epoch}: {it + 1}/{n_iter} iterations, loss={losses.mean:.4f}, {spi:.2f} s/it, "
                      f"epoch ETA {_duration(spi * (n_iter - it - 1))}", flush=True)
            if on_iteration is not None:
                on_iteration(it, losses)
    if bar is not None:
        bar.close()
    losses.read()
    return losses.mean


def optimizer_step(optimizer: torch.optim.Optimizer, scaler, epoch: int, it: int) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
        return
    try:
        optimizer.step()
    except RuntimeError as e:  # e.g. lr 1e39: "value cannot be converted to type float without overflow"
        if "overflow" not in str(e):
            raise
        raise NonFinite(f"the optimizer step overflowed at epoch {epoch}, iteration {it + 1} "
                        f"(learning rate {optimizer.param_groups[0]['lr']:.3g})") from None


def iters_per_epoch(cfg: dict, loader) -> int:
    limit = cfg.get("max_iters_per_epoch")
    return len(loader) if limit is None else min(limit, len(loader))


def training_loss(pred: torch.Tensor, gt: torch.Tensor, target: torch.Tensor | None,
                  teacher_cfg: dict | None) -> torch.Tensor:
    """L1 to the HR pixels; with a teacher, weight * L1 to its RGB + gt_weight * L1 to HR."""
    if teacher_cfg is None or target is None:
        return (pred - gt).abs().mean()
    loss = teacher_cfg["weight"] * (pred - target).abs().mean()
    if teacher_cfg["gt_weight"]:
        loss = loss + teacher_cfg["gt_weight"] * (pred - gt).abs().mean()
    return loss


def update_frozen(model: nn.Module, cfg: dict, epoch: int, train_set, log: "Log") -> bool:
    """Apply the ``freeze`` schedule for ``epoch``; cached encoder features go once the encoder
    trains again. True when the set of trained parameters changed."""
    spec = cfg.get("freeze")
    before = [p.requires_grad for p in model.parameters()]
    if spec:
        distill.set_frozen(model, spec["modules"], bool(distill.frozen_prefixes(spec, epoch)))
    if getattr(train_set, "cache_features", False) and not distill.all_frozen(model, "encoder"):
        train_set.drop_features()
        log(f"epoch {epoch}: the encoder trains from now on; cached features dropped")
    return before != [p.requires_grad for p in model.parameters()]


def cache_wrapper(cfg: dict, model: ImplicitDecoder, teacher: distill.Teacher | None, device: torch.device,
                  log: "Log"):
    """The ``teacher.cache`` dataset wrapper for make_loader (None when caching is off)."""
    tcfg = cfg.get("teacher")
    if teacher is None or not tcfg or not tcfg["cache"]:
        return None

    def wrap(ds: SeededItems) -> distill.CachedSamples:
        ds.epoch = 0  # the samples are drawn once, as in epoch 0
        features = distill.all_frozen(model, "encoder")
        log(f"caching {len(ds)} training samples: teacher RGB" + (" and encoder features" if features else ""))
        t0 = time.time()
        step = max(1, len(ds) // 10)

        def progress(n: int, total: int) -> None:
            if n % step < 16 or n == total:
                el = time.time() - t0
                log(f"  cached {n}/{total} samples, {el:.0f}s (ETA {el / n * (total - n):.0f}s)")
        cached = distill.CachedSamples(ds, teacher, model, device, cfg["data_norm"]["inp"], features,
                                       progress=progress)
        log(f"cache ready in {time.time() - t0:.0f}s")
        return cached
    return wrap


@torch.no_grad()
def validate(model, loader, cfg, device, world: int) -> float:
    """Mean PSNR: on the sampled query points (no eval_type), or on whole images with the
    eval_type's shave/Y protocol (``benchmark-N`` / ``div2k-N``). Predictions go through
    :func:`models.inference.predict`, as in test.py."""
    model.eval()
    net = model.module if hasattr(model, "module") else model
    norm_in, norm_gt = cfg["data_norm"]["inp"], cfg["data_norm"]["gt"]
    eval_type = cfg.get("eval_type")
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in loader:
        inp, gt = batch["inp"].to(device), batch["gt"].to(device)
        coord, cell = batch["coord"].to(device), batch["cell"].to(device)
        h, w = inp.shape[-2:]
        H, W = (round(2 / v) for v in batch["cell"][0, 0].tolist())
        pred = predict(net, inp, coord, cell, scale_hw=(H / h, W / w), scale_max=cfg["scale_max"],
                       bsize=cfg.get("eval_bsize"), inp_norm=(norm_in["sub"], norm_in["div"]),
                       gt_norm=(norm_gt["sub"], norm_gt["div"]))
        if eval_type is None or coord.shape[1] != H * W:
            values = -10 * torch.log10(((pred - gt) ** 2).mean(dim=(1, 2)))
        else:
            shape = (pred.shape[0], H, W, 3)
            image_psnr = metrics.psnr(pred.view(shape).permute(0, 3, 1, 2), gt.view(shape).permute(0, 3, 1, 2),
                                      eval_type=eval_type)
            values = torch.as_tensor(image_psnr, device=device).view(-1)
        total += torch.stack([values.double().sum(), torch.tensor(float(values.numel()), device=device,
                                                                  dtype=torch.float64)])
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def _progress(n: int, desc: str, rank: int, done: int = 0):
    """A tqdm bar on an interactive terminal (rank 0); None otherwise (progress lines instead)."""
    if rank != 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=n, initial=done, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


# --- set-up steps ------------------------------------------------------------------------------
@dataclass
class Processes:
    """This process's place in a (torchrun) group: world size, rank and device."""
    world: int
    rank: int
    device: torch.device


def set_up_processes(device_arg: str) -> Processes:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    device = pick_device(device_arg, local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(world, rank, device)


def load_resume(args: argparse.Namespace) -> dict | None:
    """The checkpoint of --resume (default ``<save-root>/<name>/epoch-last.pth``), checked to hold
    the training state; None without --resume."""
    if not args.resume:
        return None
    name = args.name or (_default_name(args.config) if args.config else None)
    path = args.resume if args.resume != "auto" else os.path.join(args.save_root, name or "", "epoch-last.pth")
    if args.resume == "auto" and not os.path.exists(path):
        folder = os.path.dirname(path)
        state = ("its run completed no epoch, so there is no checkpoint" if os.path.isdir(folder)
                 else "there is no such run")
        raise UserError(f"nothing to resume: {path} does not exist ({state}); the same command without --resume "
                        f"starts the run (over) in {folder}")
    ckpt = load_checkpoint(path, map_location="cpu")
    if not {"model", "optimizer", "epoch", "config"} <= set(ckpt):
        raise UserError(f"{path} cannot be resumed: it lacks the training state "
                        "(optimizer/epoch/config); it may be an inference-only checkpoint")
    return ckpt


def choose_config(args: argparse.Namespace, resume_ckpt: dict | None) -> dict:
    """--config if given (validated), else the config stored in the resumed checkpoint."""
    if args.config:
        cfg = load_config(args.config, TRAIN, REGISTRIES)
        check_schedule(cfg, args.config)
        return cfg
    if resume_ckpt is not None:
        return resume_ckpt["config"]
    raise UserError("give --config (or --resume with a checkpoint that holds its config)")


def choose_amp(name: str, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """The autocast dtype of --amp and, for fp16, the gradient scaler."""
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if amp is torch.float16 and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (on the CPU use --amp bf16)")
    return amp, (torch.amp.GradScaler("cuda") if amp is torch.float16 else None)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def uses_cudagraphs(compile_mode: str | None) -> bool:
    """Whether torch.compile's mode replays CUDA graphs (on a GPU)."""
    return compile_mode in ("reduce-overhead", "max-autotune")


RUN_FILES = ("epoch-*.pth", "log.txt", "config.yaml", "tensorboard")


def _run_files(folder: str) -> list[str]:
    found = []
    for pattern in RUN_FILES:
        found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(folder), pattern)))
    return found


def checkpoints_in(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(folder), "epoch-*.pth")))


def check_fresh_folder(folder: str, overwrite: bool) -> bool:
    """A new run must not write into a folder that holds another run's checkpoints. A folder whose
    run completed no epoch (interrupted or failed during its first: a log, config and TensorBoard
    files but no checkpoint) holds nothing to resume, so the run starts over in it (its log is
    continued; its TensorBoard events are replaced). Returns whether that is the case."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"run folder {folder} exists and is not a folder")
    found = _run_files(folder) if os.path.isdir(folder) else []
    if found and not checkpoints_in(folder):
        return True
    if found and not overwrite:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise UserError(f"run folder {folder} already holds a run ({shown}); continue it with --resume, "
                        "start a separate run with --name NEW_NAME, or replace it with --overwrite")
    return False


def clear_run_folder(folder: str) -> list[str]:
    """--overwrite: remove the previous run's own files (checkpoints, log, config, TensorBoard);
    anything else in the folder is left alone."""
    found = _run_files(folder)
    for name in found:
        p = os.path.join(folder, name)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    return found


def prepare_folder(folder: str, cfg: dict, rank: int, log: Log, overwrite: bool = False,
                   resume_step: int | None = None) -> None:
    """Once everything else is ready: rank 0 makes the run folder (with --overwrite: after removing
    the previous run's files), writes config.yaml, removes the temporary files of checkpoint writes
    that a crash interrupted, and starts the log."""
    stale, cleared = [], []
    if rank == 0:
        if overwrite and os.path.isdir(folder):
            cleared = clear_run_folder(folder)
        os.makedirs(folder, exist_ok=True)
        write_text_atomic(os.path.join(folder, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False))
        stale = glob.glob(os.path.join(glob.escape(folder), f"{TMP_PREFIX}*.pth"))
        for tmp in stale:
            os.unlink(tmp)
    log.start(resume_step)
    if cleared:
        log(f"--overwrite: removed the previous run's {', '.join(cleared)} from {folder}")
    if stale:
        log(f"removed {len(stale)} temporary file(s) left by an interrupted checkpoint write")


def build_model(cfg: dict, source: str, device: torch.device) -> ImplicitDecoder:
    try:
        return models.make(cfg["model"], kind=ImplicitDecoder).to(device)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:  # e.g. hidden_dim: "x"
        raise UserError(f"{source}: model: cannot build {cfg['model']['name']!r} from its args "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


# --- the training run ----------------------------------------------------------------------------
@dataclass
class Trainer:
    """Everything an epoch needs; :meth:`epoch` trains, validates and checkpoints one epoch."""
    cfg: dict
    procs: Processes
    folder: str
    log: Log
    model: ImplicitDecoder
    net: nn.Module                  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader | None
    amp: torch.dtype | None
    scaler: Any
    teacher: distill.Teacher | None = None
    compile: str | None = None      # --compile's torch.compile mode
    saved_shape: list[int] | None = None  # epoch_shape() of a checkpoint written within an epoch
    best: float = -math.inf
    last_saved: int = 0             # the last completed epoch in epoch-last.pth
    saved_within: int = 0           # ... and the iterations of the next epoch it also holds
    start_it: int = 0               # where the first epoch of this process starts (a resume)
    loss_sum: float = 0.0           # the summed loss of those iterations

    def restore(self, ckpt: dict) -> int:
        """Weights, optimizer, best PSNR and position of a resumed run; the next epoch."""
        models.load_state_dict_strict(self.model, ckpt["model"]["sd"], what="the resumed model")
        self.optimizer.load_state_dict(ckpt["optimizer"]["sd"])
        self.best = ckpt.get("best_val", -math.inf)
        self.last_saved = ckpt["epoch"]
        self.start_it = self.saved_within = int(ckpt.get("epoch_iters", 0))
        self.loss_sum = float(ckpt.get("epoch_loss_sum", 0.0))
        self.saved_shape = ckpt.get("epoch_shape")
        return ckpt["epoch"] + 1

    def epoch_shape(self) -> list[int]:
        """[iterations per epoch, global batch size]: where an iteration of an epoch starts."""
        return [iters_per_epoch(self.cfg, self.train_loader), int(self.cfg["train_dataset"]["batch_size"])]

    def check_position(self) -> None:
        """A checkpoint written within an epoch resumes only with the epoch's iterations and batch
        size unchanged: its position counts batches of the epoch's sample order."""
        if not self.start_it:
            return
        n_iter, batch = shape = self.epoch_shape()
        if self.start_it >= n_iter or (self.saved_shape is not None and list(self.saved_shape) != shape):
            was = (f" ({self.saved_shape[0]} iterations of batch {self.saved_shape[1]} per epoch)"
                   if self.saved_shape else "")
            raise UserError(f"the checkpoint was written after {self.start_it} iterations of an epoch{was}, but this "
                            f"config has {n_iter} iterations of batch {batch} per epoch (batch_size, "
                            "max_iters_per_epoch or the data changed); resume with the run's own config")

    def saved_at(self) -> tuple[int, int]:
        return self.last_saved, self.saved_within

    def diverged(self, what: str) -> UserError:
        return UserError(_diverged(what, self.saved_at(), self.folder))

    def epoch(self, epoch: int) -> str:
        """Train, validate and checkpoint one epoch; the log line."""
        cfg, procs = self.cfg, self.procs
        data, sampler = self.train_loader.dataset, self.train_loader.sampler
        if isinstance(data, SeededItems):  # (the distillation cache draws nothing per epoch)
            data.epoch = epoch
        assert isinstance(sampler, SkippingSampler)  # made by make_loader
        start_it, self.start_it = self.start_it, 0
        n_iter = iters_per_epoch(cfg, self.train_loader)
        sampler.set_epoch(epoch)
        sampler.skip = start_it * self.train_loader.batch_size  # type: ignore[operator]
        if update_frozen(self.model, cfg, epoch, self.train_loader.dataset, self.log):
            self.net = training_net(self.model, procs, self.compile)  # DDP registers the parameters that train now
        losses = StepLosses(self.log, epoch, n_iter, total=self.loss_sum, count=start_it)
        self.loss_sum = 0.0
        try:
            loss = train_epoch(self.net, self.train_loader, self.optimizer, cfg, procs.device, self.amp, self.log,
                               epoch, procs.rank, self.scaler, self.teacher, start_it, losses,
                               on_iteration=self.save_within if cfg.get("iter_save") else None,
                               cudagraphs=uses_cudagraphs(self.compile))
            self.check_weights(f"in epoch {epoch}")
        except NonFinite as e:
            raise self.diverged(str(e)) from None
        lr = self.optimizer.param_groups[0]["lr"]  # the epoch's last iteration's
        msg = f"epoch {epoch}/{cfg['epoch_max']}, train: loss={loss:.4f}, lr={lr:.2e}"
        step = epoch * n_iter  # one step axis: iterations (the lr is logged with the losses)
        is_best = False
        if self.val_loader is not None and epoch % (cfg.get("epoch_val") or 1) == 0:
            psnr = validate(self.model, self.val_loader, cfg, procs.device, procs.world)
            if math.isnan(psnr):
                raise self.diverged(f"validation PSNR is nan after epoch {epoch} (the model outputs inf/nan)")
            self.log.scalar("psnr/val", psnr, step)
            msg += f", val: psnr={psnr:.4f}"
            if psnr > self.best:
                self.best, is_best = psnr, True
        if procs.rank == 0:
            self.save(epoch, is_best)
        self.last_saved, self.saved_within = epoch, 0
        return msg

    def check_weights(self, when: str) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            lr = self.optimizer.param_groups[0]["lr"]
            raise NonFinite(f"the weights became inf/nan {when} (learning rate {lr:.3g})")

    def save_within(self, it: int, losses: StepLosses) -> None:
        """``iter_save``: every N iterations of an epoch, epoch-last.pth also records how far
        into the next epoch the run is (a resume continues from that iteration)."""
        n_iter = iters_per_epoch(self.cfg, self.train_loader)
        done = it + 1
        if done % self.cfg["iter_save"] or done == n_iter:
            return
        losses.read()
        self.check_weights(f"in epoch {losses.epoch}, by iteration {done}")
        if self.procs.rank == 0:
            ck = checkpoint(self.model, self.cfg, self.optimizer, losses.epoch - 1, self.best, (done, losses.total))
            ck["epoch_shape"] = self.epoch_shape()
            self.log.flush()
            save_atomic(ck, os.path.join(self.folder, "epoch-last.pth"))
            self.log(f"  saved epoch-last.pth at epoch {losses.epoch}, iteration {done}/{n_iter}")
        self.saved_within = done

    def save(self, epoch: int, is_best: bool) -> None:
        ck = checkpoint(self.model, self.cfg, self.optimizer, epoch, self.best)
        self.log.flush()
        # epoch-last.pth is the commit point of an epoch, so it is written last: a crash between
        # the writes resumes from the previous epoch and rewrites epoch-best/epoch-N identically
        if is_best:
            save_atomic(ck, os.path.join(self.folder, "epoch-best.pth"))
        if self.cfg.get("epoch_save") and epoch % self.cfg["epoch_save"] == 0:
            save_atomic(ck, os.path.join(self.folder, f"epoch-{epoch}.pth"))
        save_atomic(ck, os.path.join(self.folder, "epoch-last.pth"))

    def fit(self, epoch_start: int) -> None:
        """Epochs ``epoch_start``..epoch_max, stopping early once ``max_minutes`` have passed."""
        cfg, t0, first_it = self.cfg, time.time(), self.start_it
        for epoch in range(epoch_start, cfg["epoch_max"] + 1):
            t_ep = time.time()
            msg = self.epoch(epoch)
            elapsed = time.time() - t0
            done, left = epoch - epoch_start + 1, cfg["epoch_max"] - epoch
            if cfg.get("max_minutes"):
                left = min(left, max(0, math.ceil((cfg["max_minutes"] * 60 - elapsed) / (elapsed / done))))
            ran = iters_per_epoch(cfg, self.train_loader) - (first_it if epoch == epoch_start else 0)
            t_it = (time.time() - t_ep) / max(ran, 1)
            self.log(f"{msg}, {time.time() - t_ep:.1f}s ({t_it:.2f} s/it; total {elapsed / 60:.1f} min, "
                     f"ETA {_duration(elapsed / done * left)})")
            if cfg.get("max_minutes") and elapsed / 60 >= cfg["max_minutes"] and epoch < cfg["epoch_max"]:
                self.log(f"stopping after epoch {epoch}: max_minutes={cfg['max_minutes']} reached "
                         "(resume with --resume)")
                break


def make_trainer(args: argparse.Namespace, procs: Processes, cfg: dict, folder: str, log: Log,
                 resume_ckpt: dict | None, amp: tuple[torch.dtype | None, Any]) -> tuple[Trainer, int]:
    """Model, optimizer and scheduler (restored when resuming, else initialised from
    ``init_from``), teacher and frozen parts, data loaders, DDP on several processes; the first
    epoch to run."""
    seed, world, rank = cfg["seed"], procs.world, procs.rank
    torch.manual_seed(seed)
    model = build_model(cfg, args.config or "the resumed checkpoint's config", procs.device)
    optimizer = make_optimizer(model.parameters(), cfg["optimizer"])
    trainer = Trainer(cfg, procs, folder, log, model, model, optimizer,
                      None, None, *amp)  # type: ignore[arg-type]  # the loaders follow below
    epoch_start = trainer.restore(resume_ckpt) if resume_ckpt is not None else 1
    if resume_ckpt is None and cfg.get("init_from"):
        src = cfg["init_from"]
        n = distill.init_from(model, src["checkpoint"], src["modules"])
        log(f"initialised {n} tensors under {', '.join(src['modules'])} from {src['checkpoint']}")
    trainer.teacher = distill.Teacher(cfg["teacher"]["checkpoint"], procs.device) if cfg.get("teacher") else None
    if cfg.get("freeze"):
        distill.set_frozen(model, cfg["freeze"]["modules"], bool(distill.frozen_prefixes(cfg["freeze"], epoch_start)))
    workers = cfg["num_workers"] if args.workers is None else args.workers
    trainer.train_loader = make_loader(cfg["train_dataset"], True, seed, world, rank, workers, procs.device,
                                       wrap=cache_wrapper(cfg, model, trainer.teacher, procs.device, log))
    trainer.check_position()
    if resume_ckpt is not None:
        log(f"resumed from {_position(trainer.saved_at())}")
    trainer.val_loader = make_loader(cfg["val_dataset"], False, seed + 1, world, rank, workers, procs.device) \
        if cfg.get("val_dataset") else None
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg['model']['name']} #params={n_params:,}; train samples {n_items(trainer.train_loader.dataset)}, "
        f"{world} process(es) on {procs.device}")
    trainer.compile = args.compile
    if args.compile:
        where = "" if procs.device.type == "cuda" or not uses_cudagraphs(args.compile) else \
            " (CUDA graphs apply on a GPU only)"
        log(f"--compile {args.compile}{where}: the first iterations compile the step (about a minute)")
    trainer.net = training_net(model, procs, args.compile)
    return trainer, epoch_start


def training_net(model: nn.Module, procs: Processes, compile_mode: str | None = None) -> nn.Module:
    """What the training step calls: the model (DDP-wrapped on several processes), compiled with
    ``torch.compile`` in ``compile_mode`` if given. The training shapes are fixed (inp_size and
    sample_q), so it compiles once; validation runs the plain model (its shapes vary)."""
    net = wrap_ddp(model, procs)
    if compile_mode is None:
        return net
    return torch.compile(net, mode=compile_mode, dynamic=False)  # type: ignore[return-value]


def wrap_ddp(model: nn.Module, procs: Processes) -> nn.Module:
    """The model itself on one process, else a DDP wrapper of the parameters that train now."""
    if procs.world == 1:
        return model
    dev = procs.device
    return nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def check_replicas(model: nn.Module, procs: Processes, log: Log) -> None:
    """DDP keeps every replica identical: say so (or fail loudly) at the end, then leave the group."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().view(1).to(procs.device)
    gathered = [torch.zeros_like(sums) for _ in range(procs.world)]
    dist.all_gather(gathered, sums)
    values = [g.item() for g in gathered]
    log(f"replicas in sync: {'yes' if len(set(values)) == 1 else 'NO'} (parameter checksums {values})")
    dist.barrier()
    dist.destroy_process_group()


def run(args: argparse.Namespace) -> None:
    procs = set_up_processes(args.device)
    resume_ckpt = load_resume(args)
    cfg = choose_config(args, resume_ckpt)
    folder = os.path.join(args.save_root, args.name or _default_name(args.config or "run"))
    amp = choose_amp(args.amp, procs.device)  # refused before anything is written
    restart = False
    if resume_ckpt is None:
        restart = check_fresh_folder(folder, args.overwrite)  # nothing in the folder changes before this check
    log = Log(folder if procs.rank == 0 else None)  # prints now; log.txt once the folder is made
    if restart:
        log(f"starting over in {folder}: its previous run completed no epoch (no checkpoint to resume)")
    trainer, epoch_start = make_trainer(args, procs, cfg, folder, log, resume_ckpt, amp)
    if epoch_start > cfg["epoch_max"]:
        print(f"nothing to do: the run in {folder} completed all {cfg['epoch_max']} epochs; raise epoch_max "
              "in the config to train further (then --resume)")
        return
    warn_settings(cfg, iters_per_epoch(cfg, trainer.train_loader), log)
    resume_step = ((epoch_start - 1) * iters_per_epoch(cfg, trainer.train_loader) + trainer.start_it + 1
                   if resume_ckpt else None)
    # a run started over drops the TensorBoard events of the attempt that completed no epoch
    prepare_folder(folder, cfg, procs.rank, log, args.overwrite and resume_ckpt is None and not restart,
                   1 if restart else resume_step)
    log(f"run folder: {folder}")
    try:
        trainer.fit(epoch_start)
    except KeyboardInterrupt:
        msg = _interrupted(trainer.saved_at(), folder)
        log.record(msg)
        raise KeyboardInterrupt(msg) from None
    except UserError as e:  # the run stopped (diverged): the log says why too
        log.record(f"error: {e}")
        raise
    if procs.world > 1:
        check_replicas(trainer.model, procs, log)
    log.close()


def _position(saved: tuple[int, int]) -> str:
    epoch, within = saved
    if not within:
        return f"epoch {epoch}"
    return (f"epoch {epoch} and " if epoch else "") + f"{within} iterations of epoch {epoch + 1}"


def _interrupted(saved: tuple[int, int], folder: str) -> str:
    """What an interrupted run says: what is saved and the command that continues."""
    if saved != (0, 0):
        what = f"epoch {saved[0]} is the last completed one" if not saved[1] else f"{_position(saved)} are done"
        return (f"interrupted: {what}, saved in {os.path.join(folder, 'epoch-last.pth')}; continue with the "
                "same command and --resume")
    return (f"interrupted before the first checkpoint: nothing was saved; the same command (without "
            f"--resume) starts the run over in {folder}")


def _diverged(what: str, saved: tuple[int, int], folder: str) -> str:
    kept = (f"the last good checkpoint ({_position(saved)}) is kept in {os.path.join(folder, 'epoch-last.pth')}"
            if saved != (0, 0) else "no checkpoint had been written yet (the same command starts over)")
    return f"{what}: training stopped; {kept} (try a lower learning rate)"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _default_name(config: str) -> str:
    return "_" + os.path.splitext(os.path.basename(config))[0]


def build_parser() -> Parser:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="training config (YAML)")
    ap.add_argument("--name", help="run name: outputs go to <save-root>/<name>/ (default _<config name>)")
    ap.add_argument("--save-root", default="save")
    ap.add_argument("--device", type=device_name, default="auto",
                    help="auto | cpu | cuda | cuda:N (torchrun: one GPU per process)")
    ap.add_argument("--resume", nargs="?", const="auto",
                    help="checkpoint to resume (default: <save-root>/<name>/epoch-last.pth)")
    ap.add_argument("--overwrite", action="store_true",
                    help="start over in an existing run folder, removing its checkpoints, log and TensorBoard files "
                         "(without it, a folder holding a run is refused: use --resume or another --name)")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                    help="mixed-precision autocast: bf16 (CUDA or CPU; on CPUs with AVX512-BF16/AMX the "
                         "convolutions run ~1.7x faster) or fp16 (CUDA, with loss scaling)")
    ap.add_argument("--workers", type=non_negative_int, help="DataLoader workers (default: config num_workers)")
    ap.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES,
                    help="compile the training step with torch.compile (mode: default, or reduce-overhead for CUDA "
                         "graphs on a GPU); it compiles once, in the first iterations (about a minute). "
                         "docs/training.md has the measured speed-ups")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(build_parser().parse_args(argv)),
                    out_of_memory="out of memory; lower batch_size, inp_size or sample_q (or use --amp bf16 on "
                    "CUDA); a completed epoch, if any, is in the run's epoch-last.pth (continue with --resume)",
                    interrupted="interrupted before training started: nothing new was saved")


if __name__ == "__main__":
    sys.exit(program(main))
