"""rope_qkv: rotary embedding of q and k fused with the K/V cache store, in one launch per layer.

It takes q, k, v as the layer's projection leaves them (strided views of the fused qkv matmul, or the outputs of
Qwen3's per-head norms), rotates q and k with HF's rotate-half RoPE from a cos / signed-sin table read at each
token's row, writes contiguous q, k, v for attention and, where slots are given, stores k and v into the paged
caches. On the torch path the same work is a gather of cos and sin, five elementwise ops, three copies to make
q, k, v contiguous and the store: about ten passes per layer against one here.

Rotation, per head: out[d] = x[d] * cos[d] + x[(d + D/2) % D] * signed_sin[d], signed_sin = (-sin[:D/2],
sin[D/2:]): rotate_half(x) * sin with only signs moved, the formula the torch path runs (bit for bit on CPU)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensors_on_one_device


@triton.jit
def _rope_heads(src_ptr, s_n, s_h, dst_ptr, i, H, c, s, d, ok_d, HP: tl.constexpr, D: tl.constexpr):
    """Rotate the H heads [HP, DP] of token i (rows strided by s_h) -> dst [H, D] contiguous; returns them."""
    hh = tl.arange(0, HP)
    ok = (hh < H)[:, None] & ok_d[None, :]
    row = src_ptr + i * s_n + hh[:, None] * s_h
    x = tl.load(row + d[None, :], mask=ok, other=0.0)
    x_rolled = tl.load(row + ((d + D // 2) % D)[None, :], mask=ok, other=0.0)
    y = x * c[None, :] + x_rolled * s[None, :]
    tl.store(dst_ptr + (i * H + hh[:, None]) * D + d[None, :], y, mask=ok)
    return y, hh, ok


@triton.jit
def _rope_qkv_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, row_ptr, qo_ptr, ko_ptr, vo_ptr, kc_ptr, vc_ptr,
                     slot_ptr, sq_n, sq_h, sk_n, sk_h, sv_n, sv_h, s_tab, HQ, HKV,
                     D: tl.constexpr, DP: tl.constexpr, HQP: tl.constexpr, HKP: tl.constexpr, STORE: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)  # one token: all its q, k and v heads
    d = tl.arange(0, DP)
    ok_d = d < D
    row = tl.load(row_ptr + i).to(tl.int64)
    c = tl.load(cos_ptr + row * s_tab + d, mask=ok_d, other=0.0)
    s = tl.load(sin_ptr + row * s_tab + d, mask=ok_d, other=0.0)
    _rope_heads(q_ptr, sq_n, sq_h, qo_ptr, i, HQ, c, s, d, ok_d, HQP, D)
    k, hh, ok = _rope_heads(k_ptr, sk_n, sk_h, ko_ptr, i, HKV, c, s, d, ok_d, HKP, D)
    v = tl.load(v_ptr + i * sv_n + hh[:, None] * sv_h + d[None, :], mask=ok, other=0.0)
    tl.store(vo_ptr + (i * HKV + hh[:, None]) * D + d[None, :], v, mask=ok)
    if STORE:
        slot = tl.load(slot_ptr + i)
        if slot >= 0:  # -1: padding or a token whose K/V must not be kept
            dst = (slot * HKV + hh[:, None]) * D + d[None, :]
            tl.store(kc_ptr + dst, k, mask=ok)
            tl.store(vc_ptr + dst, v, mask=ok)


def rope_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor,
             rows: torch.Tensor, key_cache: torch.Tensor | None = None, value_cache: torch.Tensor | None = None,
             slots: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
             v_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [N, Hq, D], k, v [N, Hkv, D] (heads and rows may be strided, the head dim contiguous); cos, signed_sin
    [P, D] or [P, 1, D] (rope_tables' layout); rows [N] int32/int64: each token's row of the tables (its position, or
    its index for per-forward tables). With key_cache / value_cache [NB, BS, Hkv, D] and slots [N] int64 (-1
    skips): k (rotated) and v are stored there too. k_out, v_out: contiguous [N, Hkv, D] to write into (the
    caller's stacked candidate K/V), else new. -> (rotated q, rotated k, v), contiguous."""
    named = dict(q=q, k=k, v=v, cos=cos, signed_sin=signed_sin, rows=rows)
    store = slots is not None
    if store:
        named.update(key_cache=key_cache, value_cache=value_cache, slots=slots)
    check_tensors_on_one_device("q", **named)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [N, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    N, Hq, D = q.shape
    Hkv = k.shape[1]
    if tuple(k.shape) != (N, Hkv, D) or tuple(v.shape) != (N, Hkv, D):
        raise ValueError(f"k and v must be [{N}, Hkv, {D}], got {tuple(k.shape)}, {tuple(v.shape)}")
    if D % 2:
        raise ValueError(f"the head dim must be even for rotate-half RoPE, got {D}")
    for name in ("q", "k", "v"):
        t = named[name]
        if t.stride(2) != 1:
            raise ValueError(f"{name} must be contiguous along the head dim (stride(2) == 1)")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} != q dtype {q.dtype}")
    cos2, sin2 = cos.reshape(cos.shape[0], -1), signed_sin.reshape(signed_sin.shape[0], -1)
    if cos2.shape[1] != D or sin2.shape != cos2.shape or cos2.stride(1) != 1 or sin2.stride() != cos2.stride():
        raise ValueError(f"cos and signed_sin must be [P, {D}] (or [P, 1, {D}]) alike, contiguous along D; got "
                         f"{tuple(cos.shape)} and {tuple(signed_sin.shape)}")
    if cos2.dtype != q.dtype or sin2.dtype != q.dtype:
        raise ValueError(f"cos/sin dtype {cos2.dtype} != q dtype {q.dtype}")
    if rows.dtype not in (torch.int32, torch.int64) or tuple(rows.shape) != (N,) or not rows.is_contiguous():
        raise ValueError(f"rows must be contiguous int32 or int64 [N={N}], got {rows.dtype} {tuple(rows.shape)}")
    if store:
        if key_cache.dim() != 4 or tuple(key_cache.shape[2:]) != (Hkv, D) or value_cache.shape != key_cache.shape:
            raise ValueError(f"key_cache and value_cache must be [num_blocks, block_size, {Hkv}, {D}], got "
                             f"{tuple(key_cache.shape)} and {tuple(value_cache.shape)}")
        if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
            raise ValueError("key_cache and value_cache must be contiguous")
        if key_cache.dtype != q.dtype or value_cache.dtype != q.dtype:
            raise ValueError(f"cache dtype {key_cache.dtype} != q dtype {q.dtype}")
        if slots.dtype != torch.int64 or tuple(slots.shape) != (N,) or not slots.is_contiguous():
            raise ValueError(f"slots must be contiguous int64 [N={N}], got {slots.dtype} {tuple(slots.shape)}")
    outs = []
    for name, given in (("k_out", k_out), ("v_out", v_out)):
        if given is not None and (tuple(given.shape) != (N, Hkv, D) or not given.is_contiguous()
                                  or given.dtype != q.dtype or given.device != q.device):
            raise ValueError(f"{name} must be contiguous [{N}, {Hkv}, {D}] {q.dtype} on {q.device}")
        outs.append(given if given is not None else torch.empty((N, Hkv, D), dtype=q.dtype, device=q.device))
    q_out = torch.empty((N, Hq, D), dtype=q.dtype, device=q.device)
    k_out, v_out = outs
    if N:
        kc, vc, sl = (key_cache, value_cache, slots) if store else (q_out, q_out, rows)  # unread when not STORE
        _rope_qkv_kernel[(N,)](q, k, v, cos2, sin2, rows, q_out, k_out, v_out, kc, vc, sl, q.stride(0),
                               q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos2.stride(0), Hq,
                               Hkv, D=D, DP=triton.next_power_of_2(D), HQP=triton.next_power_of_2(Hq),
                               HKP=triton.next_power_of_2(Hkv), STORE=store, num_warps=4)
    return q_out, k_out, v_out


def rope_qkv_ref(q, k, v, cos, signed_sin, rows, key_cache=None, value_cache=None, slots=None):
    """The kernel's contract in torch."""
    from .refs import store_kv_ref
    c = cos.reshape(cos.shape[0], 1, -1)[rows]  # [N, 1, D]
    s = signed_sin.reshape(signed_sin.shape[0], 1, -1)[rows]
    half = q.shape[-1] // 2
    q_rot = q * c + q.roll(half, dims=-1) * s
    k_rot = k * c + k.roll(half, dims=-1) * s
    if slots is not None:
        store_kv_ref(k_rot, v, key_cache, value_cache, slots)
    return q_rot.contiguous(), k_rot.contiguous(), v.contiguous()
