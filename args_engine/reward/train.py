"""Bradley-Terry reward-model training: a scalar head on a frozen trunk, optionally with LoRA on the last layers.

Loss (ARGS paper, eq. 1): -log sigmoid(r(x, y_chosen) - r(x, y_rejected)). The reward is read on the last
token of the dialogue rendered exactly as decoding renders it (`chat.render_dialogue`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ..progress import progress_bar

from ..chat import render_dialogue
from ..decoding.masks import prefill_mask
from .data import PreferencePair, split_last_reply


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    return (r_chosen > r_rejected).double().mean().item()


def pair_token_ids(tokenizer, pairs: list[PreferencePair], max_len: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for p in pairs:
        ids = []
        for text in (p.chosen, p.rejected):
            messages, reply = split_last_reply(text)
            ids.append(render_dialogue(tokenizer, messages, reply)[-max_len:])  # keep the end: the reward reads it
        out.append((ids[0], ids[1]))
    return out


@dataclass
class TrunkFeatures:
    last: torch.Tensor             # [N, H] final (normed) hidden state at the last token
    tap: list[torch.Tensor] | None  # N x [T_i, H] input of the first tuned layer, when tuning layers


def right_padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ids [B, T] (zeros after each) and attention mask [B, T], T the longest."""
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(seqs):
        ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, :len(x)] = 1
    return ids, mask


