#!/usr/bin/env python
"""The CUDA checks of docs/gpu.md in one prepared run (issue: the CUDA path verified and timed).

    python scripts/gpu_check.py                        # on a CUDA machine: everything, ~5-7 min
    python scripts/gpu_check.py --device cpu --quick   # dry run of every step on the CPU (small)
    python scripts/gpu_check.py --steps golden,bench   # some steps only

Steps (each a subprocess with its own timeout; a failing step does not stop the others):

* ``env``     — GPU, driver, torch / triton versions;
* ``golden``  — the golden, Triton and train/resume tests with ``LMF_TEST_DEVICE`` = the device
  (TF32 off for matmuls and cuDNN convolutions, see tests/conftest.py), CMSR cases included;
* ``train``   — the official EDSR-b LM-LIIF recipe shape (batch 16, 48x48 LR patches, 2304
  queries) for a few short epochs on the shared training images, fp32 then ``--amp bf16``,
  then a resume of the bf16 run for one more epoch: loss must fall, resume must resume;
* ``trainspeed`` — scripts/bench_train.py on the official recipe shape (synthetic DIV2K-sized
  images): iterations/s, the step's breakdown and the projected hours for 1M iterations, for the
  step as it was (foreach Adam, a host sync per iteration), the current step in fp32 and bf16, and
  compiled (default and CUDA-graph modes); the data pipeline's samples/s with 0, 8 and 16 workers;
* ``cmsr``    — test.py with CMSR on Set5 x8 (bundled model) on the device;
* ``bench``   — scripts/bench_decoder.py at 320x180, x4/x8/x12, fp32 and bf16 (CUDA events,
  median of 20), LMF render fused (Triton), eager and eager under torch.compile;
* ``encoder`` — scripts/bench_encoder.py (fp32 / bf16 / channels-last);
* ``devices`` — demo.py, test.py and train.py with their default device (no ``--device``), as a
  GPU user runs them first: each must run, on ``cuda:0``;
* ``precision`` — ``--precision bf16`` against fp32: end-to-end upscaling times (320x180 x4/x8/x12,
  960x540 x2/x4; scripts/bench_upsample.py) and test.py's Set14 PSNR and time at x2/x3/x4 (scripts/bench_precision.py);
* ``liif``    — the official LIIF release (bundled fp16 copy) x4 from 320x180, end to end, against
  the official LIIF code's time on the H200 (128.2 ms): query chunks sized from free memory;
* ``programs`` — whole programs, wall clock: test.py Set14 x4 with the LIIF release (the official
  test.py: 6.8 s on the H200), test.py Set14 x12 without and with CMSR, demo.py 960x540 x4 twice.
* ``video``   — video upscaling end to end (scripts/bench_video.py: decode -> model -> encode, audio
  copied, output read back): 960x540 -> 3840x2160 and 1280x720 -> 1920x1080 in fp32 and bf16, then
  540p -> 4K in bf16 with x264's veryfast preset; frames/s and the stages' shares (goal: >= 30
  frames/s end to end for 540p -> 4K in bf16). Needs requirements-video.txt (skipped without PyAV).

The summary ends with one PASS/FAIL line for each failure that the first GPU run found
(``../shared/measurements/gpu-h200-2026-12.md``), from the steps that measure it. The exit status
is 0 only if every step that ran passed; on a machine without CUDA, ``--device cuda`` (the default)
is refused at once (a dry run is ``--device cpu --quick``).

Writes ``<out>/summary.md`` and one log per step (``--out``, default ``$OUT/gpu_check`` when
``$OUT`` is set, else ``outputs/gpu_check``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "devices", "golden", "train", "trainspeed", "cmsr", "bench", "encoder", "precision", "liif", "programs", "video")
OFFICIAL_TEST_SET14_X4_S = 6.8  # the official LIIF test.py, Set14 x4, LIIF release, on the H200 (measurements file)
OFFICIAL_LIIF_X4_MS = 128.2  # the official LIIF code, x4 from 320x180, on the H200 (measurements file)


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """Run ``cmd`` in the repository root; stdout+stderr to ``log``. (exit code, output, seconds)."""
    t = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                           timeout=timeout)
        code, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        code = 124
        out = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")) \
            + f"\n[timed out after {timeout:.0f}s]"
    log.write_text(" ".join(cmd) + "\n\n" + out)
    return code, out, time.time() - t


def train_config(args: argparse.Namespace, folder: Path, epochs: int) -> Path:
    """The official EDSR-b LM-LIIF recipe's shape, shortened (few iterations per epoch)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs/train/train_edsr-baseline-lmliif.yaml").read_text())
    train_dir = Path(args.data) / "train" / "BSD200"
    if not train_dir.is_dir():  # no shared data on this machine: smooth synthetic images
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import smooth_images

        train_dir = smooth_images(folder / "synthetic", n=32, size=64 if args.quick else 192)
    quick = args.quick
    cfg["train_dataset"]["dataset"]["args"] = {"root_path": str(train_dir), "repeat": 1 if quick else 4,
                                               "first_k": 8 if quick else None, "cache": "in_memory"}
    cfg["val_dataset"]["dataset"]["args"] = {"root_path": str(train_dir), "first_k": 4, "repeat": 2,
                                             "cache": "in_memory"}
    for part in ("train_dataset", "val_dataset"):
        if quick:
            cfg[part]["wrapper"]["args"].update(inp_size=16, sample_q=256)
            cfg[part]["batch_size"] = 4
    cfg["train_dataset"]["dataset"]["args"] = {k: v for k, v in cfg["train_dataset"]["dataset"]["args"].items()
                                               if v is not None}
    cfg.update(epoch_max=epochs, epoch_val=1, epoch_save=1000, num_workers=2 if quick else 8, seed=0)
    cfg["multi_step_lr"] = {"milestones": [1000], "gamma": 0.5}
    cfg["optimizer"]["args"]["lr"] = 4e-4  # a few hundred iterations: a larger step than the recipe's
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


