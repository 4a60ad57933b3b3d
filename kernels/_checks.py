"""What the kernels and their launchers share: input checks, cached scalar arguments, the soft cap, the paged
K/V tile load."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def check_tensors_on_one_device(ref_name: str, **named) -> None:
    """Every value is a tensor on the device of named[ref_name]; the error names the first that is not."""
    ref = named[ref_name]
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on device {t.device} but {ref_name} is on {ref.device}: "
                             "all tensors must share one device")


def gpu_sms(t: torch.Tensor) -> int | None:
    """The multiprocessor count of t's GPU, None off a GPU: the launchers choose block sizes and splits from it
    (the interpreter wants few, big programs; tests compiling for sm_90 on CPU pass a GPU's count)."""
    return torch.cuda.get_device_properties(t.device).multi_processor_count if t.is_cuda else None


_SCALES: dict[tuple, torch.Tensor] = {}


def scale_tensor(scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The softmax scale as a [1] tensor in the accumulator dtype, made once per (scale, dtype, device): an
    allocation per layer call would be a launch each (and memory a CUDA graph must hold)."""
    key = (scale, dtype, device)
    t = _SCALES.get(key)
    if t is None:
        t = _SCALES[key] = torch.full((1,), scale, dtype=dtype, device=device)
    return t


@triton.jit
def soft_cap(x, cap):
    """Gemma 2's score cap: cap * tanh(x / cap), tanh written with exp (no libdevice call under the interpreter)."""
    return cap * (1.0 - 2.0 / (tl.exp(2.0 * x / cap) + 1.0))


@triton.jit
def load_kv_tile(kc_ptr, vc_ptr, table_ptr, pos, p_ok, kvh, d, d_ok, BS, row_stride, D: tl.constexpr):
    """The keys and values [BLOCK_N, DP] of positions `pos` (valid where p_ok) of one kv head, read through a
    sequence's block table from caches [NB, BS, HKV, D] (one slot = row_stride elements)."""
    blk = tl.load(table_ptr + pos // BS, mask=p_ok, other=0)  # physical block of each position
    slot = blk.to(tl.int64) * BS + pos % BS
    off = slot[:, None] * row_stride + kvh * D + d[None, :]
    ok = p_ok[:, None] & d_ok[None, :]
    return tl.load(kc_ptr + off, mask=ok, other=0.0), tl.load(vc_ptr + off, mask=ok, other=0.0)
