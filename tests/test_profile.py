"""The time breakdown (utils/profile.py) and test.py --profile."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.profile import Profile, phase

ROOT = Path(__file__).resolve().parents[1]


def test_phases_are_exclusive_and_add_up_to_the_wall_time():
    with Profile() as prof:
        with phase("outer"):
            time.sleep(0.05)
            with phase("inner"):
                time.sleep(0.1)
            with phase("inner"):
                time.sleep(0.02)
        time.sleep(0.03)  # in no phase: "other"
    assert prof.seconds["inner"] == pytest.approx(0.12, abs=0.04)
    assert prof.seconds["outer"] == pytest.approx(0.05, abs=0.04)  # without its inner phases
    assert prof.calls == {"outer": 1, "inner": 2}
    assert sum(prof.seconds.values()) <= prof.wall
    report = prof.report()
    other = float(re.search(r"other\s+([0-9.]+) s", report).group(1))
    assert sum(prof.seconds.values()) + other == pytest.approx(prof.wall, abs=1e-3)


def test_phase_without_a_profile_does_nothing():
    with phase("encoder"):
        pass
    with Profile() as prof:
        pass
    assert prof.seconds == {}


def _rows(text: str) -> dict[str, float]:
    return {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^#   (\S[^\n]*?)\s+([0-9.]+) s\s+[0-9.]+ %$",
                                                                          text, re.M)}


def test_test_script_profile_covers_every_part(tmp_path):
    """On the shipped samples at x8 with CMSR: every part has a row, the rows add up to the
    wall time, and the model's share is stated."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "test.py", "--config", "configs/test/test-samples.yaml",
                        "--model", "weights/lmliif_edsr-b_cpu.pth", "--scales", "8", "--limit", "2", "--device", "cpu",
                        "--cmsr", "weights/cmsr_lmliif_edsr-b_cpu.yaml", "--profile"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    for name in ("start-up", "reading", "encoder", "latent", "render", "cmsr bookkeeping", "metrics", "other"):
        assert name in rows, (name, r.stdout)
    wall = float(re.search(r"time breakdown \(wall ([0-9.]+) s", r.stdout).group(1))
    assert sum(rows.values()) == pytest.approx(wall, rel=0.02, abs=0.01)
    assert wall < elapsed  # the program's own wall clock: nothing counted twice
    assert re.search(r"wall / model = [0-9.]+", r.stdout)


def test_demo_profile_covers_every_part(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "demo.py", "--input", "samples/shapes.png", "--scale", "3", "--device", "cpu",
                        "--output", str(tmp_path / "o.png"), "--profile"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    for name in ("start-up", "reading", "encoder", "latent", "render", "writing", "other"):
        assert name in rows, (name, r.stdout)
    wall = float(re.search(r"demo.py time breakdown \(wall ([0-9.]+) s", r.stdout).group(1))
    assert sum(rows.values()) == pytest.approx(wall, rel=0.02, abs=0.01)
    assert wall <= elapsed + 0.05  # from the process's start (10 ms ticks) to the end of the work


_PROGRAM = """
import gc, json, sys
sys.path.insert(0, {root!r})
from utils.cli import imports_done, pick_device, program, run_main

seen = {{}}

def body():
    seen["before"] = (gc.isenabled(), gc.get_freeze_count())
    {step}
    seen["after"] = (gc.isenabled(), gc.get_freeze_count())

def main():
    return run_main(body, out_of_memory="oom", interrupted="int")

if __name__ == "__main__":
    code = 0
    try:
        code = {runner}
    finally:
        print(json.dumps(dict(seen, end=(gc.isenabled(), gc.get_freeze_count()), code=code)))
"""


def _run_program(tmp_path, runner="program(main)", step='pick_device("cpu")', host=None) -> dict:
    """Run a small program as a script file (``python prog.py``), or inside ``host`` code that
    runs it; its last output line: what the collector was doing."""
    prog = tmp_path / "prog.py"
    prog.write_text(_PROGRAM.format(root=str(ROOT), runner=runner, step=step))
    cmd = [sys.executable, str(prog)] if host is None else [sys.executable, "-c", host.format(prog=str(prog))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_program_pauses_the_collector_until_the_device_is_picked(tmp_path):
    """Run as a program, the collector is off during start-up and torch's objects are frozen once
    the device is picked (the run and the exit no longer walk them)."""
    seen = _run_program(tmp_path)
    assert seen["before"] == [False, 0]
    assert seen["after"][0] is True and seen["after"][1] > 100_000  # torch's objects, frozen
    assert seen["end"][0] is True and seen["code"] == 0


def test_main_called_as_a_function_leaves_the_collector_alone(tmp_path):
    seen = _run_program(tmp_path, runner="main()")
    assert seen["before"] == [True, 0] and seen["after"] == [True, 0] and seen["end"] == [True, 0]


def test_a_program_without_a_device_resumes_the_collector_when_its_imports_are_done(tmp_path):
    """The ONNX runner's path picks no device: it says when its imports are done."""
    seen = _run_program(tmp_path, step="imports_done()")
    assert seen["before"] == [False, 0] and seen["after"][0] is True and seen["after"][1] > 0


def test_a_program_that_fails_before_picking_a_device_resumes_the_collector(tmp_path):
    seen = _run_program(tmp_path, step="raise KeyboardInterrupt")
    assert seen["end"][0] is True and seen["code"] == 130


_HOST = """
import gc, runpy, sys, weakref
class Big: pass
big = Big(); big.me = big; big.data = bytearray(10_000_000); ref = weakref.ref(big)
gc.collect(); del big  # cyclic garbage the host has not collected yet
sys.argv = ["prog.py"]
runpy.run_path({prog!r}, run_name="__main__")
gc.collect()
assert ref() is None, "the host's garbage was frozen"
"""


def test_a_program_run_inside_another_process_leaves_its_collector_alone(tmp_path):
    """``runpy`` / IPython's ``%run``: the host process's uncollected garbage must stay collectable
    (freezing it would keep it for good)."""
    seen = _run_program(tmp_path, host=_HOST)
    assert seen["before"] == [True, 0] and seen["after"] == [True, 0]