#: (label, bench_train.py options): the step as it was (foreach Adam, a host sync per iteration),
#: then each change, then bf16 and compilation on top
TRAIN_SPEED_RUNS: tuple[tuple[str, list[str]], ...] = (
    ("fp32, as before (foreach Adam, loss read every step)", ["--optimizer", "foreach", "--read-every", "1"]),
    ("fp32", []),
    ("bf16", ["--amp", "bf16"]),
    ("bf16, compiled", ["--amp", "bf16", "--compile"]),
    ("bf16, compiled with CUDA graphs", ["--amp", "bf16", "--compile", "reduce-overhead"]),
)


def trainspeed_step(args: argparse.Namespace, out: Path, py: str) -> tuple[int, str, float]:
    """scripts/bench_train.py on the official EDSR-b LM-LIIF recipe shape (batch 16, 48x48, 2304
    queries) with synthetic DIV2K-sized images: it/s, the breakdown, and the data pipeline's
    samples/s; the quick dry run uses the CPU "try it" config and a few iterations."""
    if args.quick:
        base = [py, "scripts/bench_train.py", "--config", "configs/cpu/try_lmliif.yaml", "--iters", "2",
                "--warmup", "1", "--workers", "1", "--pipeline-samples", "20"]
        runs = TRAIN_SPEED_RUNS[:2] + (("fp32, compiled", ["--compile"]),)
    else:
        base = [py, "scripts/bench_train.py", "--config", "configs/train/train_edsr-baseline-lmliif.yaml",
                "--synthetic", "16", "--iters", "100", "--warmup", "20", "--workers", "8"]
        runs = TRAIN_SPEED_RUNS
    worst, total = 0, 0.0
    rows = ["| step | it/s | ms/it: data, copy, forward, backward, optimizer, bookkeeping | 1M iterations |",
            "|---|---|---|---|"]
    details = []
    for i, (label, extra) in enumerate(runs):
        res = out / f"trainspeed-{i}.json"
        pipeline = (["--pipeline-workers", "0,1" if args.quick else "0,8,16"] if i == 1
                    else ["--pipeline-workers", ""])
        code, text, secs = run([*base, "--device", args.device, *extra, *pipeline, "--json", str(res)],
                               out / f"trainspeed-{i}.log", 300 if args.quick else 420)
        worst, total = worst or code, total + secs
        if code != 0 or not res.exists():
            rows.append(f"| {label} | failed ({code}) | see trainspeed-{i}.log | |")
            continue
        r = json.loads(res.read_text())
        ms = r["ms_per_iter"]
        parts = ", ".join(f"{ms.get(k, 0):.1f}" for k in ("data", "copy", "forward", "backward", "optimizer",
                                                        "bookkeeping"))
        rows.append(f"| {label} | {r['iters_per_s']:.1f} | {parts} | {r['hours_1M']:.1f} h |")
        if r["pipeline_samples_per_s"]:
            details.append("data pipeline alone (samples/s by workers; 0 = one worker's capacity): "
                           + ", ".join(f"{w}: {v:.0f}" for w, v in r["pipeline_samples_per_s"].items()))
    return worst, "\n".join(rows + [""] + details), total


