"""The ARGS step on device tensors, one definition for every step mode (eager, static, CUDA graph), gated and
ungated rows, one device or two, and every reward model:

    logits [B, V] -> logit controls -> top-k -> gate -> score the candidates -> select + commit

"Score the candidates" is the one part that depends on the RM. `PagedRM` (here) is the native case: an RM on
the LM's tokenizer, run on its paged cache. `BridgedRM` (engine/bridged_rm.py) is an RM that reads text
(another tokenizer, or an encoder). Both return rewards [B, kmax]; the pick is the same for both (args_select's
definition: log p + w * reward, ties by the lower candidate index, as the kernel breaks them).

Ragged k: the RM reads each row's own k_b candidates, sum(k_b) tokens in all, never B x kmax. The candidates sit
in a [B, kmax] grid (top-kmax of each row); `scored` [N] lists the grid cells the RM reads (b * kmax + j, j < k_b),
and the dense work (embedding, projections, MLP, head) runs on those N tokens alone. Only the attention sees the
grid: each row's prefix is read once for all its candidates (the shared-prefix trick), and an unscored cell is
a zero query whose output nobody reads. A static-shape step (a CUDA graph) reads its whole grid, rows x graph_k:
one shape per batch bucket; the cells past a row's k are computed, never chosen (selection stops at k_b).

The gate (params.gate = tau) is decided on the device: a row whose top token has log p >= log tau takes that
token, k_b -> 1, with no host round trip. What the RM then skips depends on where it runs: on a CPU RM in eager
mode the grid is re-listed from the gated k (reading a CPU tensor costs no transfer, and compute is what a CPU
step spends: ~k-fold less RM work on a gated row); on CUDA, or in static/graph shapes, the gated row keeps its
cells and the selection masks all but its top one (no synchronization; on a GPU the k candidates of a row cost
about what one does, the step being bound by reading the weights and the prefix). The choice is the same.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..decoding.logit_controls import apply_controls
from ..models.hf import combine_objectives
from ..models.llama import PagedLlama
from ..models.paged_ops import PagedOps


def on_device(device: torch.device):
    """Kernels launch on the current CUDA device: make it `device` (the RM's, for the RM's work)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def scored_cells(k: np.ndarray, kmax: int) -> np.ndarray | None:
    """Host: the grid cells b * kmax + j (j < k[b]) of the candidates the RM reads, [N] int64, or None when the
    RM reads the whole grid."""
    inside = np.arange(kmax)[None, :] < k[:, None]  # [B, kmax]
    return None if inside.all() else np.flatnonzero(inside.reshape(-1)).astype(np.int64)


class ArgsStep:
    """The step itself. scorer: the RM's part (PagedRM, or BridgedRM for an RM that reads text). lm_head: with a
    shared trunk, the LM head that turns the chosen candidate's hidden state into the next step's logits.
    compact_gate: a CPU RM in eager steps skips the gated rows' other candidates (see the module docstring)."""

    def __init__(self, ops: PagedOps, scorer, lm_head=None, compact_gate: bool = False):
        self.ops, self.scorer, self.lm_head, self.compact_gate = ops, scorer, lm_head, compact_gate

    def __call__(self, kmax: int, seqs, controls, logits, k, w, temp, gumbel=None, gate=None,
                 **rm_inputs) -> dict[str, torch.Tensor]:
        """logits [B, V] (the LM's, on its device); k [B] int32; w, temp [B] float64; gumbel [B, kmax] (stochastic
        rows); gate [B] float64 (log tau, +inf where a row has no gate); seqs: the step's sequences (None but for
        an RM that reads text); controls: (control_arrays' tensors, the controlled rows' tokens [C, L]), or None
        when the logits come controlled (a captured step: the controls' shapes change every step);
        rm_inputs: the scorer's own arrays.
        -> tokens [B], rewards [B] (the chosen's), k [B] (the candidates each row chose among: 1 where gated) and,
        with a shared trunk, next_logits [B, V]."""
        if controls is not None:
            logits = apply_controls(logits, *controls)  # [B, V]
        logp, cand = self.ops.topk_logprobs(logits, kmax)  # [B, kmax], ties: the lower id first
        dev = self.scorer.device
        logp, cand = logp.to(dev), cand.to(dev)  # the rest is the RM's work
        with on_device(dev):
            if gate is not None:
                taken = logp[:, 0].double() >= gate  # [B]: the gate takes the top token alone
                k = k.masked_fill(taken, 1)
                if self.compact_gate:  # a CPU RM: skip the gated rows' other candidates
                    rm_inputs["scored"] = self._listed(k, taken, kmax, rm_inputs.get("scored"))
            rewards, scored = self.scorer.score(cand, k, seqs, **rm_inputs)  # [B, kmax]
            choice, tokens, chosen = self.scorer.select(self.ops, logp, rewards, cand, k, w, temp, gumbel, scored)
            out = {"tokens": tokens, "rewards": chosen, "k": k}
            if self.lm_head is not None:
                out["next_logits"] = self.lm_head(scored.chosen_hidden(choice))  # [B, V]
        return out

    @staticmethod
    def _listed(k: torch.Tensor, taken: torch.Tensor, kmax: int, scored: torch.Tensor | None) -> torch.Tensor | None:
        """The cells of k [B] once the gate took the rows `taken` [B] (CPU tensors: reading them costs no transfer)
        -> scored [N], or None when every row reads kmax; `scored` as it came when the gate took no row."""
        if not taken.numpy().any():
            return scored
        cells = scored_cells(k.numpy(), kmax)
        return None if cells is None else torch.from_numpy(cells)


