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


# ---- Ahead-of-time compilation for Hopper on a machine without a GPU (test_kernel_compile_sm90.py) ----------------
# The launchers run on CPU tensors with a GPU's choices of block sizes and splits (their gpu_sms answers an H100's
# count); each launch is recorded instead of run, specialized as Triton would on a GPU (dtypes, 16-byte alignment,
# ints equal to 1) and compiled for sm_90; the ptxas that Triton ships reports registers, spills and stack.
H100_SMS = 132
H100_SMEM = 232448  # bytes of shared memory one block may use on sm_90 (227 KB)


def sm90_toolchain_missing() -> str | None:
    """Why kernels cannot be compiled for sm_90 here (Triton's CUDA backend or its ptxas absent), else None."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        path = get_ptxas(90).path
    except Exception as e:  # noqa: BLE001 (any failure to find the backend means the same: skip)
        return f"Triton's CUDA backend is unavailable: {e!r}"
    return None if path and os.path.isfile(path) else "Triton's ptxas is missing"


def record_launches(launch) -> list:
    """Runs launch() with every Triton kernel launch recorded, not run: [(jit function, args, kwargs)]. The kernel
    modules' gpu_sms answers H100_SMS, so the launchers pick their GPU block sizes for CPU tensors."""
    import sys
    from unittest import mock

    from triton.runtime.jit import JITFunction

    calls = []
    mods = [m for name, m in list(sys.modules.items()) if name.startswith("args_engine.kernels.")
            and hasattr(m, "gpu_sms")]
    with mock.patch.object(JITFunction, "run", lambda self, *a, grid, warmup, **kw: calls.append((self, a, kw))):
        patches = [mock.patch.object(m, "gpu_sms", lambda t: H100_SMS) for m in mods]
        for p in patches:
            p.start()
        try:
            launch()
        finally:
            for p in patches:
                p.stop()
    return calls


def specialize_sm90(fn, args, kwargs) -> tuple[str, tuple]:
    """One recorded launch as Triton specializes it for sm_90 -> (a readable key naming its constexprs and
    pointer types, the arguments of compile_sm90); equal keys compile to the same code."""
    import hashlib

    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    consts = ",".join(f"{fn.arg_names[i[0]]}={getattr(v, '__name__', v)}" for i, v in sorted(constexprs.items()))
    ptrs = ",".join(f"{k}:{v[1:]}" for k, v in signature.items() if v.startswith("*"))
    aligned = hashlib.sha1(str(sorted((k, str(v)) for k, v in attrs.items())).encode()).hexdigest()[:8]
    key = f"{fn.__name__}[w{options.num_warps},fusion={int(options.enable_fp_fusion)},attrs {aligned}]({consts}|{ptrs})"
    return key, (fn, signature, constexprs, attrs, options.__dict__)


def compile_sm90(fn, signature, constexprs, attrs, options) -> dict:
    """Compiles a specialized launch for sm_90 -> {kernel, regs, spill_stores, spill_loads, stack (bytes of
    local-memory frame per thread), smem (bytes), ptx}."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              options=options)
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/k.ptx", "w") as f:
            f.write(ptx)
        fmad = [] if options["enable_fp_fusion"] else ["--fmad=false"]  # as Triton's own ptxas call
        log = subprocess.run([get_ptxas(90).path, "-v", *fmad, "--gpu-name=sm_90a", f"{d}/k.ptx", "-o", f"{d}/k.o"],
                             capture_output=True, text=True, check=True).stderr

    def num(pattern):
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return dict(kernel=fn.__name__, regs=num(r"Used (\d+) registers"), spill_stores=num(r"(\d+) bytes spill stores"),
                spill_loads=num(r"(\d+) bytes spill loads"), stack=num(r"(\d+) bytes stack frame"),
                smem=int(compiled.metadata.shared), ptx=ptx, ttir=compiled.asm["ttir"])
