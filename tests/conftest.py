"""Shared set-up of the whole suite (loaded before any test module).

* Without a CUDA GPU the Triton kernels run in the interpreter: ``TRITON_INTERPRET=1`` is set here,
  once, before anything imports triton.
* ``@pytest.mark.gpu`` tests need a CUDA GPU; on the CPU they are skipped with the reason shown.
  On a GPU machine they run from ``lab/gpu/checks.sh`` (``pytest -m gpu``).
* ``@pytest.mark.slow`` marks tests over ~20 s on 2 CPU cores (deselect with ``-m "not slow"``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: bash lab/gpu/checks.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
