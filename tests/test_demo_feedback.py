"""demo.py's output line: timing, a changed aspect ratio, and CMSR that does nothing."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

BUNDLED = ROOT / "weights" / "lmliif_edsr-b_cpu.pth"
pytestmark = pytest.mark.skipif(not BUNDLED.exists(), reason="needs the bundled model")


def _demo(tmp_path, *args):
    r = subprocess.run([sys.executable, "demo.py", "--input", "samples/clouds.png", "--output",
                        str(tmp_path / "o.png"), "--device", "cpu", "--overwrite", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
                                                    "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    return lines[0]


def test_output_line_has_timing_and_states_a_stretch(tmp_path):
    line = _demo(tmp_path, "--scale", "2")                     # 160x120 -> 320x240
    assert re.search(r"\(320x240\) in \d+\.\d s on cpu$", line), line
    line = _demo(tmp_path, "--size", "320x120")                # x2 wide, x1 high
    assert "aspect ratio changed (x1 vertically, x2 horizontally)" in line, line
    assert "aspect" not in _demo(tmp_path, "--size", "480x360")


def test_cmsr_that_does_nothing_says_so(tmp_path):
    line = _demo(tmp_path, "--scale", "3", "--cmsr")
    assert "note: CMSR does nothing at x3" in line and "beyond x4" in line, line
