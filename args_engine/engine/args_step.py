"""The ARGS step on device tensors, one definition for every step mode (eager, static, CUDA graph), gated and
ungated rows, one device or two:

    controlled logits [B, V] -> top-k -> gate -> RM candidate forward -> reward -> select + commit

Ragged k: the RM reads each row's own k_b candidates, sum(k_b) tokens in all, never B x kmax. The candidates sit
in a [B, kmax] grid (top-kmax of each row); `scored` [N] lists the grid cells the RM reads (b * kmax + j, j < k_b),
and the dense work (embedding, projections, MLP, head) runs on those N tokens alone. Only the attention sees the
grid: each row's prefix is read once for all its candidates (the shared-prefix trick), and an unscored cell is
a zero query whose output nobody reads. In static shapes N is padded to a bucket with unscored cells (computed,
never chosen: selection stops at k_b).

The gate (params.gate = tau) is decided on the device: a row whose top token has log p >= log tau takes that
token, k_b -> 1, with no host round trip. What the RM then skips depends on where it runs: on a CPU RM in eager
mode the grid is re-listed from the gated k (reading a CPU tensor costs no transfer, and compute is what a CPU
step spends: ~k-fold less RM work on a gated row); on CUDA, or in static/graph shapes, the gated row keeps its
cells and the selection masks all but its top one (no synchronization; on a GPU the k candidates of a row cost
about what one does, the step being bound by reading the weights and the prefix). The choice is the same.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..models.hf import combine_objectives
from ..models.llama import PagedLlama
from ..models.paged_ops import PagedOps


def on_device(device: torch.device):
    """Kernels launch on the current CUDA device: make it `device` (the RM's, for the RM's work)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def scored_cells(k: np.ndarray, kmax: int, pad_to: int | None = None) -> np.ndarray | None:
    """Host: the grid cells b * kmax + j (j < k[b]) of the candidates the RM reads, [N] int64, or None when the
    RM reads the whole grid. pad_to (static shapes): N padded to this count with the first unscored cells,
    which the selection ignores (None when that is the whole grid)."""
    B = len(k)
    inside = np.arange(kmax)[None, :] < k[:, None]  # [B, kmax]
    if inside.all() or (pad_to is not None and pad_to >= B * kmax):
        return None
    flat = inside.reshape(-1)
    cells = np.flatnonzero(flat)  # [N]
    if pad_to is not None and pad_to > len(cells):
        cells = np.concatenate([cells, np.flatnonzero(~flat)[:pad_to - len(cells)]])
    return cells.astype(np.int64)


def cells_bucket(n: int) -> int:
    """Static shapes: a bucket for the scored-candidate count N (2^i or 1.5 x 2^i: at most a third wasted)."""
    b = 1 << max(0, (n - 1).bit_length())
    return b * 3 // 4 if n <= b * 3 // 4 and b >= 4 else b


class ArgsStep:
    """The step itself. `kv`: the RM's paged cache (k, v), set once the caches are allocated. lm_head: with a
    shared trunk, the LM head that turns the chosen candidate's hidden state into the next step's logits."""

    def __init__(self, ops: PagedOps, rm: PagedLlama, rm_head, lm_head=None, compact_gate: bool = False):
        self.ops, self.rm, self.rm_head, self.lm_head = ops, rm, rm_head, lm_head
        self.compact_gate = compact_gate
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, kmax: int, logits, tables, pos, rm_slots, k, w, temp, gumbel=None, rm_w=None, gate=None,
                 scored=None) -> dict[str, torch.Tensor]:
        """logits [B, V] (controlled, on the LM's device); tables [B, W], pos, rm_slots [B]; k [B] int32; w, temp
        [B] float64; gumbel [B, kmax] (stochastic rows); rm_w [B, N] (a multi-objective RM's weights); gate [B]
        float64 (log tau, +inf where a row has no gate); scored [N] (ragged k: the grid cells read).
        -> tokens [B], rewards [B] (the chosen's), k [B] (the candidates each row chose among: 1 where gated) and,
        with a shared trunk, next_logits [B, V]."""
        logp, cand = self.ops.topk_logprobs(logits, kmax)  # [B, kmax], ties: the lower id first
        dev = self.rm.device
        logp, cand = logp.to(dev), cand.to(dev)  # the rest is the RM's work
        B = cand.shape[0]
        with on_device(self.rm.device):
            if gate is not None:
                k = torch.where(logp[:, 0].double() >= gate, 1, k)  # [B]: the gate takes the top token alone
                if self.compact_gate:  # a CPU RM: re-list the cells (no transfer), skip the gated rows' others
                    scored = self._listed(k, kmax)
            hidden, new_k, new_v = self.rm.forward_candidates(cand, pos, tables, pos, self.kv, scored=scored)
            heads = self.rm_head(hidden)  # [B, kmax, O], or [N, O] for the scored cells
            if scored is not None:
                heads = heads.new_zeros(B * kmax, heads.shape[-1]).index_copy_(0, scored, heads)
                heads = heads.view(B, kmax, -1)  # [B, kmax, O]: unscored cells 0, never chosen
            rewards = combine_objectives(heads, rm_w)  # [B, kmax]
            choice, tokens, chosen = self.ops.args_select(logp, rewards, cand, k, w, temp, gumbel, new_k, new_v,
                                                          self.kv[0], self.kv[1], rm_slots)
            out = {"tokens": tokens, "rewards": chosen, "k": k}
            if self.lm_head is not None:
                cell = choice + torch.arange(0, B * kmax, kmax, device=dev)  # [B]: b * kmax + choice_b
                if scored is not None:  # where each cell's hidden state sits among the N scored
                    where = torch.zeros(B * kmax, dtype=torch.int64, device=dev)
                    where.index_copy_(0, scored, torch.arange(len(scored), device=dev))
                    cell = where[cell]
                out["next_logits"] = self.lm_head(hidden.reshape(-1, hidden.shape[-1])[cell])  # [B, V]
        return out

    @staticmethod
    def _listed(k: torch.Tensor, kmax: int) -> torch.Tensor | None:
        """The cells of k [B] (a CPU tensor: no transfer) -> scored [N], or None when every row reads kmax."""
        cells = scored_cells(k.numpy(), kmax)
        return None if cells is None else torch.from_numpy(cells)
