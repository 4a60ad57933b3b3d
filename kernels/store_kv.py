"""store_kv: write one token's key/value rows into paged caches by slot (slot = block * block_size + offset)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensors_on_one_device
from .refs import store_kv_ref  # noqa: F401  (re-exported: the kernel's oracle)


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, kc_ptr, vc_ptr, slot_ptr, sk_n, sk_h, sv_n, sv_h,
                     HD, D: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + i)  # int64
    if slot >= 0:  # -1: padding or a token whose K/V must not be kept
        for o in range(0, HD, BLOCK):
            e = o + tl.arange(0, BLOCK)
            ok = e < HD
            hh = e // D
            dd = e % D
            kx = tl.load(key_ptr + i * sk_n + hh * sk_h + dd, mask=ok)
            vx = tl.load(value_ptr + i * sv_n + hh * sv_h + dd, mask=ok)
            tl.store(kc_ptr + slot * HD + e, kx, mask=ok)  # cache is contiguous: a slot is H * D elements
            tl.store(vc_ptr + slot * HD + e, vx, mask=ok)


def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write key/value [N, H, D] into caches [NB, BS, H, D] at slot_mapping [N] int64 (-1 skips).
    Slots must be < NB * BS (not checked: it would need a device sync)."""
    named = dict(key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)
    check_tensors_on_one_device("key", **named)
    if key.dim() != 3:
        raise ValueError(f"key must be [N, H, D], got shape {tuple(key.shape)}")
    N, H, D = key.shape
    if tuple(value.shape) != (N, H, D):
        raise ValueError(f"value must have shape {(N, H, D)}, got {tuple(value.shape)}")
    if key_cache.dim() != 4 or tuple(key_cache.shape[2:]) != (H, D):
        raise ValueError(f"key_cache must be [num_blocks, block_size, {H}, {D}], got {tuple(key_cache.shape)}")
    if tuple(value_cache.shape) != tuple(key_cache.shape):
        raise ValueError(f"value_cache shape {tuple(value_cache.shape)} != key_cache shape {tuple(key_cache.shape)}")
    for name in ("value", "key_cache", "value_cache"):
        if named[name].dtype != key.dtype:
            raise ValueError(f"{name} dtype {named[name].dtype} != key dtype {key.dtype}")
    for name in ("key_cache", "value_cache"):
        if not named[name].is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    for name in ("key", "value"):
        if named[name].stride(2) != 1:
            raise ValueError(f"{name} must be contiguous along the head dim (stride(2) == 1)")
    if slot_mapping.dtype != torch.int64 or tuple(slot_mapping.shape) != (N,):
        raise ValueError(f"slot_mapping must be int64 [N={N}], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    if not slot_mapping.is_contiguous():
        raise ValueError("slot_mapping must be contiguous")
    if N == 0 or H * D == 0:
        return
    HD = H * D
    BLOCK = min(triton.next_power_of_2(HD), 4096)
    _store_kv_kernel[(N,)](key, value, key_cache, value_cache, slot_mapping, key.stride(0), key.stride(1),
                           value.stride(0), value.stride(1), HD, D=D, BLOCK=BLOCK, num_warps=4)
