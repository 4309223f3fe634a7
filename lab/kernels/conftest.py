"""Set-up of the lab's kernel tests (``python -m pytest lab/kernels``; not part of CI): without a CUDA
GPU the Triton kernels run in the interpreter, so ``TRITON_INTERPRET=1`` is set before triton loads."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
