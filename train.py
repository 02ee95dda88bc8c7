#!/usr/bin/env python
"""Train an arbitrary-scale SR model from a YAML config (LIIF / LTE / LM-LIIF / LM-LTE ...).

    python train.py --config configs/cpu/train_edsr-baseline-lmliif.yaml [--name NAME] [--device auto]
    python train.py --config ... --name NAME --resume            # continue save/NAME/epoch-last.pth
    torchrun --nproc_per_node 2 train.py --config ...            # DistributedDataParallel

Runs write to ``save/<name>/``: config.yaml, log.txt, tensorboard/, epoch-last.pth (every
epoch), epoch-best.pth (best validation PSNR) and epoch-<N>.pth every ``epoch_save``. Every
checkpoint is written atomically and holds the official layout (``model``: name/args/sd,
``optimizer``, ``epoch``) plus what an exact resume needs (scheduler, best PSNR, config).

Determinism: every sample's randomness (scale, crop, flips, query subset) is seeded from
(seed, epoch, sample index), and the shuffling from (seed, epoch); so a resumed run, or a run on
a different number of processes with the same global batch, sees exactly the same data.
"""
from __future__ import annotations

import argparse
import glob
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
from utils.cli import Parser, device_name, non_negative_int, pick_device, run_main
from utils.config import TRAIN, load_config
from utils.errors import UserError
from utils.tb_events import drop_steps_from

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

    def __getitem__(self, idx: int) -> Any:
        s = (self.seed * 1_000_003 + self.epoch * 10_007 + idx) % (2 ** 32)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        return self.dataset[idx]


def n_items(ds: Dataset) -> int:
    """The length of a map-style dataset (all of ours have one)."""
    if not isinstance(ds, Sized):
        raise TypeError(f"{type(ds).__name__} has no length")
    return len(ds)


def make_loader(spec: dict, train: bool, seed: int, world: int, rank: int, workers: int,
                wrap=None) -> DataLoader:
    """Training: the global batch is split over the processes (DistributedSampler, shuffled per
    epoch). Validation: every process takes every world-th item, no padding/duplicates.
    ``wrap(dataset)`` may replace the seeded dataset (the distillation cache)."""
    ds = SeededItems(datasets.make_dataset(spec["dataset"], spec.get("wrapper")), seed)
    if wrap is not None:
        ds, workers = wrap(ds), 0  # cached samples live in this process's memory
    batch = spec["batch_size"]
    pin = torch.cuda.is_available()
    if not train:
        part = Subset(ds, range(rank, len(ds), world))
        return DataLoader(part, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=pin)
    if batch % world:
        raise UserError(f"batch_size {batch} is not divisible by the number of processes {world}")
    sampler: DistributedSampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    return DataLoader(ds, batch_size=batch // world, sampler=sampler, num_workers=workers, pin_memory=pin)


# --- set-up ------------------------------------------------------------------------------------
def make_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    args = dict(spec.get("args") or {})
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[spec["name"]]
    return cls(params, **args)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: dict):
    ms, cos = cfg.get("multi_step_lr"), cfg.get("cosine_lr")
    if ms and cos:
        raise UserError("give either multi_step_lr or cosine_lr, not both")
    if ms:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, ms["milestones"], ms["gamma"])
    if cos:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg["epoch_max"], cos["eta_min"])
    return None


class Log:
    """log.txt + stdout (rank 0 only) and TensorBoard scalars.

    Lines are printed at once but reach ``log.txt`` only once :meth:`start` has made the run
    folder, so a start that fails (missing data, bad config) leaves no folder behind.
    """

    def __init__(self, folder: str | None) -> None:
        self.folder, self.writer = folder, None
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
            from tensorboardX import SummaryWriter
        except ImportError:
            self("warning: tensorboardX is not installed; no TensorBoard logs")
            return
        tb = os.path.join(self.folder, "tensorboard")
        if resume_step is not None and os.path.isdir(tb):
            n = drop_steps_from(tb, resume_step)
            if n:
                self(f"TensorBoard: removed {n} event(s) logged after the checkpoint (step >= {resume_step})")
        self.writer = SummaryWriter(tb, purge_step=resume_step)

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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def checkpoint(model: nn.Module, cfg: dict, optimizer, scheduler, epoch: int, best: float) -> dict:
    return {
        "model": {"name": cfg["model"]["name"], "args": cfg["model"]["args"], "sd": model.state_dict()},
        "optimizer": {"name": cfg["optimizer"]["name"], "args": cfg["optimizer"].get("args"),
                      "sd": optimizer.state_dict()},
        "epoch": epoch,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best_val": best,
        "config": cfg,
    }


