"""The prepared GPU run, dry-run on the CPU: every step of scripts/gpu_check.py must run."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def test_every_step_dry_runs_on_the_cpu(tmp_path):
    import gpu_check

    out = tmp_path / "g"
    p = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1500)
    summary = (out / "summary.md").read_text()
    assert p.returncode == 0, summary[-3000:] + p.stderr[-2000:]
    ran = re.findall(r"^## (\w+): (\S+)", summary, flags=re.M)
    assert [name for name, _ in ran] == list(gpu_check.STEPS), summary
    assert all(status.startswith("ok") for _, status in ran), summary
    assert "steps failed: none" in summary
