"""topk_logprobs: the k most likely tokens of each row of logits and their log-probabilities, in one pass.

Each program streams its part of a row block by block, keeping an online max / sum-exp (for the
log-sum-exp) and a running top-k buffer. A block only touches the buffer when one of its elements beats
the buffer's current worst entry, which after the first blocks is rare, so the cost is one read of the
row. Small batches split each row over several programs (flash-decoding style) and a second, tiny launch
merges the partial results; large batches use one program per row and one launch.

Order: descending log-prob, ties broken by the lower token id (refs.topk_logprobs_ref: every path's rule). NaN logits
count as -inf, on every path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import gpu_sms
from .refs import topk_logprobs_ref  # noqa: F401  (this kernel's oracle: one torch top-k, one tie rule)

MAX_K = 64
_INT_BIG = tl.constexpr(2147483647)  # jitted code may only read constexpr globals


@triton.jit
def _worst(buf_v, buf_i, valid):
    # The entry a better candidate replaces: lowest value, and among equal values the highest index.
    wv = tl.min(tl.where(valid, buf_v, float("inf")), axis=0)
    wi = tl.max(tl.where(valid & (buf_v == wv), buf_i, -1), axis=0)
    return wv, wi


@triton.jit
def _merge_block(buf_v, buf_i, valid, x, xi, live):
    """Insert the elements of a block (x [BLOCK], ids xi [BLOCK], live mask) into the top-k buffer [KP]."""
    wv, wi = _worst(buf_v, buf_i, valid)
    cand = live & ((x > wv) | ((x == wv) & (xi < wi)))
    n = tl.sum(cand.to(tl.int32), axis=0)
    # One iteration per insertion: the k-th best rises fast, so later blocks rarely enter the loop at all.
    while n > 0:
        bv = tl.max(tl.where(cand, x, float("-inf")), axis=0)
        bi = tl.min(tl.where(cand & (x == bv), xi, _INT_BIG), axis=0)
        at = valid & (buf_v == wv) & (buf_i == wi)
        buf_v = tl.where(at, bv, buf_v)
        buf_i = tl.where(at, bi, buf_i)
        wv, wi = _worst(buf_v, buf_i, valid)
        cand = cand & (xi != bi) & ((x > wv) | ((x == wv) & (xi < wi)))
        n = tl.sum(cand.to(tl.int32), axis=0)
    return buf_v, buf_i


@triton.jit
def _store_sorted(buf_v, buf_i, valid, lse, out_v_ptr, out_i_ptr):
    # Rank of each entry = how many valid entries beat it; a [KP, KP] comparison is cheap for KP <= 64.
    vr = buf_v[:, None]
    ir = buf_i[:, None]
    vc = buf_v[None, :]
    ic = buf_i[None, :]
    beats = ((vc > vr) | ((vc == vr) & (ic < ir))) & valid[None, :]  # [KP, KP]: column c beats row r
    rank = tl.sum(beats.to(tl.int32), axis=1)  # [KP]
    tl.store(out_v_ptr + rank, buf_v - lse, mask=valid)
    tl.store(out_i_ptr + rank, buf_i.to(tl.int64), mask=valid)


@triton.jit
def _topk_logprobs_kernel(logits_ptr, stride_b, V, chunk, k,
                          out_v_ptr, out_i_ptr,                               # [B, k] final outputs
                          part_m_ptr, part_s_ptr, part_v_ptr, part_i_ptr,     # [B, S], [B, S], [B, S, KP] x2
                          ACC: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, SPLIT: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    start = s * chunk
    end = tl.minimum(start + chunk, V)
    row = logits_ptr + b.to(tl.int64) * stride_b
    slots = tl.arange(0, KP)
    valid = slots < k
    buf_v = tl.full([KP], float("-inf"), ACC)
    buf_i = V + slots  # distinct sentinel ids above every real id, so real -inf logits still beat them
    m = tl.max(tl.full([BLOCK], float("-inf"), ACC), axis=0)  # running max (a scalar of type ACC)
    sexp = tl.sum(tl.zeros([BLOCK], ACC), axis=0)  # running sum of exp(x - m)
    offs = tl.arange(0, BLOCK)
    for off in range(start, end, BLOCK):
        idx = off + offs
        live = idx < end
        x = tl.load(row + idx, mask=live, other=float("-inf")).to(ACC)  # [BLOCK]
        x = tl.where(x == x, x, float("-inf"))  # NaN logits count as -inf: never a candidate, no mass
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: avoid (-inf) - (-inf)
        sexp = sexp * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        m = m_new
        buf_v, buf_i = _merge_block(buf_v, buf_i, valid, x, idx, live)
    if SPLIT:
        p = b * tl.num_programs(1) + s
        tl.store(part_m_ptr + p, m)
        tl.store(part_s_ptr + p, sexp)
        tl.store(part_v_ptr + p * KP + slots, buf_v)
        tl.store(part_i_ptr + p * KP + slots, buf_i)
    else:
        lse = m + tl.log(sexp)
        _store_sorted(buf_v, buf_i, valid, lse, out_v_ptr + b * k, out_i_ptr + b * k)


@triton.jit
def _topk_merge_kernel(part_m_ptr, part_s_ptr, part_v_ptr, part_i_ptr, S, V, k, out_v_ptr, out_i_ptr,
                       ACC: tl.constexpr, SP: tl.constexpr, KP: tl.constexpr):
    b = tl.program_id(0)
    sp = tl.arange(0, SP)
    pm = tl.load(part_m_ptr + b * S + sp, mask=sp < S, other=float("-inf"))  # [SP]
    ps = tl.load(part_s_ptr + b * S + sp, mask=sp < S, other=0.0)
    mx = tl.max(pm, axis=0)
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    lse = mx + tl.log(tl.sum(ps * tl.exp(pm - mx_safe), axis=0))
    slots = tl.arange(0, KP)
    valid = slots < k
    e = tl.arange(0, SP * KP)  # every split's buffer at once: [S * KP] (flattened)
    e_s = e // KP
    live = (e_s < S) & ((e % KP) < k)
    x = tl.load(part_v_ptr + b * S * KP + e, mask=live, other=float("-inf"))
    xi = tl.load(part_i_ptr + b * S * KP + e, mask=live, other=_INT_BIG)
    live = live & (xi < V)  # a short split's sentinels would collide with ours
    buf_v = tl.full([KP], float("-inf"), ACC)
    buf_i = V + slots
    buf_v, buf_i = _merge_block(buf_v, buf_i, valid, x, xi, live)
    _store_sorted(buf_v, buf_i, valid, lse, out_v_ptr + b * k, out_i_ptr + b * k)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_TL = {torch.float32: tl.float32, torch.float64: tl.float64}


def topk_logprobs(logits: torch.Tensor, k: int, split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (log p of the top-k tokens [B, k], their ids [B, k] int64), highest first.

    Output is float64 for float64 logits, else float32. `split` (programs per row) defaults to a heuristic."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a 2-D tensor [B, V], got {getattr(logits, 'shape', type(logits))}")
    if logits.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"logits must be float16/bfloat16/float32/float64, got {logits.dtype}")
    B, V = logits.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an int in [1, {MAX_K}], got {k!r}")
    if k > V:
        raise ValueError(f"k ({k}) must not exceed the vocabulary size V ({V})")
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along V (stride(1) == 1)")
    acc = _acc_dtype(logits.dtype)
    out_v = torch.empty(B, k, dtype=acc, device=logits.device)
    out_i = torch.empty(B, k, dtype=torch.int64, device=logits.device)
    if B == 0:
        return out_v, out_i
    KP = max(2, triton.next_power_of_2(k))
    sms = gpu_sms(logits)
    cap = 2048 if sms else 8192  # the interpreter pays per op, not per element: big blocks on CPU
    if split is None:
        split = max(1, min(triton.cdiv(2 * sms, B), triton.cdiv(V, 4 * cap), 64)) if sms else 1
    split = max(1, min(int(split), triton.cdiv(V, 16)))
    chunk = triton.cdiv(triton.cdiv(V, split), 16) * 16  # aligned starts
    split = triton.cdiv(V, chunk)
    BLOCK = min(triton.next_power_of_2(chunk), cap)
    nw = 8 if sms else 4
    if split == 1:
        _topk_logprobs_kernel[(B, 1)](logits, logits.stride(0), V, chunk, k, out_v, out_i,
                                      out_v, out_v, out_v, out_i,  # unused partial buffers
                                      ACC=_TL[acc], BLOCK=BLOCK, KP=KP, SPLIT=False, num_warps=nw)
        return out_v, out_i
    part_m = torch.empty(B, split, dtype=acc, device=logits.device)
    part_s = torch.empty_like(part_m)
    part_v = torch.empty(B, split, KP, dtype=acc, device=logits.device)
    part_i = torch.empty(B, split, KP, dtype=torch.int32, device=logits.device)
    _topk_logprobs_kernel[(B, split)](logits, logits.stride(0), V, chunk, k, out_v, out_i,
                                      part_m, part_s, part_v, part_i,
                                      ACC=_TL[acc], BLOCK=BLOCK, KP=KP, SPLIT=True, num_warps=nw)
    _topk_merge_kernel[(B,)](part_m, part_s, part_v, part_i, split, V, k, out_v, out_i,
                             ACC=_TL[acc], SP=triton.next_power_of_2(split), KP=KP, num_warps=4)
    return out_v, out_i
