"""The ARGS step's "score the candidates" part for an RM that reads text (another tokenizer, or an encoder;
decoding/bridge.py): it plugs into engine/args_step.py as PagedRM does, so top-k, gate and pick are the step's own.

The tokenizer needs the candidates on the host: they come back with each row's k (1 where the gate took the top
token) in one read, the bridged step's one extra. Then a native-family decoder RM scores every row's candidates on
its paged cache (paged_bridge.py), an encoder every row's candidate texts in one batch, any other RM each row on
its own HF cache (BridgeScorer). The rewards go to the step's device and the step picks as always; once the
step's one read has brought the tokens back, `commit` has each row's RM cache keep its choice and returns what
the RM pool must record for it (applied by the engine, never by the runner)."""
from __future__ import annotations

from typing import Callable

import torch

from ..decoding.bridge import BridgeScorer, BridgeState
from ..kernels.refs import args_pick
from ..models.hf import RewardModel
from ..models.paged_ops import PagedOps
from .paged_bridge import PagedBridge
from .sequence import Sequence
from .step_inputs import HostRead


class BridgedRM:
    """device: where the step runs (the LM's); the RM itself runs where it was loaded."""

    def __init__(self, bridge: BridgeScorer, rm: RewardModel, paged: PagedBridge | None, device: torch.device,
                 read: HostRead):
        self.bridge, self.rm, self.paged, self.device, self.read = bridge, rm, paged, device, read
        self.rm_device = next(rm.model.parameters()).device
        self.dtype = next(rm.model.parameters()).dtype  # the rewards' dtype, as the reference's
        self._pending: tuple[list[list[int]], Callable[[list[int]], None] | None] | None = None

    def score(self, cand: torch.Tensor, k: torch.Tensor, seqs: list[Sequence], **_unused):
        """cand [R, kmax], k [R] (R >= len(seqs): static padding rows score nothing) -> rewards [R, kmax] on the
        step's device (0 past each row's k, never chosen), None."""
        B, dev = len(seqs), self.rm_device
        host = self.read(torch.cat([cand[:B].double(), k[:B, None].double()], 1))  # exact: ids < 2**53
        cands = [[int(c) for c in row[:int(row[-1])]] for row in host]
        rewards = torch.zeros(cand.shape, dtype=self.dtype, device=dev)  # [R, kmax]
        weights = self.rm.row_weights([s.params.rm_weights for s in seqs], dev)  # [B, N] or None
        if self.paged is not None:
            scored, commit = self.paged.score(seqs, cands, weights)  # [B, n]
            rewards[:B, :scored.shape[1]] = scored
        elif self.rm.is_encoder:  # no cache: every row's candidate texts in one encoder forward
            for b, r in enumerate(self.bridge.score_encoder_rows([s.req for s in seqs], cands, weights, dev)):
                rewards[b, :len(r)] = r
            commit = None
        else:
            commits = []
            for b, s in enumerate(seqs):
                if s.bridge_state is None:
                    s.bridge_state = BridgeState()
                row_w = None if weights is None else weights[b:b + 1]  # [1, N]
                r, c = self.bridge.score(s.req, cands[b], s.bridge_state, row_w, dev)
                rewards[b, :len(r)] = r
                commits.append(c)

            def commit(choice: list[int]) -> list:
                for c, j in zip(commits, choice):
                    c(j)
                return []  # each row's HF cache is its own: no pool
        self._pending = (cands, commit)
        return rewards.to(self.device), None

    @staticmethod
    def select(ops: PagedOps, logp, rewards, cand, k, w, temp, gumbel, _scored):
        """The pick (the torch one, which the kernel's equals), nothing to commit on the device (the RM's cache is
        kept by `commit`)."""
        return args_pick(logp, rewards, cand, k, w, temp, gumbel)

    def commit(self, tokens: list[int]) -> list:
        """The step's chosen tokens (host, from its one read): each row's RM cache keeps that candidate.
        -> the RM pool's bookkeeping, [(seq, RM token ids, how many are cached)] (a paged RM; else empty)."""
        cands, commit = self._pending
        self._pending = None
        if commit is None:
            return []
        return commit([cs.index(t) for cs, t in zip(cands, tokens)])  # a row's candidates are distinct tokens
