"""One final scoring pass of responses under the decoding RM: the reward of the dialogue rendered exactly as
decoding renders it (chat template + reply tokens, no end-of-turn), read at its last token."""
from __future__ import annotations

from typing import Sequence

import torch

from ..chat import render_dialogue
from ..models.hf import RewardModel, context_length
from .prompts import Messages


@torch.no_grad()
def score_replies(rm: RewardModel, tokenizer, prompts: Sequence[Messages], replies: Sequence[str],
                  batch_size: int = 16) -> list[float]:
    """Decoding-RM reward of each (prompt, reply); length-sorted right-padded batches."""
    limit = context_length(rm.config)
    seqs = [render_dialogue(tokenizer, m, r) for m, r in zip(prompts, replies)]
    seqs = [s[-limit:] if limit else s for s in seqs]  # keep the end: the reward reads the last token
    device = next(rm.parameters()).device
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        lens = [len(seqs[i]) for i in idx]
        ids = torch.zeros(len(idx), max(lens), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, :lens[row]] = torch.tensor(seqs[i])
            mask[row, :lens[row]] = 1
        hidden = rm.forward_trunk(input_ids=ids.to(device), attention_mask=mask.to(device))
        last = hidden[torch.arange(len(idx), device=device), torch.tensor(lens, device=device) - 1]
        for i, r in zip(idx, rm.rewards(last).double().tolist()):
            out[i] = r
    return out