@dataclass
class _Scored:
    """What the select and the next logits need from a PagedRM candidate forward."""

    hidden: torch.Tensor  # [B, kmax, H], or [N, H] for the scored cells
    new_k: torch.Tensor  # the candidates' K/V, every layer
    new_v: torch.Tensor
    rm_slots: torch.Tensor  # [B]: where each row's chosen candidate is committed
    cells: torch.Tensor | None  # [N]: the grid cells the RM read (ragged k), or None: all
    kmax: int

    def chosen_hidden(self, choice: torch.Tensor) -> torch.Tensor:
        """choice [B] -> the chosen candidates' hidden states [B, H]."""
        B = len(choice)
        cell = choice + torch.arange(0, B * self.kmax, self.kmax, device=choice.device)  # [B]: b * kmax + choice_b
        if self.cells is not None:  # where each cell's hidden state sits among the N scored
            where = torch.zeros(B * self.kmax, dtype=torch.int64, device=choice.device)
            where.index_copy_(0, self.cells, torch.arange(len(self.cells), device=choice.device))
            cell = where[cell]
        return self.hidden.reshape(-1, self.hidden.shape[-1])[cell]


class PagedRM:
    """Scores the candidates with an RM on the LM's tokenizer, on its paged cache (`kv`: (k, v), set once the
    caches are allocated): one candidate forward reads each row's prefix once for all its candidates, and the
    select commits the chosen candidate's K/V into the row's RM slot (args_select: one fused kernel)."""

    def __init__(self, rm: PagedLlama, head):
        self.rm, self.head, self.device = rm, head, rm.device
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def score(self, cand, k, seqs, tables, pos, rm_slots, rm_w=None, scored=None):
        """cand [B, kmax]; tables [B, W], pos, rm_slots [B]; rm_w [B, N] (a multi-objective RM's weights); scored
        [N] (ragged k: the grid cells read). -> rewards [B, kmax] (unscored cells 0, never chosen), _Scored."""
        B, kmax = cand.shape
        hidden, new_k, new_v = self.rm.forward_candidates(cand, pos, tables, pos, self.kv, scored=scored)
        heads = self.head(hidden)  # [B, kmax, O], or [N, O] for the scored cells
        if scored is not None:
            heads = heads.new_zeros(B * kmax, heads.shape[-1]).index_copy_(0, scored, heads).view(B, kmax, -1)
        return combine_objectives(heads, rm_w), _Scored(hidden, new_k, new_v, rm_slots, scored, kmax)

    def select(self, ops: PagedOps, logp, rewards, cand, k, w, temp, gumbel, scored: _Scored):
        """-> choice, tokens, the chosen's rewards [B]; the chosen K/V written to each row's RM slot."""
        return ops.args_select(logp, rewards, cand, k, w, temp, gumbel, scored.new_k, scored.new_v, *self.kv,
                               scored.rm_slots)
