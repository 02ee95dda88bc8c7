"""Installs the CUDA stand-in of tests/fake_cuda.py in every Python process started with
``LMF_FAKE_CUDA=<count>[,<free GiB>]`` and this folder on ``PYTHONPATH`` (tests only)."""
import os
import sys

if os.environ.get("LMF_FAKE_CUDA"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fake_cuda import FakeCuda

    _count, _, _free = os.environ["LMF_FAKE_CUDA"].partition(",")
    FakeCuda(int(_count), float(_free or 60)).install_for_process()
