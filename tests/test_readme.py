"""The README's commands: mirrored in .ci/readme_commands.py (which runs them in a fresh clone),
and install lines that are right on any machine."""
from __future__ import annotations

import importlib.util
import re

from conftest import ROOT


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            cmd = line.split("  #")[0].strip()
            if cmd:
                out.append(cmd)
    return out


def _ci():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_readme_command_is_covered_by_the_fresh_clone_check():
    ci = _ci()
    missing = [c for c in _commands() if c not in ci.ALL]
    assert not missing, f"README commands not in .ci/readme_commands.py: {missing}"
    stale = sorted(ci.ALL - set(_commands()))
    assert not stale, f".ci/readme_commands.py lists commands the README no longer has: {stale}"
    assert "python .ci/readme_commands.py" in (ROOT / ".ci" / "run").read_text()


def test_install_lines_are_right_for_cpu_and_cuda_machines():
    cmds = _commands()
    torch_lines = [c for c in cmds if c.startswith("pip install torch")]
    # PyTorch's own instructions: the CPU index for CPU-only machines, a CUDA index for GPUs;
    # a pinned plain "pip install torch==X" pulls the multi-GB CUDA build from PyPI on Linux
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in torch_lines
    assert any(re.fullmatch(r"pip install torch --index-url https://download\.pytorch\.org/whl/cu\d+", c)
               for c in torch_lines)
    assert not any("==" in c for c in torch_lines), torch_lines
    req = (ROOT / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in req and "torch==2.13.0" not in req
    assert 'pip install -q "torch==2.13.0"' in (ROOT / ".ci" / "run").read_text()  # the local CPU wheel here
