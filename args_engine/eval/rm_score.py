"""One final scoring pass of responses under the decoding RM: the reward of the dialogue rendered exactly as
decoding renders it, read at its last token. On the LM's tokens: chat template + reply tokens, no end-of-turn.
An RM that reads text (another tokenizer, or an encoder; decoding/bridge.py): the prompt in the RM's own chat
template + the reply's text, tokenized by the RM's tokenizer, as the bridge defines it."""
from __future__ import annotations

from typing import Sequence

import torch

from ..chat import render_dialogue
from ..decoding.bridge import RMTextView
from ..models.hf import RewardModel, context_length
from ..reward.train import right_padded
from .prompts import Messages


@torch.no_grad()
def score_replies(rm: RewardModel, tokenizer, prompts: Sequence[Messages], replies: Sequence[str],
                  batch_size: int = 16, view: RMTextView | None = None) -> list[float]:
    """Decoding-RM reward of each (prompt, reply); length-sorted batches. view: the engine's RMTextView when
    the RM reads text (ARGSEngine.bridge)."""
    if view is None:
        seqs = [render_dialogue(tokenizer, m, r) for m, r in zip(prompts, replies)]
    else:
        texts = [view.prefix(m, raw=False) + r for m, r in zip(prompts, replies)]
        if rm.is_encoder:
            return _score_encoder(rm, view, texts, batch_size)
        seqs = view.text_ids(texts)
    limit = context_length(rm.config)
    seqs = [s[-limit:] if limit else s for s in seqs]  # keep the end: the reward reads the last token
    device = next(rm.parameters()).device
    out = [0.0] * len(seqs)
    for idx in _by_length([len(s) for s in seqs], batch_size):
        lens = [len(seqs[i]) for i in idx]
        ids, mask = right_padded([seqs[i] for i in idx])  # [b, T]
        hidden = rm.forward_trunk(input_ids=ids.to(device), attention_mask=mask.to(device))  # [b, T, H]
        last = hidden[torch.arange(len(idx), device=device), torch.tensor(lens, device=device) - 1]  # [b, H]
        for i, r in zip(idx, rm.rewards(last).double().tolist()):
            out[i] = r
    return out


def _score_encoder(rm: RewardModel, view: RMTextView, texts: list[str], batch_size: int) -> list[float]:
    """An encoder RM's classifier on each text (truncated from the left to its maximum length, as decoding)."""
    device = next(rm.parameters()).device
    out = [0.0] * len(texts)
    for idx in _by_length([len(t) for t in texts], batch_size):
        rewards = rm.encoder_rewards(view.encode_texts([texts[i] for i in idx], device, rm.is_adapter))  # [b]
        for i, r in zip(idx, rewards.double().tolist()):
            out[i] = r
    return out


def _by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
