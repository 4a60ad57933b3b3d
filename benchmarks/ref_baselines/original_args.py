"""A re-creation of the original ARGS implementation's cache handling (deeplearning-wisc/args; DESIGN.md
section 2), for comparison only. One prompt at a time. The RM keeps k cache rows: the first step prefills the
prompt k times (one row per candidate); every step the k candidates extend their rows, then the whole RM cache
is re-gathered with index_select into k copies of the chosen row (O(k * T) memory traffic, k times the memory).
Scores are raw logits + w * reward (the same choice as log p + w * reward). It never stops at EOS."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from args_engine.models.hf import RewardModel, next_token_logits


def cache_bytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None)


@torch.no_grad()
def original_args_generate(lm, rm: RewardModel, prompt_ids: list[int], k: int, w: float,
                           max_new_tokens: int) -> tuple[list[int], int]:
    """-> (chosen tokens, peak RM cache bytes)."""
    device = next(lm.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)  # [1, P]
    lm_cache, rm_cache = DynamicCache(), DynamicCache()
    logits = next_token_logits(lm, input_ids=ids, cache=lm_cache, use_cache=True)  # [1, V]
    tokens, peak = [], 0
    for step in range(max_new_tokens):
        top_logits, top_ids = torch.topk(logits[0], k)  # [k]
        if step == 0:
            rm_in = torch.cat([ids.expand(k, -1), top_ids[:, None]], dim=1)  # [k, P + 1]: the prompt k times
        else:
            rm_in = top_ids[:, None]  # [k, 1] against k replicated prefixes
        hidden = rm.forward_trunk(input_ids=rm_in, cache=rm_cache, use_cache=True)  # [k, T, H]
        rewards = rm.rewards(hidden[:, -1])  # [k]
        choice = int(torch.argmax(top_logits + w * rewards))
        peak = max(peak, cache_bytes(rm_cache))
        rm_cache.reorder_cache(torch.full((k,), choice, device=device))  # k copies of the chosen row
        token = int(top_ids[choice])
        tokens.append(token)
        logits = next_token_logits(lm, input_ids=torch.tensor([[token]], device=device), cache=lm_cache,
                                   use_cache=True)
    return tokens, peak
