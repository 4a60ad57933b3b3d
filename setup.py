"""Builds args_engine._C (C++ always; CUDA sources too when torch has CUDA and nvcc exists, unless
ARGS_ENGINE_SKIP_CUDA=1). Install torch first, then: pip install --no-build-isolation -e ."""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

cpp_sources = sorted(glob.glob("csrc/*.cpp"))
cuda_sources = sorted(glob.glob("csrc/*.cu"))
use_cuda = (bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
            and os.environ.get("ARGS_ENGINE_SKIP_CUDA") != "1")
if use_cuda:
    # Arch: TORCH_CUDA_ARCH_LIST when set; else torch targets the visible GPU, or sm_90 when none is
    # visible (torch's own fallback would build every arch it knows). No --use_fast_math: the cache
    # ops only move data and must stay bit-exact.
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    ext = CUDAExtension("args_engine._C", cpp_sources + cuda_sources, define_macros=[("ARGS_ENGINE_CUDA", "1")],
                        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]})
else:
    ext = CppExtension("args_engine._C", cpp_sources, extra_compile_args=["-O3"])

# Packages are found, not listed; the repo's kernels/ ships as args_engine.kernels (a top-level `kernels`
# would be taken for the Hugging Face `kernels` package, which transformers probes).
packages = sorted(set(find_packages(include=["args_engine", "args_engine.*"])) | {"args_engine.kernels"})

setup(
    packages=packages,
    package_dir={"args_engine.kernels": "kernels"},
    package_data={"args_engine": ["assets/*.safetensors", "assets/*.json"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