# --- train / validate ----------------------------------------------------------------------------
def train_epoch(model, loader, optimizer, cfg, device, amp, log: Log, epoch: int, rank: int,
                scaler=None, teacher: distill.Teacher | None = None) -> float:
    model.train()
    norm_in, norm_gt = cfg["data_norm"]["inp"], cfg["data_norm"]["gt"]
    n_iter = iters_per_epoch(cfg, loader)
    total, count = 0.0, 0
    bar = _progress(n_iter, f"epoch {epoch}", rank)
    t_start = time.time()
    for it, batch in enumerate(loader):
        if it >= n_iter:
            break
        inp = normalise(batch["inp"].to(device), norm_in["sub"], norm_in["div"])
        gt = normalise(batch["gt"].to(device), norm_gt["sub"], norm_gt["div"])
        coord, cell = batch["coord"].to(device), batch["cell"].to(device)
        feat = batch["feat"].to(device) if "feat" in batch else None
        target = batch["target"].to(device) if "target" in batch else None
        if target is None and teacher is not None:
            target = teacher.predict(inp, coord, cell)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            pred = model(inp, coord, cell) if feat is None else model(inp, coord, cell, feat=feat)
            loss = training_loss(pred.float(), gt, target, cfg.get("teacher"))
        if not torch.isfinite(loss):
            raise NonFinite(f"loss became {loss.item()} at epoch {epoch}, iteration {it + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            try:
                optimizer.step()
            except RuntimeError as e:  # e.g. lr 1e39: "value cannot be converted to type float without overflow"
                if "overflow" not in str(e):
                    raise
                raise NonFinite(f"the optimizer step overflowed at epoch {epoch}, iteration {it + 1} "
                                f"(learning rate {optimizer.param_groups[0]['lr']:.3g})") from None
        total += loss.item()
        count += 1
        log.scalar("loss/train", loss.item(), (epoch - 1) * n_iter + it + 1)
        if bar is not None:
            bar.set_postfix(loss=f"{total / count:.4f}")
            bar.update(1)
        elif rank == 0 and (it + 1) % max(1, n_iter // 4) == 0 and it + 1 < n_iter:
            spi = (time.time() - t_start) / (it + 1)
            print(f"  epoch {epoch}: {it + 1}/{n_iter} iterations, loss={total / count:.4f}, {spi:.2f} s/it, "
                  f"epoch ETA {_duration(spi * (n_iter - it - 1))}", flush=True)
    if bar is not None:
        bar.close()
    return total / max(count, 1)


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


def _progress(n: int, desc: str, rank: int):
    """A tqdm bar on an interactive terminal (rank 0); None otherwise (progress lines instead)."""
    if rank != 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=n, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


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
        return load_config(args.config, TRAIN, REGISTRIES)
    if resume_ckpt is not None:
        return resume_ckpt["config"]
    raise UserError("give --config (or --resume with a checkpoint that holds its config)")


def choose_amp(name: str, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """The autocast dtype of --amp and, for fp16, the gradient scaler."""
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if amp is torch.float16 and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (on the CPU use --amp bf16)")
    return amp, (torch.amp.GradScaler("cuda") if amp is torch.float16 else None)


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
    scheduler: Any
    train_loader: DataLoader
    val_loader: DataLoader | None
    amp: torch.dtype | None
    scaler: Any
    teacher: distill.Teacher | None = None
    best: float = -math.inf
    last_saved: int = 0

    def restore(self, ckpt: dict) -> int:
        """Weights, optimizer, scheduler and best PSNR of a resumed run; the next epoch."""
        models.load_state_dict_strict(self.model, ckpt["model"]["sd"], what="the resumed model")
        self.optimizer.load_state_dict(ckpt["optimizer"]["sd"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.best = ckpt.get("best_val", -math.inf)
        self.last_saved = ckpt["epoch"]
        self.log(f"resumed from epoch {ckpt['epoch']}")
        return ckpt["epoch"] + 1

    def diverged(self, what: str) -> UserError:
        return UserError(_diverged(what, self.last_saved, self.folder))

    def epoch(self, epoch: int) -> str:
        """Train, validate and checkpoint one epoch; the log line."""
        cfg, procs = self.cfg, self.procs
        data, sampler = self.train_loader.dataset, self.train_loader.sampler
        if isinstance(data, SeededItems):  # (the distillation cache draws nothing per epoch)
            data.epoch = epoch
        assert isinstance(sampler, DistributedSampler)  # made by make_loader
        sampler.set_epoch(epoch)
        if update_frozen(self.model, cfg, epoch, self.train_loader.dataset, self.log):
            self.net = wrap_ddp(self.model, procs)  # DDP registers the parameters that train now
        try:
            loss = train_epoch(self.net, self.train_loader, self.optimizer, cfg, procs.device, self.amp, self.log,
                               epoch, procs.rank, self.scaler, self.teacher)
            if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                raise NonFinite(f"the weights became inf/nan in epoch {epoch}")
        except NonFinite as e:
            raise self.diverged(str(e)) from None
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        msg = f"epoch {epoch}/{cfg['epoch_max']}, train: loss={loss:.4f}, lr={lr:.2e}"
        step = epoch * iters_per_epoch(cfg, self.train_loader)  # one step axis: iterations
        self.log.scalar("lr", lr, step)
        is_best = False
        if self.val_loader is not None and epoch % (cfg.get("epoch_val") or 1) == 0:
            psnr = validate(self.net, self.val_loader, cfg, procs.device, procs.world)
            if math.isnan(psnr):
                raise self.diverged(f"validation PSNR is nan after epoch {epoch} (the model outputs inf/nan)")
            self.log.scalar("psnr/val", psnr, step)
            msg += f", val: psnr={psnr:.4f}"
            if psnr > self.best:
                self.best, is_best = psnr, True
        if procs.rank == 0:
            self.save(epoch, is_best)
        self.last_saved = epoch
        return msg

    def save(self, epoch: int, is_best: bool) -> None:
        ck = checkpoint(self.model, self.cfg, self.optimizer, self.scheduler, epoch, self.best)
        # epoch-last.pth is the commit point of an epoch, so it is written last: a crash between
        # the writes resumes from the previous epoch and rewrites epoch-best/epoch-N identically
        if is_best:
            save_atomic(ck, os.path.join(self.folder, "epoch-best.pth"))
        if self.cfg.get("epoch_save") and epoch % self.cfg["epoch_save"] == 0:
            save_atomic(ck, os.path.join(self.folder, f"epoch-{epoch}.pth"))
        save_atomic(ck, os.path.join(self.folder, "epoch-last.pth"))

    def fit(self, epoch_start: int) -> None:
        """Epochs ``epoch_start``..epoch_max, stopping early once ``max_minutes`` have passed."""
        cfg, t0 = self.cfg, time.time()
        for epoch in range(epoch_start, cfg["epoch_max"] + 1):
            t_ep = time.time()
            msg = self.epoch(epoch)
            elapsed = time.time() - t0
            done, left = epoch - epoch_start + 1, cfg["epoch_max"] - epoch
            if cfg.get("max_minutes"):
                left = min(left, max(0, math.ceil((cfg["max_minutes"] * 60 - elapsed) / (elapsed / done))))
            t_it = (time.time() - t_ep) / max(iters_per_epoch(cfg, self.train_loader), 1)
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
    trainer = Trainer(cfg, procs, folder, log, model, model, optimizer, make_scheduler(optimizer, cfg),
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
    trainer.train_loader = make_loader(cfg["train_dataset"], True, seed, world, rank, workers,
                                       wrap=cache_wrapper(cfg, model, trainer.teacher, procs.device, log))
    trainer.val_loader = make_loader(cfg["val_dataset"], False, seed + 1, world, rank, workers) \
        if cfg.get("val_dataset") else None
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg['model']['name']} #params={n_params:,}; train samples {n_items(trainer.train_loader.dataset)}, "
        f"{world} process(es) on {procs.device}")
    trainer.net = wrap_ddp(model, procs)
    return trainer, epoch_start


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
    resume_step = (epoch_start - 1) * iters_per_epoch(cfg, trainer.train_loader) + 1 if resume_ckpt else None
    # a run started over drops the TensorBoard events of the attempt that completed no epoch
    prepare_folder(folder, cfg, procs.rank, log, args.overwrite and resume_ckpt is None and not restart,
                   1 if restart else resume_step)
    try:
        trainer.fit(epoch_start)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted(trainer.last_saved, folder)) from None
    if procs.world > 1:
        check_replicas(trainer.model, procs, log)
    log.close()


def _interrupted(last_saved: int, folder: str) -> str:
    """What an interrupted run says: what is saved and the command that continues."""
    if last_saved > 0:
        return (f"interrupted: epoch {last_saved} is the last completed one, saved in "
                f"{os.path.join(folder, 'epoch-last.pth')}; continue with the same command and --resume")
    return (f"interrupted before the first epoch ended: no checkpoint was written; the same command (without "
            f"--resume) starts the run over in {folder}")


def _diverged(what: str, last_saved: int, folder: str) -> str:
    kept = (f"the last good checkpoint (epoch {last_saved}) is kept in {os.path.join(folder, 'epoch-last.pth')}"
            if last_saved > 0 else "no checkpoint had been written yet")
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
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(build_parser().parse_args(argv)),
                    out_of_memory="out of memory; lower batch_size, inp_size or sample_q (or use --amp bf16 on "
                    "CUDA); a completed epoch, if any, is in the run's epoch-last.pth (continue with --resume)",
                    interrupted="interrupted before training started: nothing new was saved")


if __name__ == "__main__":
    sys.exit(main())
