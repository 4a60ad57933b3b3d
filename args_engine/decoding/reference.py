"""The cached reference decoder over Hugging Face models.

The LM keeps its KV cache. The RM keeps ONE prefix cache per sequence; each step the k candidates go through
the RM as k tokens at the same position, each attending to the shared prefix plus itself (a 4D mask with
explicit position ids), and only the chosen candidate's K/V is committed. A batch is left-padded; masks and
position ids make every row compute exactly what it would alone.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from ..engine.request import Request, append_token
from ..models.hf import RewardModel, next_token_logits
from .common import gated, logprob_columns, logprob_lists, select_candidates, topk_logprobs
from .logit_controls import apply_logit_controls
from .masks import candidate_mask, commit_candidates, prefill_mask, prefix_positions, select_rows

_SUPPORTED_ATTN = ("eager", "sdpa")


def _check_attention(model, what: str) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in _SUPPORTED_ATTN and impl is not None:
        raise ValueError(f"the reference decoder needs custom 4D masks: load the {what} with "
                         f"attn_implementation in {_SUPPORTED_ATTN}, not {impl!r}")


class ReferenceDecoder:
    name = "reference"
    scores_prompts = True  # params.prompt_logprobs

    def __init__(self, lm, rm: RewardModel, tokenizer, eos_ids: set[int], pad_id: int = 0):
        _check_attention(lm, "LM")
        _check_attention(rm.model, "RM")
        self.lm, self.rm, self.tokenizer, self.eos_ids, self.pad_id = lm, rm, tokenizer, eos_ids, pad_id

    @torch.no_grad()
    def run(self, reqs: list[Request], on_step=None) -> None:
        device = next(self.lm.parameters()).device
        dtype, rm_dtype = next(self.lm.parameters()).dtype, next(self.rm.parameters()).dtype  # masks match each
        B, L = len(reqs), max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long, device=device)
        valid = torch.zeros(B, L, dtype=torch.bool, device=device)  # [B, P]: False on left padding
        for b, r in enumerate(reqs):
            ids[b, L - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, device=device)
            valid[b, L - len(r.prompt_ids):] = True

        # Plain full-attention layers, even for sliding-window models: the masks here are full attention and the
        # engine caps the context at the window, where the two agree.
        lm_cache, rm_cache = DynamicCache(), DynamicCache()
        pos = prefix_positions(valid)
        logits = next_token_logits(self.lm, input_ids=ids, attention_mask=prefill_mask(valid, dtype), position_ids=pos,
                                   cache=lm_cache, use_cache=True)  # [B, V]
        self.rm.forward_trunk(input_ids=ids, attention_mask=prefill_mask(valid, rm_dtype), position_ids=pos,
                              cache=rm_cache, use_cache=True)

        self._score_prompts(reqs, ids, valid, pos, dtype)
        next_pos = valid.sum(1)  # [B] position of the token being chosen
        for r in reqs:
            if r.params.max_new_tokens == 0:  # the prompt scored, nothing to decode
                r.finish_reason = "length"
        keep = [b for b, r in enumerate(reqs) if not r.finished]
        if not keep:
            return
        if len(keep) < B:
            rows = torch.tensor(keep, dtype=torch.long, device=device)
            select_rows(rm_cache, rows)
            select_rows(lm_cache, rows)
            valid, logits, next_pos = valid[rows], logits[rows], next_pos[rows]
        active = [reqs[b] for b in keep]
        while active:
            kmax = max(r.params.k for r in active)
            logits = apply_logit_controls(logits, [r.params for r in active],
                                          [r.prompt_ids + r.out_ids for r in active],
                                          [len(r.prompt_ids) for r in active])  # [B, V]
            logp, cand = topk_logprobs(logits, kmax)  # [B, kmax]
            hidden = self.rm.forward_trunk(
                input_ids=cand, attention_mask=candidate_mask(valid, kmax, rm_dtype),
                position_ids=next_pos[:, None].expand(-1, kmax), cache=rm_cache, use_cache=True)  # [B, kmax, H]
            rewards = self.rm.rewards(hidden, self.rm.row_weights([r.params.rm_weights for r in active], device))
            gate = gated([r.params for r in active], logp[:, 0].tolist())  # an oracle: it still scores them all
            choice = select_candidates(logp, rewards, active, gate)  # [B]
            commit_candidates(rm_cache, choice, kmax)
            tokens = cand.gather(1, choice[:, None])  # [B, 1]
            chosen_r = rewards.gather(1, choice[:, None])[:, 0].tolist()
            for b, r in enumerate(active):
                append_token(r, tokens[b, 0].item(), chosen_r[b], self.tokenizer, self.eos_ids)
            if on_step:
                on_step(len(active))

            valid = torch.cat([valid, torch.ones(len(active), 1, dtype=torch.bool, device=device)], dim=1)
            keep = [b for b, r in enumerate(active) if not r.finished]
            if len(keep) < len(active):
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                select_rows(rm_cache, rows)
                select_rows(lm_cache, rows)
                valid, tokens, next_pos = valid[rows], tokens[rows], next_pos[rows]
                active = [active[b] for b in keep]
            if not active:
                break
            # The chosen token enters the LM at next_pos; its RM K/V is already committed.
            step_mask = candidate_mask(valid[:, :-1], 1, dtype)  # [B, 1, 1, P + 1]
            logits = next_token_logits(self.lm, input_ids=tokens, attention_mask=step_mask,
                                       position_ids=next_pos[:, None], cache=lm_cache, use_cache=True)  # [B, V]
            next_pos = next_pos + 1

    def _score_prompts(self, reqs: list[Request], ids, valid, pos, dtype) -> None:
        """params.prompt_logprobs: each prompt token's log p under the LM (None for the first) and its
        alternatives, from one full-logits forward of the rows that ask (the oracle's way: plain HF)."""
        want = [b for b, r in enumerate(reqs) if r.params.prompt_logprobs is not None]
        if not want:
            return
        rows = torch.tensor(want, device=ids.device)
        logits = self.lm(input_ids=ids[rows], attention_mask=prefill_mask(valid[rows], dtype),
                         position_ids=pos[rows]).logits  # [W, L, V]
        L = ids.shape[1]
        for i, b in enumerate(want):
            r, n = reqs[b], reqs[b].params.prompt_logprobs
            P = len(r.prompt_ids)
            nxt = torch.tensor(r.prompt_ids[1:], device=ids.device)  # [P - 1]: position p scores token p + 1
            cols = torch.cat(logprob_columns(logits[i, L - P:L - 1], nxt, n), 1).tolist()  # [P - 1, 1 + 2n]
            lp, top = logprob_lists(cols, n, n)
            r.prompt_logprobs, r.prompt_top_logprobs = [None] + lp, [None] + top
