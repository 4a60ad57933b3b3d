"""args_select: score the candidates, pick one per row, and commit its K/V to the RM cache, in one launch.

score_j = logp_j + w * r_j over the row's first k[b] candidates; greedy rows (temperature <= 0) take the
argmax, stochastic rows the Gumbel-max argmax of score / temperature + gumbel (noise drawn by the caller
from the request's own generator, so the choice does not depend on the batch). The chosen candidate's
key/value for every layer, already computed by the RM's candidate forward, is copied into the sequence's
cache slot. Grid (B, L): every program recomputes its row's tiny argmax and copies one layer; layer 0
writes the outputs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensors_on_one_device
from .refs import acc_dtype, args_select_ref  # noqa: F401  (re-exported: the kernel's oracle)


@triton.jit
def _args_select_kernel(logp_ptr, r_ptr, ids_ptr, k_ptr, w_ptr, t_ptr, g_ptr,
                        ck_ptr, cv_ptr, kc_ptr, vc_ptr, slots_ptr,
                        choice_ptr, token_ptr, reward_ptr,
                        s_logp, s_r, s_ids, s_g, K, cand_layer, cache_layer, ROW,
                        KP: tl.constexpr, ACC: tl.constexpr, HAS_GUMBEL: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    layer = tl.program_id(1)
    j = tl.arange(0, KP)
    in_k = j < K
    kb = tl.load(k_ptr + b)
    ok = in_k & (j < kb)
    lp = tl.load(logp_ptr + b * s_logp + j, mask=in_k, other=0.0).to(ACC)  # [KP]
    rw = tl.load(r_ptr + b * s_r + j, mask=in_k, other=0.0).to(ACC)
    w = tl.load(w_ptr + b).to(ACC)
    score = lp + w * rw  # two roundings: the launch turns off FMA fusion
    key = score.to(tl.float64)  # exact, so the greedy argmax is that of `score`
    if HAS_GUMBEL:
        t = tl.load(t_ptr + b).to(tl.float64)
        g = tl.load(g_ptr + b * s_g + j, mask=in_k, other=0.0).to(tl.float64)
        t_safe = tl.where(t > 0, t, 1.0)
        key = tl.where(t > 0, key / t_safe + g, key)  # Gumbel-max sample from softmax(score / t)
    key = tl.where(ok & (key == key), key, float("-inf"))  # NaN scores count as -inf
    best = tl.max(key, axis=0)
    choice = tl.min(tl.where(ok & (key == best), j, KP), axis=0)  # ties: lowest j
    choice = tl.where(choice < KP, choice, 0)  # unreachable: some j < k always holds the maximum
    if layer == 0:
        tl.store(choice_ptr + b, choice.to(tl.int64))
        tl.store(token_ptr + b, tl.load(ids_ptr + b * s_ids + choice))
        tl.store(reward_ptr + b, tl.load(r_ptr + b * s_r + choice))
    slot = tl.load(slots_ptr + b)  # int64
    if slot >= 0:
        src = layer.to(tl.int64) * cand_layer + (b * K + choice).to(tl.int64) * ROW
        dst = layer.to(tl.int64) * cache_layer + slot * ROW
        for o in range(0, ROW, BLOCK):
            e = o + tl.arange(0, BLOCK)
            m = e < ROW
            tl.store(kc_ptr + dst + e, tl.load(ck_ptr + src + e, mask=m), mask=m)
            tl.store(vc_ptr + dst + e, tl.load(cv_ptr + src + e, mask=m), mask=m)


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TL = {torch.float32: tl.float32, torch.float64: tl.float64}


def _check(logp, rewards, cand_ids, k, w, temperature, gumbel, cand_key, cand_value, key_cache, value_cache, slots):
    named = dict(logp=logp, rewards=rewards, cand_ids=cand_ids, k=k, w=w, temperature=temperature,
                 cand_key=cand_key, cand_value=cand_value, key_cache=key_cache, value_cache=value_cache, slots=slots)
    if gumbel is not None:
        named["gumbel"] = gumbel
    check_tensors_on_one_device("logp", **named)
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, K], got shape {tuple(logp.shape)}")
    B, K = logp.shape
    for name in ("logp", "rewards", "w", "temperature") + (("gumbel",) if gumbel is not None else ()):
        if named[name].dtype not in _FLOATS:
            raise ValueError(f"{name} must be a floating tensor, got {named[name].dtype}")
    for name, shape in (("rewards", (B, K)), ("cand_ids", (B, K)), ("gumbel", (B, K)), ("k", (B,)), ("w", (B,)),
                        ("temperature", (B,)), ("slots", (B,))):
        if name in named and tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(named[name].shape)}")
    for name in ("logp", "rewards", "cand_ids") + (("gumbel",) if gumbel is not None else ()):
        if named[name].stride(1) != 1:
            raise ValueError(f"{name} must be contiguous along K (stride(1) == 1)")
    for name in ("k", "w", "temperature", "slots"):
        if not named[name].is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if cand_ids.dtype != torch.int64:
        raise ValueError(f"cand_ids must be int64, got {cand_ids.dtype}")
    if k.dtype != torch.int32:
        raise ValueError(f"k must be int32, got {k.dtype}")
    if slots.dtype != torch.int64:
        raise ValueError(f"slots must be int64, got {slots.dtype}")
    if cand_key.dim() != 5 or tuple(cand_key.shape[1:3]) != (B, K):
        raise ValueError(f"cand_key must be [L, B={B}, K={K}, Hkv, D], got {tuple(cand_key.shape)}")
    L, _, _, Hkv, D = cand_key.shape
    if tuple(cand_value.shape) != tuple(cand_key.shape):
        raise ValueError(f"cand_value shape {tuple(cand_value.shape)} != cand_key shape {tuple(cand_key.shape)}")
    if key_cache.dim() != 5 or key_cache.shape[0] != L or tuple(key_cache.shape[3:]) != (Hkv, D):
        raise ValueError(f"key_cache must be [L={L}, num_blocks, block_size, {Hkv}, {D}], got {tuple(key_cache.shape)}")
    if tuple(value_cache.shape) != tuple(key_cache.shape):
        raise ValueError(f"value_cache shape {tuple(value_cache.shape)} != key_cache shape {tuple(key_cache.shape)}")
    for name in ("cand_value", "key_cache", "value_cache"):
        if named[name].dtype != cand_key.dtype:
            raise ValueError(f"{name} dtype {named[name].dtype} != cand_key dtype {cand_key.dtype}")
    for name in ("cand_key", "cand_value", "key_cache", "value_cache"):
        if not named[name].is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def args_select(logp, rewards, cand_ids, k, w, temperature, gumbel, cand_key, cand_value, key_cache, value_cache,
                slots):
    """logp, rewards [B, K], cand_ids [B, K] int64, k [B] int32 (1 <= k[b] <= K, not checked: device sync),
    w, temperature [B], gumbel [B, K] or None (None: every row greedy), cand_key/cand_value [L, B, K, Hkv, D],
    key_cache/value_cache [L, NB, BS, Hkv, D], slots [B] int64 (-1: choose, do not copy)
    -> (choice [B] int64, token [B] int64, reward [B] in rewards' dtype). Writes the caches in place."""
    _check(logp, rewards, cand_ids, k, w, temperature, gumbel, cand_key, cand_value, key_cache, value_cache, slots)
    B, K = logp.shape
    L, _, _, Hkv, D = cand_key.shape
    dev = logp.device
    choice = torch.empty(B, dtype=torch.int64, device=dev)
    token = torch.empty(B, dtype=torch.int64, device=dev)
    reward = torch.empty(B, dtype=rewards.dtype, device=dev)
    if B == 0 or K == 0:
        return choice, token, reward
    acc = acc_dtype(logp.dtype, rewards.dtype)
    row = Hkv * D
    g = gumbel if gumbel is not None else logp  # placeholder pointer, never read
    _args_select_kernel[(B, max(L, 1))](
        logp, rewards, cand_ids, k, w, temperature, g, cand_key, cand_value, key_cache, value_cache, slots,
        choice, token, reward, logp.stride(0), rewards.stride(0), cand_ids.stride(0), g.stride(0),
        K, B * K * row, key_cache[0].numel() if L else 0, row if L else 0,
        KP=max(2, triton.next_power_of_2(K)), ACC=_TL[acc], HAS_GUMBEL=gumbel is not None,
        BLOCK=min(max(16, triton.next_power_of_2(row)), 4096), num_warps=4,
        enable_fp_fusion=False)  # lp + w * r rounded twice, as torch does: a fused FMA flips near-ties
    return choice, token, reward
