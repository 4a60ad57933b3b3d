"""Shared parametrization of the Triton kernel tests: the interpreter on CPU without CUDA, compiled on CUDA."""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (device, dtype) pairs: float16/float32/float64 under the interpreter, half types and float32 compiled on a GPU.
CPU_CASES = [("cpu", torch.float16), ("cpu", torch.float32), ("cpu", torch.float64)]
CUDA_CASES = [("cuda", torch.float16), ("cuda", torch.bfloat16), ("cuda", torch.float32)]


def device_dtype_params():
    params = []
    for dev, dt in CPU_CASES:
        marks = [] if INTERPRET else [pytest.mark.skip(reason="CPU tensors need TRITON_INTERPRET=1 (set without CUDA)")]
        params.append(pytest.param(dev, dt, id=f"{dev}-{str(dt)[6:]}", marks=marks))
    for dev, dt in CUDA_CASES:
        marks = [] if HAS_CUDA and not INTERPRET else [pytest.mark.skip(reason="needs CUDA")]
        params.append(pytest.param(dev, dt, id=f"{dev}-{str(dt)[6:]}", marks=marks))
    return params


def devices():
    """One device per kernel run: the interpreter on CPU, or CUDA when present."""
    return ["cuda"] if HAS_CUDA and not INTERPRET else ["cpu"]


def tol(dtype):
    return {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