@torch.no_grad()
def extract_features(trunk, sequences: list[list[int]], tap_layer: int | None = None, batch_size: int = 8,
                     desc: str = "features") -> TrunkFeatures:
    """Run the frozen trunk over each sequence once (length-sorted, right-padded batches)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    last = [None] * len(sequences)
    tap = [None] * len(sequences) if tap_layer is not None else None
    for s in progress_bar(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[s:s + batch_size]
        lens = [len(sequences[i]) for i in idx]
        ids, mask = right_padded([sequences[i] for i in idx])
        out = trunk(input_ids=ids, attention_mask=mask, output_hidden_states=tap_layer is not None)
        for row, i in enumerate(idx):
            last[i] = out.last_hidden_state[row, lens[row] - 1].float().clone()
            if tap is not None:
                tap[i] = out.hidden_states[tap_layer][row, :lens[row]].float().clone()
    return TrunkFeatures(torch.stack(last), tap)


def train_linear_head(f_chosen: torch.Tensor, f_rejected: torch.Tensor, l2: float = 1e-3, steps: int = 200,
                      more_pairs: tuple[torch.Tensor, torch.Tensor] | None = None, pairs_weight: float = 0.0,
                      gaps: torch.Tensor | None = None, gaps_weight: float = 0.0) -> torch.Tensor:
    """Weight w [H] minimising the BT loss of r = f @ w plus l2 * |w_std|^2 (full-batch L-BFGS). Optionally also
    pairs_weight x the BT loss of `more_pairs` (chosen, rejected [M, H]) and gaps_weight x the mean of
    (gaps @ w)^2 (gaps [V, H]: feature differences whose rewards should be equal); reward/prefix.py uses both.

    Features are standardised per dimension for the fit (a few hidden dimensions of LMs are huge outliers that
    an isotropic penalty would otherwise treat unfairly); the returned w applies to the raw features."""
    sd = torch.cat([f_chosen, f_rejected]).double().std(0).clamp_min(1e-6)  # [H]
    diff = (f_chosen - f_rejected).double() / sd  # [N, H]
    extra = (more_pairs[0] - more_pairs[1]).double() / sd if pairs_weight and more_pairs is not None else None
    gaps = gaps.double() / sd if gaps_weight and gaps is not None and len(gaps) else None
    w = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -F.logsigmoid(diff @ w).mean() + l2 * (w * w).sum()
        if extra is not None and len(extra):
            loss = loss - pairs_weight * F.logsigmoid(extra @ w).mean()
        if gaps is not None:
            loss = loss + gaps_weight * (gaps @ w).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach() / sd


def choose_l2_by_cv(f_chosen: torch.Tensor, f_rejected: torch.Tensor, grid=(1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0),
                    folds: int = 5, seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick the L2 strength by k-fold cross-validated pairwise accuracy on the training pairs only."""
    n = len(f_chosen)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    scores = {}
    for l2 in grid:
        acc = []
        for f in range(folds):
            held = order[f * n // folds:(f + 1) * n // folds]
            keep = torch.ones(n, dtype=torch.bool)
            keep[held] = False
            w = train_linear_head(f_chosen[keep], f_rejected[keep], l2=l2)
            acc.append(pairwise_accuracy(f_chosen[held].double() @ w, f_rejected[held].double() @ w))
        scores[l2] = sum(acc) / folds
    return max(scores, key=scores.get), scores


class LoRALinear(torch.nn.Module):
    """y = base(x) + x A^T B^T * (alpha / r); base frozen. B starts at zero so training starts at the base."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, seed: int):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        g = torch.Generator().manual_seed(seed)
        self.lora_A = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=g) / math.sqrt(base.in_features))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A.detach().clone(), (self.lora_B.detach() * self.scale).clone()


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def attach_lora(layers, rank: int, alpha: float, seed: int) -> dict[str, LoRALinear]:
    wrapped = {}
    for li, layer in layers:
        for parent_name, parent in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
            for name in LORA_TARGETS:
                if hasattr(parent, name) and isinstance(getattr(parent, name), torch.nn.Linear):
                    mod = LoRALinear(getattr(parent, name), rank, alpha, seed + len(wrapped))
                    setattr(parent, name, mod)
                    wrapped[f"model.layers.{li}.{parent_name}.{name}.weight"] = mod
    return wrapped


def _last_layers_reward(model, layers, h: torch.Tensor) -> torch.Tensor:
    """Reward of one sequence from the tap hidden states h [T, H] through the tuned layers, norm and head."""
    h = h.unsqueeze(0)  # [1, T, H]
    pos = torch.arange(h.shape[1]).unsqueeze(0)
    pos_emb = model.model.rotary_emb(h, pos)
    causal = prefill_mask(torch.ones(1, h.shape[1], dtype=torch.bool), h.dtype)  # [1, 1, T, T], any attention
    for layer in layers:
        h = layer(h, attention_mask=causal, position_ids=pos, position_embeddings=pos_emb)
        h = h[0] if isinstance(h, tuple) else h
    return model.score(model.model.norm(h[0, -1])).squeeze(-1)


def train_last_layers(model, n_layers: int, tap_chosen: list[torch.Tensor], tap_rejected: list[torch.Tensor],
                      rank: int = 8, epochs: int = 2, lr: float = 1e-3, batch_pairs: int = 8, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
    """LoRA on the last `n_layers` decoder layers plus the head, trained with the BT loss on cached tap
    hidden states. Returns the asset tensors (head weight and LoRA factors, B pre-scaled)."""
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    first = len(model.model.layers) - n_layers
    layers = [model.model.layers[i] for i in range(first, len(model.model.layers))]
    wrapped = attach_lora(list(enumerate(layers, start=first)), rank, alpha=2.0 * rank, seed=seed)
    model.score.weight.requires_grad_(True)
    params = [model.score.weight] + [p for m in wrapped.values() for p in (m.lora_A, m.lora_B)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n = len(tap_chosen)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g).tolist()
        bar = progress_bar(range(0, n, batch_pairs), desc=f"tune last {n_layers} layers, epoch {epoch + 1}/{epochs}")
        for s in bar:
            idx = order[s:s + batch_pairs]
            opt.zero_grad()
            rc = torch.stack([_last_layers_reward(model, layers, tap_chosen[i]) for i in idx])
            rr = torch.stack([_last_layers_reward(model, layers, tap_rejected[i]) for i in idx])
            loss = bradley_terry_loss(rc, rr)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    asset = {"score.weight": model.score.weight.detach().clone()}
    for name, mod in wrapped.items():
        a, b = mod.merged_factors()
        asset[name + ".lora_A"], asset[name + ".lora_B"] = a, b
    # unwrap so the model is the plain base model again
    for li, layer in enumerate(layers, start=first):
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                if isinstance(getattr(parent, name, None), LoRALinear):
                    setattr(parent, name, getattr(parent, name).base)
    return asset


@torch.no_grad()
def last_layers_rewards(model, n_layers: int, taps: list[torch.Tensor]) -> torch.Tensor:
    layers = list(model.model.layers)[-n_layers:]
    return torch.stack([_last_layers_reward(model, layers, h) for h in taps])
