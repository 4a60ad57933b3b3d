"""The only part of the native engine that builds tensors: paged caches for the LM and the RM, prefill chunks,
LM decode, and the ARGS step (top-k, RM candidate forward, select + commit).

Shared trunk: when the RM is a scalar head on the LM's own trunk (the default RM is), the two models compute
the same K/V and hidden states for the same tokens. Then one cache serves both, and the chosen candidate's
hidden state from the RM forward is exactly what the LM would compute for that token at the next step: its
logits come from lm_head directly, and the LM decode forward disappears (one trunk forward per step)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..models.hf import RewardModel, shares_trunk
from ..models.llama import PagedLlama
from ..models.paged_ops import PagedOps
from ..decoding.common import gated, selection_inputs
from ..decoding.logit_controls import apply_logit_controls
from .sequence import Sequence


def cache_bytes_per_block(models: list[PagedLlama], block_size: int) -> int:
    return sum(2 * m.num_layers * block_size * m.num_kv_heads * m.head_dim * m.dtype.itemsize for m in models)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled cache. On CPU it comes from calloc (numpy), so the OS commits a page only when a block is
    first written: resident memory follows the blocks in use, not the cache's size."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = dtype.itemsize * math.prod(shape)
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)


class ModelRunner:
    def __init__(self, lm, rm: RewardModel, block_size: int, use_triton: bool, share_trunk: bool | None = None):
        self.ops = PagedOps(use_triton)
        self.shared = shares_trunk(lm, rm.model) if share_trunk is None else share_trunk
        self.lm = PagedLlama(lm, self.ops)
        self.rm = self.lm if self.shared else PagedLlama(rm.model, self.ops)
        self.lm_head, self.rm_head = lm.get_output_embeddings(), rm.head
        self.device = self.lm.device
        self.block_size = block_size
        self.lm_kv = self.rm_kv = None
        self.next_logits: dict[int, torch.Tensor] = {}  # shared trunk: seq_id -> LM logits [V] of its next token

    @property
    def models(self) -> list[PagedLlama]:
        return [self.lm] if self.shared else [self.lm, self.rm]

    def allocate_caches(self, num_blocks: int) -> None:
        """k, v [L, num_blocks, block_size, Hkv, D] for each model (one for both with a shared trunk)."""
        def alloc(m: PagedLlama):
            shape = (m.num_layers, num_blocks, self.block_size, m.num_kv_heads, m.head_dim)
            return tuple(_zeros(shape, m.dtype, m.device) for _ in range(2))
        self.lm_kv = alloc(self.lm)
        self.rm_kv = self.lm_kv if self.shared else alloc(self.rm)

    def _dev(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        src, dst = (torch.tensor(c, device=self.device) for c in zip(*pairs))
        for k, v in {id(kv): kv for kv in (self.lm_kv, self.rm_kv)}.values():
            k[:, dst], v[:, dst] = k[:, src], v[:, src]

    @torch.no_grad()
    def prefill(self, chunks: list[tuple[Sequence, int]], tables: torch.Tensor, slots: torch.Tensor):
        """Run chunks through both trunks (same tokens, same slots). -> LM logits [R, V] for the sequences whose
        prompt is now complete (in chunk order)."""
        ids, positions, spans, last = [], [], [], []
        off = 0
        for i, (seq, n) in enumerate(chunks):
            start = seq.lm_cached
            ids += seq.token_ids[start:start + n]
            positions += range(start, start + n)
            spans.append((off, n, start, tables[i]))
            off += n
            if start + n == seq.num_tokens:
                last.append(off - 1)
        ids_t = torch.tensor(ids, device=self.device)
        pos_t = torch.tensor(positions, device=self.device)
        h_lm = self.lm.forward_chunks(ids_t, pos_t, slots, spans, self.lm_kv)  # [N, H]
        if not self.shared:
            self.rm.forward_chunks(ids_t, pos_t, slots, spans, self.rm_kv)
        return self.lm_head(h_lm[last])

    @torch.no_grad()
    def decode(self, seqs: list[Sequence], tables: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The LM reads each sequence's last committed token. slots [B]: its slot. -> logits [B, V]"""
        if self.shared:  # computed by the previous step's candidate forward
            return torch.stack([self.next_logits.pop(s.seq_id) for s in seqs])
        ids = torch.tensor([[s.token_ids[-1]] for s in seqs], device=self.device)  # [B, 1]
        pos = torch.tensor([s.num_tokens - 1 for s in seqs], device=self.device, dtype=torch.int32)
        h, _, _ = self.lm.forward_candidates(ids, pos, tables, pos, self.lm_kv, store_slots=slots)
        return self.lm_head(h[:, 0])

    @torch.no_grad()
    def args_step(self, seqs: list[Sequence], logits: torch.Tensor, tables: torch.Tensor, slots: torch.Tensor):
        """logits [B, V] of the next position of each sequence; slots [B]: that position's RM slot.
        -> (tokens [B], rewards [B], logprobs) on the CPU, the chosen K/V already committed to the RM cache.
        logprobs: None unless a sequence asks for them; else per sequence (log p of its token, [(token, log p)]
        of the N likeliest), or None for the sequences that do not ask.

        Rows the gate takes (params.gate) skip the candidate forward: the RM reads only their top token, whose
        K/V goes straight into the cache."""
        params = [s.params for s in seqs]
        kmax = max(p.k for p in params)
        controlled = apply_logit_controls(logits, params, [s.token_ids for s in seqs],
                                          [len(s.req.prompt_ids) for s in seqs])  # [B, V]
        logp, cand = self.ops.topk_logprobs(controlled, kmax)  # [B, kmax]
        pos = torch.tensor([s.num_tokens for s in seqs], device=self.device, dtype=torch.int32)
        gate = gated(params, logp[:, 0].tolist()) if any(p.gate is not None for p in params) else [False] * len(seqs)
        if not any(gate):
            tokens, chosen, hidden = self._score_candidates(seqs, logp, cand, pos, tables, slots)
        else:
            tokens = torch.empty(len(seqs), dtype=cand.dtype, device=self.device)  # [B]
            chosen = torch.empty(len(seqs), dtype=torch.float64, device=self.device)  # [B]
            hidden = None
            for rows, run in ((_rows(gate, False), self._score_candidates), (_rows(gate, True), self._take_top)):
                if not rows:
                    continue
                r = torch.tensor(rows, device=self.device)
                t, c, h = run([seqs[i] for i in rows], logp[r], cand[r], pos[r], tables[r], slots[r])
                tokens[r], chosen[r] = t, c.to(chosen.dtype)
                hidden = h.new_empty(len(seqs), h.shape[-1]) if hidden is None else hidden  # [B, H]
                hidden[r] = h
        for s, g in zip(seqs, gate):
            s.req.rm_tokens += 1 if g else s.params.k
        logprobs = _logprobs(params, logits, tokens)
        if self.shared:
            logits = self.lm_head(hidden)  # [B, V]: the LM's next-token logits after the choice
            for b, s in enumerate(seqs):
                self.next_logits[s.seq_id] = logits[b]
        return tokens.tolist(), chosen.double().tolist(), logprobs

    def _score_candidates(self, seqs, logp, cand, pos, tables, slots):
        """ARGS proper: the RM reads each row's candidates [B, kmax] against its prefix; args_select scores,
        chooses and commits the chosen K/V. -> (tokens [B], their rewards [B], their hidden states [B, H])"""
        kmax = max(s.params.k for s in seqs)
        logp, cand = logp[:, :kmax], cand[:, :kmax]
        hidden, new_k, new_v = self.rm.forward_candidates(cand, pos, tables, pos, self.rm_kv)  # [B, kmax, H]
        rewards = self.rm_head(hidden).squeeze(-1)  # [B, kmax]
        k, w, temp, gumbel = selection_inputs([s.params for s in seqs], [s.req.generator for s in seqs], kmax,
                                              self.device)
        choice, tokens, chosen = self.ops.args_select(logp, rewards, cand, k, w, temp, gumbel, new_k, new_v,
                                                      self.rm_kv[0], self.rm_kv[1], slots)
        return tokens, chosen, hidden[torch.arange(len(seqs), device=self.device), choice]

    def _take_top(self, seqs, logp, cand, pos, tables, slots):
        """Gated rows: the top token, read by the RM alone and stored at its slot. -> as _score_candidates"""
        top = cand[:, :1]  # [G, 1]
        hidden, _, _ = self.rm.forward_candidates(top, pos, tables, pos, self.rm_kv, store_slots=slots)  # [G, 1, H]
        return top[:, 0], self.rm_head(hidden[:, 0]).squeeze(-1), hidden[:, 0]


def _rows(flags: list[bool], value: bool) -> list[int]:
    return [i for i, f in enumerate(flags) if f is value]


def _logprobs(params, logits: torch.Tensor, tokens: torch.Tensor):
    """The LM's log p of the chosen tokens and its N likeliest tokens, for the rows whose params ask."""
    want = [p.logprobs for p in params]
    if all(n is None for n in want):
        return None
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # [B, V]
    chosen = logp.gather(1, tokens.view(-1, 1)).squeeze(1).tolist()  # [B]
    top_lp, top_ids = logp.topk(max(n or 0 for n in want), dim=-1)  # [B, N], most likely first
    top_lp, top_ids = top_lp.tolist(), top_ids.tolist()
    return [None if n is None else (chosen[b], list(zip(top_ids[b][:n], top_lp[b][:n])))
            for b, n in enumerate(want)]