def losses(log_text: str) -> list[float]:
    return [float(x) for x in re.findall(r"epoch \d+/\d+, train: loss=([0-9.]+)", log_text)]


def epoch_seconds(log_text: str) -> list[float]:
    return [float(x) for x in re.findall(r"train: loss=[0-9.]+.*?, ([0-9.]+)s \(", log_text)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU dry run of every step)")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="shared data folder")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    steps = args.steps.split(",")
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"unknown step {', '.join(bad)}; choose from {', '.join(STEPS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit(f"error: --device {args.device}: CUDA is not available on this machine (PyTorch "
                     f"{torch.__version__}); for a dry run of every step on the CPU use --device cpu --quick")
    out = Path(args.out or (Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else ROOT / "outputs" / "gpu_check"))
    out.mkdir(parents=True, exist_ok=True)
    py, dev, quick = sys.executable, args.device, args.quick
    lines = [f"# gpu_check {datetime.datetime.now().isoformat(timespec='seconds')}, device {dev}"
             f"{' (quick)' if quick else ''}", ""]

    failed: list[str] = []
    verdicts: list[str] = []

    def verdict(what: str, ok: bool | None, detail: str) -> None:
        """One line of the summary's last section: a failure of the first GPU run, re-checked."""
        verdicts.append(f"- {'PASS' if ok else ('n/a ' if ok is None else 'FAIL')} {what}: {detail}")

    def report(name: str, code: int, secs: float, text: str = "") -> None:
        if code != 0:
            failed.append(name)
        status = "ok" if code == 0 else ("TIMEOUT" if code == 124 else f"FAILED ({code})")
        lines.append(f"## {name}: {status}, {secs:.0f}s")
        if text:
            lines.extend(["", text.rstrip(), ""])
        print(f"{name}: {status}, {secs:.0f}s", flush=True)
        (out / "summary.md").write_text("\n".join(lines) + "\n")

    if "env" in steps:
        code, text, secs = run([py, "-c", "import torch, platform; print('torch', torch.__version__, 'cuda', "
                                "torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() "
                                "else 'none', platform.processor());\ntry:\n import triton; print('triton', triton.__version__)\n"
                                "except ImportError as e: print('triton missing:', e)"], out / "env.log", 300)
        if shutil.which("nvidia-smi"):
            text += subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                                   capture_output=True, text=True).stdout
        report("env", code, secs, "```\n" + text.strip() + "\n```")

    if "devices" in steps:
        code, text, secs = devices_step(args, out, py)
        verdict("1. the default device runs demo/test/train", code == 0 if dev.startswith("cuda") else None,
                text.splitlines()[-1] if text else "")
        report("devices", code, secs, text)

    if "golden" in steps:
        sel = ["tests/test_golden.py", "tests/test_triton_render.py", "tests/test_train.py", "-k", "not ddp"]
        if quick:
            sel = ["tests/test_golden.py", "tests/test_triton_render.py", "-k", "48x64 or border"]
        code, text, secs = run([py, "-m", "pytest", "-q", "-rs", *sel], out / "golden.log", 400 if not quick else 900,
                               env={"LMF_TEST_DEVICE": dev})
        cmsr_cases = re.findall(r"(PASSED|FAILED)[^\n]*cmsr|cmsr[^\n]*(PASSED|FAILED)", text)
        verdict("2. CMSR golden cases on the device", code == 0, "golden step " + ("ok" if code == 0 else "FAILED")
                + (f" ({len(cmsr_cases)} CMSR lines in the log)" if cmsr_cases else ""))
        report("golden", code, secs, "```\n" + "\n".join(text.strip().splitlines()[-12:]) + "\n```")

    if "train" in steps:
        folder = out / "train"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        epochs = 2 if quick else 3
        cfg = train_config(args, folder, epochs)
        rows = []
        worst, total = 0, 0.0
        for amp in ("none", "bf16"):
            cmd = [py, "train.py", "--config", str(cfg), "--name", f"smoke-{amp}", "--save-root", str(folder),
                   "--device", dev, "--amp", amp]
            code, text, secs = run(cmd, out / f"train-{amp}.log", 300)
            total += secs
            ls = losses(text)
            ran = code == 0 and len(ls) == epochs and all(math.isfinite(v) for v in ls)
            # a dry run has two iterations an epoch: its loss is noise, so there it must only be finite
            falls = ran and ls[-1] < ls[0]
            ok = ran if quick else falls
            worst = worst or (0 if ok else (code or 1))
            rows.append(f"| {amp} | {' -> '.join(f'{v:.4f}' for v in ls)} | "
                        f"{', '.join(f'{v:.1f}' for v in epoch_seconds(text))} | "
                        f"{'falls' if falls else ('ran (dry run: not judged)' if ok else 'NO')} |")
        # resume the bf16 run for one more epoch
        cfg2 = folder / "train-resume.yaml"
        cfg2.write_text(cfg.read_text().replace(f"epoch_max: {epochs}", f"epoch_max: {epochs + 1}"))
        cmd = [py, "train.py", "--config", str(cfg2), "--name", "smoke-bf16", "--save-root", str(folder),
               "--device", dev, "--amp", "bf16", "--resume"]
        code, text, secs = run(cmd, out / "train-resume.log", 200)
        total += secs
        resumed = code == 0 and f"resumed from epoch {epochs}" in text and len(losses(text)) == 1
        worst = worst or (0 if resumed else (code or 1))
        table = ["| amp | loss per epoch | s per epoch | |", "|---|---|---|---|", *rows, "",
                 f"resume (bf16, epoch {epochs} -> {epochs + 1}): {'ok' if resumed else 'FAILED'}"]
        report("train", worst, total, "\n".join(table))

    if "trainspeed" in steps:
        code, text, secs = trainspeed_step(args, out, py)
        its = re.findall(r"^\| (.+?) \| ([0-9.]+) \|", text, flags=re.M)
        best = max(its, key=lambda r: float(r[1])) if its else None
        verdict("5. training: the official recipe shape at >= 100 iterations/s", None if quick else bool(best and float(best[1]) >= 100),
                f"best {best[1]} it/s ({best[0]})" if best else "no figure")
        report("trainspeed", code, secs, text)

    if "cmsr" in steps:
        s2m_table = ROOT / "weights" / "cmsr_lmliif_edsr-b_cpu.yaml"
        cfg = ROOT / "configs/test/test-set5.yaml"
        if not (Path(args.data) / "benchmark" / "Set5").is_dir():
            report("cmsr", 0, 0, f"skipped: no Set5 under {args.data} (the golden CMSR cases ran in 'golden')")
        else:
            cmd = [py, "test.py", "--config", str(cfg), "--model", "weights/lmliif_edsr-b_cpu.pth",
                   "--scales", "8", "--device", dev, "--cmsr", str(s2m_table)] + (["--limit", "1"] if quick else [])
            # the config reads its images under ${LMF_DATA}
            code, text, secs = run(cmd, out / "cmsr.log", 200, env={"LMF_DATA": str(Path(args.data).resolve())})
            report("cmsr", code, secs, "```\n" + "\n".join(text.strip().splitlines()[-6:]) + "\n```")

    if "bench" in steps:
        size, reps = ("40x30", "2") if quick else ("320x180", "20")
        base = [py, "scripts/bench_decoder.py", "--device", dev, "--lr-size", size, "--repeats", reps]
        if quick:
            base += ["--models", "LM-LIIF,LM-LTE", "--scales", "4"]
        worst, texts, total = 0, [], 0.0
        for label, extra in (("fp32, fused", []), ("bf16, fused", ["--amp", "bf16"]),
                             ("fp32, eager", ["--render", "eager", "--models", "LM-LIIF,LM-LTE"]),
                             ("bf16, eager", ["--render", "eager", "--amp", "bf16", "--models", "LM-LIIF,LM-LTE"]),
                             ("fp32, torch.compile", ["--render", "compile", "--models", "LM-LIIF", "--scales", "4"])):
            code, text, secs = run(base + extra, out / f"bench-{label.replace(', ', '-').replace('.', '')}.log",
                                   240)
            worst, total = worst or code, total + secs
            texts.append(f"### {label}\n\n" + text.strip())
        report("bench", worst, total, "\n\n".join(texts))

    if "encoder" in steps:
        size = "40x30" if quick else "320x180"
        cmd = [py, "scripts/bench_encoder.py", "--device", dev, "--lr-size", size, "--repeats", "2" if quick else "20"]
        if quick:
            cmd += ["--encoders", "edsr-b"]
        code, text, secs = run(cmd, out / "encoder.log", 240)
        report("encoder", code, secs, text.strip())
    if "precision" in steps:
        cases = "160x90:4,160x90:8" if quick else "320x180:4,320x180:8,320x180:12,960x540:2,960x540:4"
        code, text, secs = run([py, "scripts/bench_upsample.py", "--device", dev, "--cases", cases,
                                "--repeats", "2" if quick else "10"], out / "precision-speed.log", 240)
        body = [text.strip()]
        if (Path(args.data) / "benchmark" / "Set14").is_dir():
            # test.py's Set14 PSNR and evaluation time, fp32 then bf16 (scripts/bench_precision.py)
            c, t, s2 = run([py, "scripts/bench_precision.py", "--models", "weights/lmliif_edsr-b_cpu.pth",
                            "--sets", "Set14", "--scales", "4" if quick else "2,3,4", "--device", dev,
                            "--data", str(Path(args.data).resolve())] + (["--limit", "1"] if quick else []),
                           out / "precision-set14.log", 300)
            code, secs = code or c, secs + s2
            body.append(t.strip())
        report("precision", code, secs, "\n\n".join(body))

    if "liif" in steps:
        code, text, secs = run([py, "scripts/bench_upsample.py", "--device", dev, "--model",
                                "weights/liif_edsr-b_official_fp16.pth", "--cases", "40x30:4" if quick else "320x180:4",
                                "--precisions", "fp32", "--repeats", "2" if quick else "10"], out / "liif.log", 200)
        ms = re.search(r"\| x4 \| \S+ \| ([0-9.]+) \|", text)
        if ms and not quick:
            verdict("4. LIIF x4 from 320x180 at least as fast as the official LIIF code",
                    float(ms.group(1)) <= OFFICIAL_LIIF_X4_MS, f"{ms.group(1)} ms vs {OFFICIAL_LIIF_X4_MS} ms")
        report("liif", code, secs, text.strip())

    if "programs" in steps:
        code, text, secs, cmsr_ok = programs_step(args, out, py)
        if cmsr_ok is not None:
            verdict("3. CMSR makes test.py faster, not slower (Set14 x12)", cmsr_ok,
                    next((line for line in text.splitlines() if line.startswith("Set14 x12 with CMSR")), ""))
        report("programs", code, secs, text)

    if "video" in steps:
        code, text, secs = video_step(args, out, py)
        report("video", code, secs, text)

    if verdicts:
        lines.extend(["## The first GPU run's failures, re-checked", "", *verdicts, ""])
    lines.append(f"steps failed: {', '.join(failed) if failed else 'none'}")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'summary.md'}")
    sys.exit(1 if failed else 0)


