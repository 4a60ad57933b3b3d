"""Plain-torch semantics of the kernels, importable without Triton: the kernels' test oracles, and the code the
engine's CPU paths and the reference decoder run. One implementation of ARGS selection for all of them."""
from __future__ import annotations

import torch


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


_LOW32 = (1 << 32) - 1


def _nan_as_neg_inf(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))  # one pass


def log_probs_ref(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> log p [B, V]: log_softmax in the accumulator dtype, a NaN logit counting as -inf."""
    return torch.log_softmax(_nan_as_neg_inf(logits.to(acc_dtype(logits.dtype))), dim=-1)


def topk_logprobs_ref(logits: torch.Tensor, k: int, logp: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (log p of the top-k tokens [B, k], their ids [B, k]): log_softmax in the accumulator dtype
    (NaN counts as -inf), highest first, ties broken by the LOWER token id, the kernel's rule. Every path picks
    candidates this way, so a row's candidates (and its first j of them) depend on neither its neighbours' k nor
    the backend; torch.topk alone promises no order among equal values and picks different tied sets for
    different k. logp: log_probs_ref(logits), when the caller has it already."""
    logp = log_probs_ref(logits) if logp is None else logp  # [B, V]
    if k == 0:
        return logp[:, :0], torch.zeros(logp.shape[0], 0, dtype=torch.int64, device=logp.device)
    # ordered by a key in which NaN log p (a row of only -inf logits, or a +inf logit) counts as -inf, so such a
    # row takes its lowest ids on every path
    key = _nan_as_neg_inf(logp)
    V = logp.shape[-1]
    if logp.is_cuda:  # no host sync on a device
        ids = _topk_lower_id(key, k)[1]
        return logp.gather(-1, ids), ids
    # CPU: torch.topk (one pass), then the tie rule where it matters: order within the k (tiny), and the rows
    # whose k-th value ties the (k+1)-th (then which of the tied tokens are in is the rule's to say)
    vals, ids = torch.topk(key, min(k + 1, V), dim=-1)  # [B, k(+1)], descending
    straddle = (vals[:, k - 1] == vals[:, k]) if k < V else torch.zeros(len(vals), dtype=torch.bool)
    vals, ids = _order_ties(vals[:, :k], ids[:, :k])
    if straddle.any():
        rows = straddle.nonzero()[:, 0]
        ids[rows] = _topk_lower_id(key[rows], k)[1]
    return logp.gather(-1, ids), ids


def _order_ties(vals: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vals, ids [B, k] of one top-k set -> the same set, by value descending, then id ascending."""
    ids, by_id = ids.sort(dim=-1)
    vals, by_val = vals.gather(-1, by_id).sort(dim=-1, descending=True, stable=True)
    return vals, ids.gather(-1, by_val)


def _topk_lower_id(logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact rule with no host sync. float32: one torch.topk over int64 keys (the value's order-preserving
    bits, then the complement of the id), all distinct, so ties cannot arise; other dtypes: a stable sort."""
    if logp.dtype != torch.float32:
        vals, ids = torch.sort(logp, dim=-1, descending=True, stable=True)
        return vals[:, :k].contiguous(), ids[:, :k].contiguous()
    bits = (logp + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0: equal values, equal bits
    order = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)  # [B, V], monotone in the value
    ids = torch.arange(logp.shape[-1], device=logp.device)
    top = torch.topk((order << 32) | (_LOW32 - ids), k, dim=-1).values  # [B, k]
    ids = _LOW32 - (top & _LOW32)
    return logp.gather(-1, ids), ids


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


def args_pick(logp, rewards, cand_ids, k, w, temperature, gumbel):
    """Score and choose, nothing committed: the torch definition of a pick (the kernel's equals it).
    -> choice, token, the chosen's reward [B] each."""
    choice = args_choose(args_scores(logp, rewards, k, w), temperature, gumbel)  # [B]
    rows = torch.arange(len(choice), device=choice.device)
    return choice, cand_ids[rows, choice], rewards[rows, choice]


def args_select_ref(logp, rewards, cand_ids, k, w, temperature, gumbel, cand_key, cand_value, key_cache,
                    value_cache, slots):
    """kernels.args_select's contract in torch: choose, then copy the chosen candidate's K/V (all layers,
    cand_* [L, B, K, Hkv, D]) into slots [B] of the caches [L, NB, BS, Hkv, D] (-1: no copy)."""
    choice, tokens, chosen = args_pick(logp, rewards, cand_ids, k, w, temperature, gumbel)  # [B] each
    rows = torch.arange(len(choice), device=choice.device)
    keep = slots >= 0
    for cand, cache in ((cand_key, key_cache), (cand_value, value_cache)):
        flat = cache.view(cache.shape[0], -1, *cache.shape[3:])  # [L, NB * BS, Hkv, D]
        flat[:, slots[keep]] = cand[:, rows[keep], choice[keep]]
    return choice, tokens, chosen


def store_kv_ref(key, value, key_cache, value_cache, slot_mapping) -> None:
    """key, value [N, H, D] into caches [NB, BS, H, D] at slot_mapping [N] (-1 skips)."""
    keep = slot_mapping >= 0
    for cache, x in ((key_cache, key), (value_cache, value)):
        flat = cache.view(-1, *cache.shape[2:])  # [NB * BS, H, D]
        flat[slot_mapping[keep]] = x[keep]
