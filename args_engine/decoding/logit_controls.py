"""Logit controls (repetition, presence and frequency penalties, no-repeat n-grams, logit bias, min-p, top-p),
applied to the LM's next-token logits before the k candidates are taken. Every decoder calls this one function,
so all paths control alike; each row is processed from its own tokens and settings only (batch-invariant).

Semantics follow the libraries users know: logit bias added, then repetition_penalty and no_repeat_ngram_size
as Hugging Face's processors (over prompt + response), presence and frequency penalties as OpenAI's (over the
response). min_p and top_p then drop unlikely tokens (logit -inf): a step may have fewer than k candidates,
and a dropped candidate can never be chosen (its log p is -inf)."""
from __future__ import annotations

import torch

from ..params import ARGSParams


def apply_logit_controls(logits: torch.Tensor, params: list[ARGSParams], token_ids: list[list[int]],
                         num_prompt: list[int]) -> torch.Tensor:
    """logits [B, V] of each row's next token; token_ids[b]: row b's prompt + response so far, the first
    num_prompt[b] being the prompt. -> controlled logits [B, V] (a new tensor when any row has controls; the
    input is never modified)."""
    rows = [b for b, p in enumerate(params) if p.has_logit_controls]
    if not rows:
        return logits
    out = logits.clone()
    for b in rows:
        out[b] = control_row(out[b], params[b], token_ids[b], num_prompt[b])
    return out


def control_row(x: torch.Tensor, p: ARGSParams, ids: list[int], num_prompt: int) -> torch.Tensor:
    """x [V] -> [V]: one row's logits under p's controls, in Hugging Face's order (bias, repetition penalty,
    no-repeat n-grams), OpenAI's penalties beside the repetition penalty, the filters last."""
    device = x.device
    if p.logit_bias:
        tokens = torch.tensor(list(p.logit_bias), device=device)
        x = x.index_add(0, tokens, torch.tensor(list(p.logit_bias.values()), dtype=x.dtype, device=device))
    if p.repetition_penalty != 1.0 and ids:
        seen = torch.tensor(sorted(set(ids)), device=device)
        s = x[seen]
        x = x.index_put((seen,), torch.where(s > 0, s / p.repetition_penalty, s * p.repetition_penalty))
    response = ids[num_prompt:]
    if (p.presence_penalty or p.frequency_penalty) and response:
        counts = torch.bincount(torch.tensor(response, device=device), minlength=x.shape[0]).to(x.dtype)  # [V]
        x = x - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(x.dtype)
    if p.no_repeat_ngram_size > 0:
        banned = banned_ngram_tokens(ids, p.no_repeat_ngram_size)
        if banned:
            x = x.index_fill(0, torch.tensor(banned, device=device), float("-inf"))
    if p.min_p > 0.0 or p.top_p < 1.0:
        x = x.masked_fill(dropped_by_min_p_top_p(x, p.min_p, p.top_p), float("-inf"))
    return x


def banned_ngram_tokens(ids: list[int], n: int) -> list[int]:
    """The tokens that would complete an n-gram already in `ids` (Hugging Face's no_repeat_ngram_size): those that
    followed an earlier occurrence of the last n - 1 tokens. Vectorized: O(len(ids) x n) in C, not Python."""
    if len(ids) + 1 < n or n < 1:
        return []
    t = torch.tensor(ids)
    if n == 1:
        return t.unique().tolist()
    starts = t.unfold(0, n - 1, 1)[:len(ids) - n + 1]  # [L - n + 1, n - 1]: the windows a token follows
    follows = (starts == t[len(ids) - n + 1:]).all(1)  # [L - n + 1]
    return t[n - 1:][follows].unique().tolist()


def dropped_by_min_p_top_p(x: torch.Tensor, min_p: float, top_p: float) -> torch.Tensor:
    """x [V] logits -> [V] bool: the tokens min_p and top_p drop. The likeliest token is always kept."""
    probs = torch.softmax(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)  # [V]
    drop = probs < min_p * probs.max() if min_p > 0.0 else torch.zeros_like(probs, dtype=torch.bool)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        before = sorted_p.cumsum(0) - sorted_p  # probability of the likelier tokens
        drop |= torch.zeros_like(drop).scatter(0, order, before >= top_p)
    return drop
