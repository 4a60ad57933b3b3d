"""The model runner's part for a decoder RM on another tokenizer, run natively on a paged cache of its own (the
bridge's definition and its exactness argument: decoding/bridge.py; the RM pool: rm_block_manager.py).

One ARGS step for B rows, each with its n candidates (k, or the top one where the gate takes it):
  1. host: every candidate's RM tokens from its whole text (one tokenizer call for all rows); the cache is cut
     back to what still begins them all (split_tails; usually nothing to cut);
  2. the tokens all candidates share past the cache (the prompt, at a sequence's first step) go through causal
     prefill forwards for every such row at once (forward_chunks, at most max_tokens tokens each), stored in the
     RM's blocks;
  3. every candidate's tail of RM tokens (one or a few) goes through one candidate forward for all rows: each
     tail token sees its row's paged prefix and its own tail's earlier tokens (the ragged tree of
     candidate_attention's `segments`), nothing is stored; the reward is read at each tail's last token;
  4. after the step's pick (engine/args_step.py, bridged_rm.py), the chosen tails' K/V are written to their
     rows' next RM slots in one indexed copy: the cache then holds that candidate's RM tokens. What the RM pool
     then holds (RMBlockManager.commit: settled tokens, blocks marked computed) is returned as requests that the
     engine applies once the step has succeeded. Only a cut (step 1) changes the pool mid-step: the re-tokenized
     text is known only then, and the extension's slots depend on it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..decoding.bridge import RMTextView, common_prefix, extension, split_tails
from ..models.hf import RewardModel
from ..models.llama import PagedLlama
from ..models.paged_ops import PagedOps, PrefillChunks
from .rm_block_manager import RMBlockManager
from .sequence import Sequence


@dataclass
class _Row:
    """One sequence in a bridged step: its candidates' RM tokens, how many the cache holds (keep), and where
    each candidate's tail sits in the step's flat row of new tokens."""

    seq: Sequence
    ids: list[list[int]]
    keep: int
    end: int
    offsets: list[int] = field(default_factory=list)

    def tail(self, c: int) -> list[int]:
        return self.ids[c][self.keep:]


class PagedBridge:
    def __init__(self, rm: RewardModel, view: RMTextView, ops: PagedOps):
        self.rm, self.view, self.ops = rm, view, ops
        self.model = PagedLlama(rm.model, ops)
        self.device = self.model.device
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None  # [L, NB, BS, Hkv, D] each (the runner makes them)
        self.blocks: RMBlockManager | None = None  # the RM pool (LLMEngine makes it)
        self.max_tokens = 2048  # tokens per causal forward (LLMEngine: its max_num_batched_tokens)
        self.rm_tokens_recomputed = 0  # cached RM tokens re-read because re-tokenization changed them

    @torch.no_grad()
    def score(self, seqs: list[Sequence], cands: list[list[int]], weights: torch.Tensor | None):
        """cands: each row's candidate LM tokens; weights [B, N] (multi-objective) or None.
        -> (rewards [B, max n] on the RM's device, commit(choice: list[int]) that writes each row's choice into
        the RM cache and returns the pool's bookkeeping for it: [(seq, RM token ids, how many are cached)])."""
        bm = self.blocks
        copies = bm.take_copies()
        if copies:
            self.ops.copy_blocks(*self.kv, torch.tensor(copies, dtype=torch.int64, device=self.device))
        ids = self.view.ids_rows([(s.req.rm_prefix, [s.req.out_ids + [c] for c in cs]) for s, cs in zip(seqs, cands)])
        rows = [self._plan(s, i) for s, i in zip(seqs, ids)]
        self.model.reserve_positions(max(len(c) for i in ids for c in i))  # its own tokens may pass its context
        self._extend([r for r in rows if r.end > r.keep])
        return self._score_tails(rows, weights)

    def _plan(self, seq: Sequence, ids: list[list[int]]) -> _Row:
        """ids: each candidate's RM tokens. Cut the cache back to what still begins them all."""
        bm = self.blocks
        cached = bm.cached_ids(seq)
        keep, shared = split_tails(cached, ids)
        settled = bm.settled_ids(seq)  # the allocator's tokens (some may not be cached yet) must hold too
        holds = common_prefix(settled, ids[0], min(len(settled), shared))
        if holds < len(settled):  # re-tokenization reached a settled token (cut re-allocates)
            keep = min(keep, holds)
        if keep < len(cached) or holds < len(settled):
            self.rm_tokens_recomputed += len(cached) - keep
            bm.cut(seq, ids[0], keep)
        keep = len(bm.cached_ids(seq))  # after a cut into settled tokens: what the prefix cache gave back
        return _Row(seq, ids, keep, min(extension(keep, shared), bm.capacity(seq)))

    def _extend(self, rows: list[_Row]) -> None:
        """The shared tokens past each row's cache, [keep, end), stored by causal forwards of at most max_tokens
        tokens each: a long prompt's RM tokens go in pieces, as the LM's prefill is chunked, so the step's
        activations stay bounded (a piece attends to the pieces before it through the cache)."""
        todo = rows
        while todo:
            pieces, budget = [], self.max_tokens
            for r in todo:
                if budget == 0:
                    break
                pieces.append((r, min(r.end - r.keep, budget)))
                budget -= pieces[-1][1]
            self._forward_pieces(pieces)
            todo = [r for r in todo if r.end > r.keep]

    def _forward_pieces(self, pieces: list[tuple[_Row, int]]) -> None:
        """One causal forward of each row's next n shared tokens, stored in its RM blocks."""
        bm, dev = self.blocks, self.device
        ids, pos, slots, spans, off = [], [], [], [], 0
        for r, n in pieces:
            ids += r.ids[0][r.keep:r.keep + n]
            pos += range(r.keep, r.keep + n)
            slots += bm.slots(r.seq, list(range(r.keep, r.keep + n)))
            spans.append((off, n, r.keep))
            off += n
        chunks = PrefillChunks(spans, bm.block_tables([r.seq for r, _ in pieces]).to(dev),
                               torch.tensor([0] + [o + n for o, n, _ in spans], dtype=torch.int32, device=dev),
                               torch.tensor([r.keep for r, _ in pieces], dtype=torch.int32, device=dev))
        self.model.forward_chunks(torch.tensor(ids, device=dev), torch.tensor(pos, device=dev),
                                  torch.tensor(slots, device=dev), chunks, self.kv)
        for r, n in pieces:
            r.keep += n  # the pool learns it with the step's commit

    def _score_tails(self, rows: list[_Row], weights):
        """Every candidate's tail in one candidate forward over the rows' paged prefixes (nothing stored)."""
        bm, dev = self.blocks, self.device
        flat, segs, pos = [], [], []
        for r in rows:
            f, g = [], []
            for c in range(len(r.ids)):
                r.offsets.append(len(f))
                f += r.tail(c)
                g += [c] * len(r.tail(c))
                r.seq.req.rm_tokens += len(r.tail(c)) - 1  # the tail's extra tokens (the step counts one)
            flat.append(f)
            segs.append(g)
            pos.append([r.keep + i - r.offsets[c] for i, c in enumerate(g)])
        S = max(map(len, flat))
        for f, g, p, r in zip(flat, segs, pos, rows):  # padding: a segment of its own each, at the row's position
            pad = S - len(f)
            f += [0] * pad
            g += range(len(r.ids), len(r.ids) + pad)
            p += [r.keep] * pad
        seqs = [r.seq for r in rows]
        hidden, new_k, new_v = self.model.forward_candidates(
            torch.tensor(flat, device=dev), torch.tensor(pos, device=dev), bm.block_tables(seqs).to(dev),
            torch.tensor([r.keep for r in rows], dtype=torch.int32, device=dev), self.kv,
            segments=torch.tensor(segs, dtype=torch.int32, device=dev))  # [B, S, H]; K/V [L, B, S, Hkv, D]
        n = max(len(r.ids) for r in rows)
        last = torch.tensor([[o + len(r.tail(c)) - 1 for c, o in enumerate(r.offsets)] + [0] * (n - len(r.ids))
                             for r in rows], device=dev)  # [B, n]: each tail's last token
        h = hidden[torch.arange(len(rows), device=dev)[:, None], last]  # [B, n, H]
        rewards = self.rm.rewards(h, weights)  # [B, n]

        def commit(choice: list[int]) -> list[tuple[Sequence, list[int], int]]:
            """Write each row's chosen tail K/V to its next RM slots (as many as its blocks cover)."""
            src_b, src_s, slots, held = [], [], [], []
            for b, (r, j) in enumerate(zip(rows, choice)):
                m = min(len(r.tail(j)), bm.capacity(r.seq) - r.keep)
                src_b += [b] * m
                src_s += range(r.offsets[j], r.offsets[j] + m)
                slots += bm.slots(r.seq, list(range(r.keep, r.keep + m)))
                held.append((r.seq, r.ids[j], r.keep + m))
            if slots:
                b_idx, s_idx = torch.tensor(src_b, device=dev), torch.tensor(src_s, device=dev)
                at = torch.tensor(slots, device=dev)
                for new, cache in ((new_k, self.kv[0]), (new_v, self.kv[1])):
                    cache.view(cache.shape[0], -1, *cache.shape[3:])[:, at] = new[:, b_idx, s_idx]
            return held
        return rewards, commit
