"""Additive 4D attention masks [B, 1, Q, K] for left-padded batches, and the RM cache commit.

Masks are float (0 keeps, dtype-min drops) so eager and SDPA attention read them alike. Every query row keeps
at least itself, so pad rows never turn into NaN that could leak through a zero-weight value read.
"""
from __future__ import annotations

import torch


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def prefill_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """valid [B, T] (False on left padding) -> causal mask over valid keys [B, 1, T, T]."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()  # [T, T]
    keep = causal[None] & valid[:, None, :]  # [B, T, T]
    keep |= torch.eye(T, dtype=torch.bool, device=valid.device)[None]
    return _additive(keep, dtype)[:, None]


def candidate_mask(valid: torch.Tensor, n_new: int, dtype: torch.dtype) -> torch.Tensor:
    """The depth-1 tree: each of n_new queries sees the valid prefix [B, P] and itself only -> [B, 1, n, P + n]."""
    B, P = valid.shape
    prefix = valid[:, None, :].expand(B, n_new, P)  # [B, n, P]
    own = torch.eye(n_new, dtype=torch.bool, device=valid.device)[None].expand(B, n_new, n_new)
    return _additive(torch.cat([prefix, own], dim=2), dtype)[:, None]


def prefix_positions(valid: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0.. over the valid tokens, 0 on padding. [B, T]"""
    return (valid.long().cumsum(1) - 1).clamp_min(0)


def commit_candidates(cache, choice: torch.Tensor, n_cand: int) -> None:
    """The cache holds prefix + n_cand candidate entries per row; keep the prefix plus the chosen one.

    choice [B]. Only the chosen token's K/V (computed in the candidate forward) survives; nothing is recomputed
    and the prefix is never replicated per candidate."""
    for layer in cache.layers:
        for name in ("keys", "values"):
            kv = getattr(layer, name)  # [B, H, P + n, D]
            B, H, _, D = kv.shape
            picked = kv[:, :, -n_cand:].gather(2, choice.view(B, 1, 1, 1).expand(B, H, 1, D))  # [B, H, 1, D]
            setattr(layer, name, torch.cat([kv[:, :, :-n_cand], picked], dim=2))


def select_rows(cache, rows: torch.Tensor) -> None:
    """Keep only `rows` of the batch (finished sequences leave the batch)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
