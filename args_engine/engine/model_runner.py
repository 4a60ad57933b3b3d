"""The only part of the native engine that builds tensors: paged caches for the LM and the RM, prefill chunks,
LM decode, and the ARGS step (top-k, RM candidate forward, select + commit)."""
from __future__ import annotations

import torch

from ..models.hf import RewardModel
from ..models.llama import PagedLlama
from ..models.paged_ops import PagedOps
from .sequence import Sequence


def cache_bytes_per_block(models: list[PagedLlama], block_size: int) -> int:
    return sum(2 * m.num_layers * block_size * m.num_kv_heads * m.head_dim * m.dtype.itemsize for m in models)


class ModelRunner:
    def __init__(self, lm, rm: RewardModel, block_size: int, use_triton: bool):
        self.ops = PagedOps(use_triton)
        self.lm, self.rm = PagedLlama(lm, self.ops), PagedLlama(rm.model, self.ops)
        self.lm_head, self.rm_head = lm.get_output_embeddings(), rm.head
        self.device = self.lm.device
        self.block_size = block_size
        self.lm_kv = self.rm_kv = None

    def allocate_caches(self, num_blocks: int) -> None:
        """k, v [L, num_blocks, block_size, Hkv, D] for each model."""
        def alloc(m: PagedLlama):
            shape = (m.num_layers, num_blocks, self.block_size, m.num_kv_heads, m.head_dim)
            return tuple(torch.zeros(shape, dtype=m.dtype, device=m.device) for _ in range(2))
        self.lm_kv, self.rm_kv = alloc(self.lm), alloc(self.rm)

    def _dev(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        src, dst = (torch.tensor(c, device=self.device) for c in zip(*pairs))
        for k, v in (self.lm_kv, self.rm_kv):
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
        self.rm.forward_chunks(ids_t, pos_t, slots, spans, self.rm_kv)
        return self.lm_head(h_lm[last])

    @torch.no_grad()
    def decode(self, seqs: list[Sequence], tables: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The LM reads each sequence's last committed token. slots [B]: its slot. -> logits [B, V]"""
        ids = torch.tensor([[s.token_ids[-1]] for s in seqs], device=self.device)  # [B, 1]
        pos = torch.tensor([s.num_tokens - 1 for s in seqs], device=self.device, dtype=torch.int32)
        h, _, _ = self.lm.forward_candidates(ids, pos, tables, pos, self.lm_kv, store_slots=slots)
        return self.lm_head(h[:, 0])

    @torch.no_grad()
    def args_step(self, seqs: list[Sequence], logits: torch.Tensor, tables: torch.Tensor, slots: torch.Tensor):
        """logits [B, V] of the next position of each sequence; slots [B]: that position's RM slot.
        -> (tokens [B], rewards [B]) on the CPU, the chosen K/V already committed to the RM cache."""
        params = [s.params for s in seqs]
        kmax = max(p.k for p in params)
        logp, cand = self.ops.topk_logprobs(logits, kmax)  # [B, kmax]
        pos = torch.tensor([s.num_tokens for s in seqs], device=self.device, dtype=torch.int32)
        hidden, new_k, new_v = self.rm.forward_candidates(cand, pos, tables, pos, self.rm_kv)  # [B, kmax, H]
        rewards = self.rm_head(hidden).squeeze(-1)  # [B, kmax]
        k = torch.tensor([p.k for p in params], device=self.device, dtype=torch.int32)
        w = torch.tensor([p.w for p in params], device=self.device, dtype=logp.dtype)
        temp = torch.tensor([p.temperature if p.mode == "stochastic" else 0.0 for p in params], device=self.device,
                            dtype=torch.float64)
        gumbel = None
        if any(p.mode == "stochastic" for p in params):
            gumbel = torch.zeros(len(seqs), kmax, dtype=torch.float64)
            for b, s in enumerate(seqs):
                if s.params.mode == "stochastic":  # each request's own generator: independent of the batch
                    u = torch.rand(s.params.k, generator=s.req.generator, dtype=torch.float64)
                    gumbel[b, :s.params.k] = -torch.log(-torch.log(u.clamp_min(1e-300)))
            gumbel = self._dev(gumbel)
        _, tokens, chosen = self.ops.args_select(logp, rewards, cand, k, w, temp, gumbel, new_k, new_v,
                                                 self.rm_kv[0], self.rm_kv[1], slots)
        return tokens.tolist(), chosen.double().tolist()
