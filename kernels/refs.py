"""Plain-torch semantics of the kernels, importable without Triton: the kernels' test oracles, and the code the
engine's CPU paths and the reference decoder run. One implementation of ARGS selection for all of them."""
from __future__ import annotations

import torch


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def args_scores(logp: torch.Tensor, rewards: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """logp, rewards [B, K], k [B] (1 <= k[b] <= K), w [B] -> logp + w * reward [B, K]; -inf beyond each row's k
    and where the score is NaN."""
    acc = acc_dtype(logp.dtype, rewards.dtype)
    scores = logp.to(acc) + w.to(acc)[:, None] * rewards.to(acc)  # [B, K]
    beyond = torch.arange(scores.shape[1], device=scores.device)[None, :] >= k.to(scores.device)[:, None].long()
    return scores.masked_fill(beyond | scores.isnan(), float("-inf"))  # NaN (a broken RM or LM) counts as -inf


def args_choose(scores: torch.Tensor, temperature: torch.Tensor, gumbel: torch.Tensor | None) -> torch.Tensor:
    """scores [B, K] (masked), temperature [B] (<= 0: greedy), gumbel [B, K] float64 or None (all greedy) -> [B].
    Greedy takes the first maximum (ties -> lowest j); stochastic rows the argmax of score / T + gumbel."""
    choice = scores.argmax(dim=-1)
    if gumbel is None:
        return choice
    t = temperature.double().to(scores.device)
    stoch = t > 0
    noisy = scores.double() / torch.where(stoch, t, torch.ones_like(t))[:, None] + gumbel.double()
    return torch.where(stoch, noisy.argmax(dim=-1), choice)


def args_select_ref(logp, rewards, cand_ids, k, w, temperature, gumbel, cand_key, cand_value, key_cache,
                    value_cache, slots):
    """kernels.args_select's contract in torch: choose, then copy the chosen candidate's K/V (all layers,
    cand_* [L, B, K, Hkv, D]) into slots [B] of the caches [L, NB, BS, Hkv, D] (-1: no copy)."""
    choice = args_choose(args_scores(logp, rewards, k, w), temperature, gumbel)  # [B]
    rows = torch.arange(len(choice), device=choice.device)
    keep = slots >= 0
    for cand, cache in ((cand_key, key_cache), (cand_value, value_cache)):
        flat = cache.view(cache.shape[0], -1, *cache.shape[3:])  # [L, NB * BS, Hkv, D]
        flat[:, slots[keep]] = cand[:, rows[keep], choice[keep]]
    return choice, cand_ids[rows, choice], rewards[rows, choice]


def store_kv_ref(key, value, key_cache, value_cache, slot_mapping) -> None:
    """key, value [N, H, D] into caches [NB, BS, H, D] at slot_mapping [N] (-1 skips)."""
    keep = slot_mapping >= 0
    for cache, x in ((key_cache, key), (value_cache, value)):
        flat = cache.view(-1, *cache.shape[2:])  # [NB * BS, H, D]
        flat[slot_mapping[keep]] = x[keep]