def devices_step(args: argparse.Namespace, out: Path, py: str) -> tuple[int, str, float]:
    """demo.py, test.py and train.py without --device: each must run, and on the GPU when there is one."""
    folder = out / "devices"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    want = "cuda:0" if args.device.startswith("cuda") else "cpu"
    cfg = train_config(args, folder, 1)
    runs = {
        "demo": [py, "demo.py", "--input", "samples/shapes.png", "--scale", "4", "--output", str(folder / "demo.png")],
        "test": [py, "test.py", "--config", "configs/test/test-samples.yaml", "--model", "weights/lmliif_edsr-b_cpu.pth",
                 "--scales", "4", "--limit", "1"],
        "train": [py, "train.py", "--config", str(cfg), "--name", "default-device", "--save-root", str(folder)],
    }
    rows, worst, total = ["| program | exit | device | |", "|---|---|---|---|"], 0, 0.0
    for name, cmd in runs.items():
        code, text, secs = run(cmd, out / f"devices-{name}.log", 240)
        if name == "train" and code == 0:
            text += (folder / "default-device" / "log.txt").read_text()
        on = want in text
        ok = code == 0 and on
        worst, total = worst or (0 if ok else (code or 1)), total + secs
        rows.append(f"| {name} | {code} | {want if on else 'not ' + want} | {'ok' if ok else 'FAILED'} |")
    rows.append(f"default device: {'all three ran on ' + want if worst == 0 else 'FAILED'}")
    return worst, "\n".join(rows), total


