"""candidate_attention: K candidate queries per sequence against that sequence's paged prefix, plus each
query's own key/value.

ARGS scores k candidate tokens that all sit at the same position after a shared prefix: candidate j sees
the prefix and itself, not the other candidates (a tree of depth 1). One program per (sequence, kv head)
stacks the K x group queries that share a kv head into [M, D] tiles (at most 64 rows; more candidates
take more row tiles), so every prefix block is read once per tile and the scores are a tl.dot; an online softmax runs over the blocks and each
query's own key is folded in last. Long contexts at small batch can split the prefix over several
programs (flash-decoding) whose partial softmax states a second launch combines. The LM's decode
attention is the K = 1 case.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensors_on_one_device, gpu_sms, load_kv_tile, scale_tensor, soft_cap


@triton.jit
def _candidate_attention_kernel(
        q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, bt_ptr, ctx_ptr, out_ptr, seg_ptr,
        part_m_ptr, part_l_ptr, part_acc_ptr,  # [B, HKV, S, M], [B, HKV, S, M], [B, HKV, S, M, DP] (SPLIT only)
        sq_b, sq_j, sq_h, skn_b, skn_j, skn_h, svn_b, svn_j, svn_h, so_b, so_j, so_h, s_bt,
        K, HKV, RT, BS, chunk, scale_ptr, cap,
        GROUP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, M: tl.constexpr, BLOCK_N: tl.constexpr,
        ACC: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, CAP: tl.constexpr, TREE: tl.constexpr):
    b = tl.program_id(0)
    pid = tl.program_id(1)  # kv head x row tile
    kvh = pid // RT
    sp = tl.program_id(2)
    r = (pid % RT) * M + tl.arange(0, M)  # row r = candidate j, group member g
    j = r // GROUP
    h = kvh * GROUP + r % GROUP
    row_ok = j < K
    d = tl.arange(0, DP)
    d_ok = d < D
    rd_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * sq_b + j[:, None] * sq_j + h[:, None] * sq_h + d[None, :], mask=rd_ok, other=0.0)  # [M, DP]
    ctx = tl.load(ctx_ptr + b)
    scale = tl.load(scale_ptr)  # a [1] tensor in ACC: a Python float argument would be rounded to fp32
    if SPLIT:  # `chunk` is the least share: this row's own context split (a short row in a wide table too)
        chunk = _row_chunk(ctx, tl.num_programs(2), chunk)
    start = sp * chunk  # (one program: chunk covers the table)
    end = tl.minimum(start + chunk, ctx)
    row_stride = HKV * D  # contiguous cache [NB, BS, HKV, D]: one slot is HKV * D elements

    m = tl.full([M], float("-inf"), ACC)
    l = tl.zeros([M], ACC)
    acc = tl.zeros([M, DP], ACC)
    n = tl.arange(0, BLOCK_N)
    for s0 in range(start, end, BLOCK_N):
        pos = s0 + n
        p_ok = pos < end
        kt, vt = load_kv_tile(kc_ptr, vc_ptr, bt_ptr + b * s_bt, pos, p_ok, kvh, d, d_ok, BS, row_stride, D)
        sc = tl.dot(q, tl.trans(kt), out_dtype=ACC, input_precision=PREC) * scale  # [M, BLOCK_N]
        if CAP:
            sc = soft_cap(sc, cap)
        sc = tl.where(p_ok[None, :], sc, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, axis=1))  # finite: every tile has a valid position
        alpha = tl.exp(m - m_new)
        p = tl.exp(sc - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, out_dtype=ACC, input_precision=PREC)
        m = m_new

    if SPLIT:  # a program past its row's context stores nothing: the combine reads the busy ones only
        base = ((b * HKV * RT + pid) * tl.num_programs(2) + sp) * M + tl.arange(0, M)
        busy = tl.arange(0, M) < tl.where(start < ctx, M, 0)  # [M]: all true, or all false
        tl.store(part_m_ptr + base, m, mask=busy)
        tl.store(part_l_ptr + base, l, mask=busy)
        tl.store(part_acc_ptr + base[:, None] * DP + d[None, :], acc, mask=busy[:, None] & (d < DP)[None, :])
    else:
        _fold_own_and_store(q, m, l, acc, kn_ptr, vn_ptr, out_ptr, seg_ptr, b, j, h, kvh, d, rd_ok, K,
                            skn_b, skn_j, skn_h, svn_b, svn_j, svn_h, so_b, so_j, so_h, scale, cap, D, ACC, CAP, TREE)


@triton.jit
def _fold_own_and_store(q, m, l, acc, kn_ptr, vn_ptr, out_ptr, seg_ptr, b, j, h, kvh, d, rd_ok, K,
                        skn_b, skn_j, skn_h, svn_b, svn_j, svn_h, so_b, so_j, so_h, scale, cap, D: tl.constexpr,
                        ACC: tl.constexpr, CAP: tl.constexpr, TREE: tl.constexpr):
    if TREE:
        # Ragged tails (a bridged RM): query j also sees the new keys jj <= j of its own segment, one softmax
        # column each, in order; the key jj == j is always among them.
        seg_j = tl.load(seg_ptr + b * K + j, mask=j < K, other=-1)  # [M]
        for jj in range(0, K):
            kn = tl.load(kn_ptr + b * skn_b + jj * skn_j + kvh * skn_h + d, mask=d < D, other=0.0)
            vn = tl.load(vn_ptr + b * svn_b + jj * svn_j + kvh * svn_h + d, mask=d < D, other=0.0)
            sc = tl.sum(q.to(ACC) * kn.to(ACC)[None, :], axis=1) * scale  # [M]
            if CAP:
                sc = soft_cap(sc, cap)
            ok = (seg_j == tl.load(seg_ptr + b * K + jj)) & (jj <= j)
            sc = tl.where(ok, sc, float("-inf"))
            m_new = tl.maximum(m, sc)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no column yet: nothing to rescale
            alpha = tl.exp(m - m_safe)
            p = tl.exp(sc - m_safe)
            l = l * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * vn.to(ACC)[None, :]
            m = m_new
        l = tl.where(j < K, l, 1.0)  # rows past K (tile padding) saw nothing: no 0 / 0
    else:
        # Each query's own new key/value: one more softmax column, private to the query's candidate j.
        kn = tl.load(kn_ptr + b * skn_b + j[:, None] * skn_j + kvh * skn_h + d[None, :], mask=rd_ok, other=0.0)
        vn = tl.load(vn_ptr + b * svn_b + j[:, None] * svn_j + kvh * svn_h + d[None, :], mask=rd_ok, other=0.0)
        s_own = tl.sum(q.to(ACC) * kn.to(ACC), axis=1) * scale  # [M]
        if CAP:
            s_own = soft_cap(s_own, cap)
        m_new = tl.maximum(m, s_own)
        alpha = tl.exp(m - m_new)  # 0 when there is no prefix (m = -inf)
        p_own = tl.exp(s_own - m_new)
        l = l * alpha + p_own
        acc = acc * alpha[:, None] + p_own[:, None] * vn.to(ACC)
    out = acc / l[:, None]
    tl.store(out_ptr + b * so_b + j[:, None] * so_j + h[:, None] * so_h + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rd_ok)


@triton.jit
def _row_chunk(ctx, S, least):
    """The positions each of a row's S programs takes: its context split S ways, 16-aligned starts, at least
    `least` (a program's fixed cost is not worth fewer); the programs past the context have none."""
    return tl.maximum(tl.cdiv(tl.cdiv(ctx, S), 16) * 16, least)


@triton.jit
def _candidate_attention_combine_kernel(
        q_ptr, kn_ptr, vn_ptr, out_ptr, seg_ptr, ctx_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
        sq_b, sq_j, sq_h, skn_b, skn_j, skn_h, svn_b, svn_j, svn_h, so_b, so_j, so_h,
        K, HKV, RT, S, least, scale_ptr, cap,
        GROUP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, M: tl.constexpr, ACC: tl.constexpr,
        CAP: tl.constexpr, TREE: tl.constexpr):
    b = tl.program_id(0)
    pid = tl.program_id(1)
    kvh = pid // RT
    r = (pid % RT) * M + tl.arange(0, M)
    j = r // GROUP
    h = kvh * GROUP + r % GROUP
    d = tl.arange(0, DP)
    rd_ok = (j < K)[:, None] & (d < D)[None, :]
    q = tl.load(q_ptr + b * sq_b + j[:, None] * sq_j + h[:, None] * sq_h + d[None, :], mask=rd_ok, other=0.0)
    scale = tl.load(scale_ptr)
    m = tl.full([M], float("-inf"), ACC)
    l = tl.zeros([M], ACC)
    acc = tl.zeros([M, DP], ACC)
    ctx = tl.load(ctx_ptr + b)
    for s in range(0, tl.cdiv(ctx, _row_chunk(ctx, S, least))):  # the busy programs
        base = ((b * HKV * RT + pid) * S + s) * M + tl.arange(0, M)
        ms = tl.load(part_m_ptr + base)
        ls = tl.load(part_l_ptr + base)
        accs = tl.load(part_acc_ptr + base[:, None] * DP + d[None, :])
        m_new = tl.maximum(m, ms)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        a = tl.exp(m - m_safe)
        c = tl.exp(ms - m_safe)
        l = l * a + ls * c
        acc = acc * a[:, None] + accs * c[:, None]
        m = m_new
    _fold_own_and_store(q, m, l, acc, kn_ptr, vn_ptr, out_ptr, seg_ptr, b, j, h, kvh, d, rd_ok, K,
                        skn_b, skn_j, skn_h, svn_b, svn_j, svn_h, so_b, so_j, so_h, scale, cap, D, ACC, CAP, TREE)


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TL = {torch.float32: tl.float32, torch.float64: tl.float64}
MAX_TILE_ROWS = 64  # query rows (candidates x group) per program: more would spill registers; extra tiles instead


def candidate_tiles(dtype: torch.dtype, D: int, rows: int, sms: int | None) -> tuple[int, int, int]:
    """(M query rows, BLOCK_N keys, num_warps) per program for `rows` = K x GQA group queries per kv head; sms: the
    GPU's multiprocessor count, None under the interpreter (big key tiles: it pays per op). On a GPU (sm_90,
    checked by test_kernel_compile_sm90): half types take up to [64, 64] tiles (tensor cores); fp32 / fp64 run
    the dots as FMA loops ("ieee") whose operands sit in registers, so they take [16, 32] (fp64 [16, 16]): a
    [64, 64] x D = 128 fp32 tile needs kilobytes of local memory per thread, and fp64's shared memory passes
    the 227 KB an sm_90 block may have (fp32 at D > 128 takes [16, 16] too)."""
    M = max(16, min(MAX_TILE_ROWS, triton.next_power_of_2(rows)))
    if sms is None:
        return M, 128, 4
    if dtype in (torch.float16, torch.bfloat16):
        return M, 64, 4
    return 16, (16 if dtype == torch.float64 or D > 128 else 32), 4


def candidate_split(B: int, Hkv: int, RT: int, max_ctx: int, BLOCK_N: int, sms: int | None) -> int:
    """Programs per (row, kv head, row tile) along the prefix: enough for two waves of programs on the GPU when the
    batch alone has too few, at least 2 key tiles each; 1 under the interpreter."""
    if sms is None:
        return 1
    return max(1, min(triton.cdiv(2 * sms, B * Hkv * RT), triton.cdiv(max_ctx, 2 * BLOCK_N), 32))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(q, k_new, v_new, key_cache, value_cache, block_tables, context_lens):
    named = dict(q=q, k_new=k_new, v_new=v_new, key_cache=key_cache, value_cache=value_cache,
                 block_tables=block_tables, context_lens=context_lens)
    check_tensors_on_one_device("q", **named)
    if q.dim() != 4:
        raise ValueError(f"q must be [B, K, Hq, D], got shape {tuple(q.shape)}")
    if q.dtype not in _FLOATS:
        raise ValueError(f"q must be a float16/bfloat16/float32/float64 tensor, got {q.dtype}")
    B, K, Hq, D = q.shape
    if key_cache.dim() != 4:
        raise ValueError(f"key_cache must be [num_blocks, block_size, Hkv, D], got {tuple(key_cache.shape)}")
    Hkv = key_cache.shape[2]
    for name in ("k_new", "v_new"):
        if tuple(named[name].shape) != (B, K, Hkv, D):
            raise ValueError(f"{name} must have shape {(B, K, Hkv, D)}, got {tuple(named[name].shape)}")
    if key_cache.shape[3] != D:
        raise ValueError(f"key_cache head dim {key_cache.shape[3]} != q head dim {D}")
    if tuple(value_cache.shape) != tuple(key_cache.shape):
        raise ValueError(f"value_cache shape {tuple(value_cache.shape)} != key_cache shape {tuple(key_cache.shape)}")
    for name in ("k_new", "v_new", "key_cache", "value_cache"):
        if named[name].dtype != q.dtype:
            raise ValueError(f"{name} dtype {named[name].dtype} != q dtype {q.dtype}")
    for name in ("key_cache", "value_cache"):
        if not named[name].is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    for name in ("q", "k_new", "v_new"):
        if named[name].stride(3) != 1:
            raise ValueError(f"{name} must be contiguous along the head dim (stride(3) == 1)")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or block_tables.dtype != torch.int32:
        raise ValueError(f"block_tables must be int32 [B={B}, max_blocks], got {block_tables.dtype} "
                         f"{tuple(block_tables.shape)}")
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables must be contiguous along its last dim")
    if context_lens.dim() != 1 or context_lens.shape[0] != B or context_lens.dtype != torch.int32:
        raise ValueError(f"context_lens must be int32 [B={B}], got {context_lens.dtype} {tuple(context_lens.shape)}")
    if not context_lens.is_contiguous():
        raise ValueError("context_lens must be contiguous")


def candidate_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, key_cache: torch.Tensor,
                        value_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                        scale: float, split: int | None = None, softcap: float | None = None,
                        segments: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, K, Hq, D], k_new/v_new [B, K, Hkv, D], caches [NB, BS, Hkv, D], block_tables [B, MB] int32,
    context_lens [B] int32 -> out [B, K, Hq, D] (q's dtype). `split`: programs per (b, kv head) along the
    prefix, each taking its share of the row's own context (so a short row in a wide table, as a captured
    graph's is, still splits); default: a heuristic on CUDA, 1 elsewhere. The context must fit the table:
    context_lens <= MB * BS (not checked: it would need a device sync). segments [B, K] int32: new token j also
    sees the new tokens jj < j with the same segment id (ragged candidate tails over the prefix;
    paged_ops.tree_keep); None: each sees only itself."""
    _check(q, k_new, v_new, key_cache, value_cache, block_tables, context_lens)
    B, K = q.shape[:2]
    if segments is not None and (segments.shape != (B, K) or segments.dtype != torch.int32
                                 or not segments.is_contiguous() or segments.device != q.device):
        raise ValueError(f"segments must be a contiguous int32 [B={B}, K={K}] tensor on {q.device}, got "
                         f"{segments.dtype} {tuple(segments.shape)} on {segments.device}")
    B, K, Hq, D = q.shape
    NB, BS, Hkv, _ = key_cache.shape
    group = Hq // Hkv
    out = torch.empty(B, K, Hq, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    acc = _acc_dtype(q.dtype)
    sms = gpu_sms(q)
    M, BLOCK_N, nw = candidate_tiles(q.dtype, D, K * group, sms)  # M rows per program
    RT = triton.cdiv(K * group, M)  # row tiles per (sequence, kv head)
    DP = max(16, triton.next_power_of_2(D))
    prec = "ieee" if q.dtype in (torch.float32, torch.float64) else None  # fp32: no TF32 rounding
    scale_t = scale_tensor(float(scale), acc, q.device)
    max_ctx = max(1, block_tables.shape[1] * BS)
    if split is None:
        split = candidate_split(B, Hkv, RT, max_ctx, BLOCK_N, sms)
    split = max(1, int(split))
    # split == 1: one program's range, the table; split: the least share of a row's context, two key tiles
    chunk = triton.cdiv(max_ctx, 16) * 16 if split == 1 else 2 * BLOCK_N
    strides = (*q.stride()[:3], *k_new.stride()[:3], *v_new.stride()[:3], *out.stride()[:3], block_tables.stride(0))
    meta = dict(GROUP=group, D=D, DP=DP, M=M, ACC=_TL[acc], CAP=softcap is not None, TREE=segments is not None)
    seg = segments if segments is not None else context_lens  # a placeholder pointer when TREE is off
    cap = float(softcap or 1.0)
    if split == 1:
        _candidate_attention_kernel[(B, Hkv * RT, 1)](
            q, k_new, v_new, key_cache, value_cache, block_tables, context_lens, out, seg, out, out, out,
            *strides, K, Hkv, RT, BS, chunk, scale_t, cap, BLOCK_N=BLOCK_N, PREC=prec, SPLIT=False, num_warps=nw,
            **meta)
        return out
    part_m = torch.empty(B, Hkv * RT, split, M, dtype=acc, device=q.device)
    part_l = torch.empty_like(part_m)
    part_acc = torch.empty(B, Hkv * RT, split, M, DP, dtype=acc, device=q.device)
    _candidate_attention_kernel[(B, Hkv * RT, split)](
        q, k_new, v_new, key_cache, value_cache, block_tables, context_lens, out, seg, part_m, part_l, part_acc,
        *strides, K, Hkv, RT, BS, chunk, scale_t, cap, BLOCK_N=BLOCK_N, PREC=prec, SPLIT=True, num_warps=nw,
        **meta)
    _candidate_attention_combine_kernel[(B, Hkv * RT)](
        q, k_new, v_new, out, seg, context_lens, part_m, part_l, part_acc, *strides[:12], K, Hkv, RT, split, chunk,
        scale_t, cap,
        num_warps=nw,
        **meta)
    return out


def candidate_attention_ref(q, k_new, v_new, key_cache, value_cache, block_tables, context_lens, scale, softcap=None,
                            segments=None):
    """Plain torch: gather each sequence's prefix, append the query's own key/value (segments: the new keys
    paged_ops.tree_keep keeps), softmax in the accumulator dtype."""
    B, K, Hq, D = q.shape
    BS, Hkv = key_cache.shape[1], key_cache.shape[2]
    group = Hq // Hkv
    acc = _acc_dtype(q.dtype)
    out = torch.empty_like(q)
    for b in range(B):
        T = int(context_lens[b])
        pos = torch.arange(T, device=q.device)
        slots = block_tables[b].long()[pos // BS] * BS + pos % BS  # [T]
        kp = key_cache.reshape(-1, Hkv, D)[slots].to(acc).repeat_interleave(group, dim=1)  # [T, Hq, D]
        vp = value_cache.reshape(-1, Hkv, D)[slots].to(acc).repeat_interleave(group, dim=1)
        qb = q[b].to(acc)  # [K, Hq, D]
        kn = k_new[b].to(acc).repeat_interleave(group, dim=1)  # [K, Hq, D]
        vn = v_new[b].to(acc).repeat_interleave(group, dim=1)
        s_pre = torch.einsum("khd,thd->kht", qb, kp) * scale  # [K, Hq, T]
        s_new = torch.einsum("khd,jhd->khj", qb, kn) * scale  # [K, Hq, K]: query k, new key j
        if segments is None:
            keep = torch.eye(K, dtype=torch.bool, device=q.device)  # [K, K]
        else:
            seg = segments[b].long()
            keep = (seg[:, None] == seg[None, :]) & torch.ones(K, K, dtype=torch.bool, device=q.device).tril()
        scores = torch.cat([s_pre, s_new], dim=-1)  # [K, Hq, T + K]
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        scores[..., T:] = scores[..., T:].masked_fill(~keep[:, None, :], float("-inf"))
        p = torch.softmax(scores, dim=-1)
        o = torch.einsum("kht,thd->khd", p[..., :T], vp) + torch.einsum("khj,jhd->khd", p[..., T:], vn)  # [K, Hq, D]
        out[b] = o.to(q.dtype)
    return out
