"""``dcr.environment`` of a part file: provenance's torch-free part plus the torch side."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from dcr.prereg import provenance
from dcr.producers.runner import measurement_environment


def test_environment_adds_torch_triton_cuda_and_gpu_to_provenance():
    env = measurement_environment()
    base = provenance.environment()
    assert {k: env[k] for k in base} == base
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda
    if torch.cuda.is_available():
        assert env["gpu"] == torch.cuda.get_device_name(torch.cuda.current_device())
        assert env["gpu_count"] == torch.cuda.device_count() and "driver" in env
    else:
        assert env["gpu"] is None and "driver" not in env
    json.dumps(env)  # it is stored as JSON file metadata


def test_environment_without_torch_records_it_missing():
    code = ("import json, sys\n"
            "sys.modules['torch'] = None\n"
            "from dcr.producers.runner import measurement_environment\n"
            "print(json.dumps(measurement_environment()))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    env = json.loads(r.stdout)
    assert {env[k] for k in ("torch", "triton", "cuda", "gpu")} == {None}
    assert env["python"] and "git_commit" in env