def programs_step(args: argparse.Namespace, out: Path, py: str) -> tuple[int, str, float, bool | None]:
    """Whole programs, wall clock as a user waits for them: test.py Set14 x4 with the official
    LIIF release (the official test.py took 6.8 s on the H200), test.py Set14 x12 without and
    with CMSR, demo.py 960x540 -> 3840x2160 twice (a first and a second run)."""
    folder = out / "programs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    quick, dev = args.quick, args.device
    data = Path(args.data).resolve()
    # a fresh Triton cache: what the runs compile is counted below (one render kernel expected)
    env = {"LMF_DATA": str(data), "TRITON_CACHE_DIR": str(folder / "triton-cache")}
    limit = ["--limit", "1"] if quick else []
    rows, worst, total, walls = ["| program | wall s | |", "|---|---|---|"], 0, 0.0, {}

    breakdowns: list[str] = []

    def timed(name: str, cmd: list[str]) -> None:
        nonlocal worst, total
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")  # one log per run (names differ after a comma too)
        code, text, secs = run(cmd, out / f"programs-{slug}.log", 300, env=env)
        worst, total = worst or code, total + secs
        walls[name] = secs
        rows.append(f"| {name} | {secs:.1f} | {'ok' if code == 0 else f'FAILED ({code})'} |")
        profile = [line for line in text.splitlines() if line.startswith("# ") and ("breakdown" in line or line.startswith("#   "))]
        if profile:  # test.py --profile: where the wall time went
            breakdowns.extend(["", f"{name}:", "```", *profile, "```"])

    if (data / "benchmark" / "Set14").is_dir():
        test = [py, "test.py", "--config", "configs/test/test-set14.yaml", "--device", dev, "--profile", *limit]
        timed("test.py Set14 x4, LIIF release", [*test, "--model", "weights/liif_edsr-b_official_fp16.pth", "--scales", "4"])
        timed("test.py Set14 x12, bundled", [*test, "--model", "weights/lmliif_edsr-b_cpu.pth", "--scales", "12"])
        timed("test.py Set14 x12, bundled, CMSR", [*test, "--model", "weights/lmliif_edsr-b_cpu.pth", "--scales", "12",
                                                   "--cmsr", "weights/cmsr_lmliif_edsr-b_cpu.yaml"])
    from PIL import Image

    size = (120, 68) if quick else (960, 540)
    src = folder / f"input_{size[0]}x{size[1]}.png"
    Image.open(ROOT / "samples" / "clouds.png").convert("RGB").resize(size, Image.Resampling.BICUBIC).save(src)
    for n in ("first", "second"):
        timed(f"demo.py {size[0]}x{size[1]} x4 ({n} run)", [py, "demo.py", "--input", str(src), "--scale", "4",
                                                            "--device", dev, "--output", str(folder / f"demo-{n}.png")])
    compiled = sorted(folder.glob("triton-cache/*/query_kernel*.json"))
    rows.append(f"Triton render kernels compiled over these runs: {len(compiled)} (one per model and table dtype "
                "expected, whatever the image and level sizes; 0 off CUDA)")
    liif = walls.get("test.py Set14 x4, LIIF release")
    if liif is not None and not quick:
        rows.append(f"test.py Set14 x4 LIIF release: {liif:.1f} s (official test.py on the H200: "
                    f"{OFFICIAL_TEST_SET14_X4_S} s)")
    cmsr_ok = None
    a, b = walls.get("test.py Set14 x12, bundled"), walls.get("test.py Set14 x12, bundled, CMSR")
    if a is not None and b is not None and worst == 0:
        cmsr_ok = b <= a if dev.startswith("cuda") else None
        rows.append(f"Set14 x12 with CMSR {b:.1f} s vs {a:.1f} s without")  # the verdict's detail
    return worst, "\n".join(rows + breakdowns), total, cmsr_ok


