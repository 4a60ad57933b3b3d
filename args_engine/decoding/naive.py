"""The definitional oracle: no caches at all. Every step the LM reads the whole sequence, and the RM reads the
whole sequence once per candidate (x + v_j for j = 1..k). Slow on purpose; one request at a time, unpadded."""
from __future__ import annotations

import torch

from ..engine.request import Request, append_token
from ..models.hf import RewardModel, next_token_logits
from .bridge import bridged_rewards
from .common import gated, select_candidates, topk_logprobs
from .logit_controls import apply_logit_controls


class NaiveDecoder:
    name = "naive"

    def __init__(self, lm, rm: RewardModel, tokenizer, eos_ids: set[int], bridge=None):
        """bridge: an RMTextView when the RM reads text (another tokenizer, or an encoder): the definition of
        decoding/bridge.py, each candidate's text re-tokenized from scratch."""
        self.lm, self.rm, self.tokenizer, self.eos_ids, self.bridge = lm, rm, tokenizer, eos_ids, bridge

    @torch.no_grad()
    def run(self, reqs: list[Request], on_step=None) -> None:
        device = next(self.lm.parameters()).device
        for req in reqs:
            k = req.params.k
            while not req.finished:
                ids = torch.tensor([req.prompt_ids + req.out_ids], device=device)  # [1, T]
                logits = next_token_logits(self.lm, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                logits = apply_logit_controls(logits, [req.params], [req.prompt_ids + req.out_ids],
                                              [len(req.prompt_ids)])  # [1, V]
                logp, cand = topk_logprobs(logits, k)  # [1, k]
                n = 1 if gated([req.params], logp[:, 0].tolist())[0] else k  # the gate: the top token alone
                weights = self.rm.row_weights([req.params.rm_weights] * n, device)  # [n, N] or None
                if self.bridge is not None:
                    rewards = bridged_rewards(self.rm, self.bridge, req.rm_prefix, req.out_ids,
                                              cand[0, :n].tolist(), weights, device).view(1, n)
                else:
                    seqs = torch.cat([ids.expand(n, -1), cand[0, :n].view(n, 1)], dim=1)  # [n, T + 1]
                    hidden = self.rm.forward_trunk(input_ids=seqs, attention_mask=torch.ones_like(seqs),
                                                   use_cache=False)[:, -1]  # [n, H]
                    rewards = self.rm.rewards(hidden, weights).view(1, n)  # [1, n]
                j = select_candidates(logp[:, :n], rewards, [req], [n < k])[0].item()
                append_token(req, cand[0, j].item(), rewards[0, j].item(), self.tokenizer, self.eos_ids)
                if on_step:
                    on_step(1)
