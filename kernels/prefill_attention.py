"""prefill_attention: causal attention for a step's prefill chunks, reading every key and value from the paged
cache (the chunks' own K/V are stored before it runs), in one launch for all chunks.

Chunk p holds n_p query tokens at positions start_p .. start_p + n_p - 1 of its sequence; query i attends to
positions 0 .. start_p + i. One program per (chunk, tile of BLOCK_M queries, query head) walks that sequence's
blocks through its block table with an online softmax, so no prefix is gathered into a contiguous copy and no
boolean mask is built: the causal bound is computed per tile. Replaces the per-chunk Python loop (a gather and
an SDPA with an explicit mask per chunk and layer)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensors_on_one_device, gpu_sms, load_kv_tile, scale_tensor, soft_cap


@triton.jit
def _prefill_attention_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, cu_ptr, start_ptr, out_ptr, scale_ptr, cap,
                              sq_n, sq_h, so_n, so_h, s_bt, HKV, BS,
                              GROUP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, CAP: tl.constexpr):
    p = tl.program_id(0)
    mt = tl.program_id(1)
    h = tl.program_id(2)
    kvh = h // GROUP
    q0 = tl.load(cu_ptr + p)
    n = tl.load(cu_ptr + p + 1) - q0
    start = tl.load(start_ptr + p)
    m = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the chunk
    row = (q0 + m).to(tl.int64)  # token row in q / out: N x Hq x D can pass 2^31 in one step
    m_ok = m < n
    d = tl.arange(0, DP)
    d_ok = d < D
    q = tl.load(q_ptr + row[:, None] * sq_n + h * sq_h + d[None, :], mask=m_ok[:, None] & d_ok[None, :],
                other=0.0)  # [BLOCK_M, DP]
    q_pos = start + m
    scale = tl.load(scale_ptr)
    row_stride = HKV * D
    mx = tl.full([BLOCK_M], float("-inf"), ACC)
    l = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, DP], ACC)
    end = tl.minimum(start + n, start + (mt + 1) * BLOCK_M)  # keys past the tile's last query are masked anyway
    end = tl.where(mt * BLOCK_M < n, end, 0)  # a tile past a short chunk's end: nothing to do
    nn = tl.arange(0, BLOCK_N)
    for s0 in range(0, end, BLOCK_N):
        pos = s0 + nn
        p_ok = pos < end
        kt, vt = load_kv_tile(kc_ptr, vc_ptr, bt_ptr + p * s_bt, pos, p_ok, kvh, d, d_ok, BS, row_stride, D)
        sc = tl.dot(q, tl.trans(kt), out_dtype=ACC, input_precision=PREC) * scale  # [BLOCK_M, BLOCK_N]
        if CAP:
            sc = soft_cap(sc, cap)
        keep = p_ok[None, :] & (pos[None, :] <= q_pos[:, None])
        sc = tl.where(keep, sc, float("-inf"))
        m_new = tl.maximum(mx, tl.max(sc, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows past n see no key
        alpha = tl.exp(mx - m_safe)
        pr = tl.exp(sc - m_safe[:, None])
        l = l * alpha + tl.sum(pr, axis=1)
        acc = acc * alpha[:, None] + tl.dot(pr.to(vt.dtype), vt, out_dtype=ACC, input_precision=PREC)
        mx = m_new
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(out_ptr + row[:, None] * so_n + h * so_h + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


_TL = {torch.float32: tl.float32, torch.float64: tl.float64}


def prefill_tiles(dtype: torch.dtype, D: int, max_chunk: int, sms: int | None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a launch; sms: the GPU's multiprocessor count, None under the interpreter
    (which pays per op, not per element: big key tiles). On a GPU (sm_90, checked by test_kernel_compile_sm90):
    half types take [64, 64] tiles (tensor cores; D = 256 keys in 32s, or the tile spills); fp32 / fp64 run the
    dots as FMA loops ("ieee"), whose operands live in registers: [64, 64] x D = 128 fp32 needs kilobytes of local
    memory per thread, so they take [16, 32] tiles ([16, 16] for fp64, or D > 128)."""
    small = max_chunk <= 16
    if sms is None:
        return (16 if small else 32), 128, 4
    if dtype in (torch.float16, torch.bfloat16):
        return (16 if small else 64), (32 if D > 128 else 64), 4
    return 16, (16 if dtype == torch.float64 or D > 128 else 32), 4


def prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, cu_seqlens: torch.Tensor, starts: torch.Tensor, max_chunk: int,
                      scale: float, softcap: float | None = None) -> torch.Tensor:
    """q [N, Hq, D] (the chunks' queries, concatenated), caches [NB, BS, Hkv, D] holding every position up to
    each chunk's end, block_tables [P, MB] int32, cu_seqlens [P + 1] int32 (chunk offsets in q), starts [P]
    int32 (each chunk's first position), max_chunk: the longest chunk (a host int, so no sync), softcap: Gemma 2's
    score cap (None: off) -> [N, Hq, D]."""
    check_tensors_on_one_device("q", q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                                cu_seqlens=cu_seqlens, starts=starts)
    if q.dim() != 3 or key_cache.dim() != 4 or tuple(value_cache.shape) != tuple(key_cache.shape):
        raise ValueError(f"q must be [N, Hq, D] and the caches [NB, BS, Hkv, D], got {tuple(q.shape)}, "
                         f"{tuple(key_cache.shape)}, {tuple(value_cache.shape)}")
    N, Hq, D = q.shape
    NB, BS, Hkv, Dc = key_cache.shape
    if Dc != D or Hq % Hkv or not key_cache.is_contiguous() or not value_cache.is_contiguous():
        raise ValueError(f"cache head dim {Dc} vs q {D}, q heads {Hq} vs kv heads {Hkv}: contiguous caches with "
                         "the same head dim and a whole GQA group are required")
    if q.stride(2) != 1:
        raise ValueError("q must be contiguous along the head dim")
    for name, t in (("block_tables", block_tables), ("cu_seqlens", cu_seqlens), ("starts", starts)):
        if t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {t.dtype}")
    if starts.dim() != 1 or block_tables.dim() != 2:
        raise ValueError(f"starts must be [P] and block_tables [P, MB], got {tuple(starts.shape)} and "
                         f"{tuple(block_tables.shape)}")
    P = starts.shape[0]
    if cu_seqlens.shape != (P + 1,) or block_tables.shape[0] != P:
        raise ValueError(f"cu_seqlens must be [P + 1] and block_tables [P, MB] for P = {P} chunks")
    # the kernel reads table entries at + i and the offsets at + p: any other stride reads other values
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables must be contiguous along its last dim (stride(1) == 1)")
    if not cu_seqlens.is_contiguous() or not starts.is_contiguous():
        raise ValueError("cu_seqlens and starts must be contiguous")
    out = torch.empty_like(q)
    if N == 0 or P == 0:
        return out
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale_t = scale_tensor(float(scale), acc, q.device)
    BLOCK_M, BLOCK_N, nw = prefill_tiles(q.dtype, D, max_chunk, gpu_sms(q))
    grid = (P, triton.cdiv(max(max_chunk, 1), BLOCK_M), Hq)
    _prefill_attention_kernel[grid](
        q, key_cache, value_cache, block_tables, cu_seqlens, starts, out, scale_t, float(softcap or 1.0),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0), Hkv, BS,
        GROUP=Hq // Hkv, D=D, DP=max(16, triton.next_power_of_2(D)), BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N, ACC=_TL[acc],
        PREC="ieee" if q.dtype in (torch.float32, torch.float64) else None, CAP=softcap is not None, num_warps=nw)
    return out