def video_step(args: argparse.Namespace, out: Path, py: str) -> tuple[int, str, float]:
    """scripts/bench_video.py on the device: 540p -> 4K and 720p -> 1080p, fp32 and bf16 (x264
    medium, the program's default), then 540p -> 4K bf16 with x264 veryfast (how much of the 4K
    rate is the encoder's). The step fails if a run fails or writes a wrong file; the frames/s
    goal is reported, not judged (it depends on the encoder's CPU share as much as on the GPU)."""
    import importlib.util

    if importlib.util.find_spec("av") is None:
        return 0, "skipped: PyAV is not installed (pip install -r requirements-video.txt)", 0.0
    quick, dev = args.quick, args.device
    frames = "2" if quick else "120"
    big, small = ("64x36:128x72", "") if quick else ("960x540:3840x2160", "1280x720:1920x1080")
    base = [py, "scripts/bench_video.py", "--device", dev, "--frames", frames]
    code, text, secs = run(base + ["--cases", ",".join(c for c in (big, small) if c), "--precisions", "fp32,bf16"],
                           out / "video.log", 600)
    c2, t2, s2 = run(base + ["--cases", big, "--precisions", "bf16", "--preset", "veryfast"], out / "video-veryfast.log",
                     300)
    rates = [float(m) for m in re.findall(rf"^\| {big.split(':')[0]} \| {big.split(':')[1]} \| bf16 \| ([0-9.]+) \|",
                                          text + t2, flags=re.M)]
    body = [text.strip(), "", "x264 preset veryfast:", "", t2.strip(), ""]
    if rates and not quick:
        best = max(rates)
        body.append(f"goal 540p -> 4K bf16 >= 30 frames/s end to end: {best:.1f} frames/s "
                    f"({'met' if best >= 30 else 'NOT met'})")
    return code or c2, "\n".join(body), secs + s2


if __name__ == "__main__":
    main()
