"""The engine's view of the C++ block allocator (args_engine._C.BlockAllocator). One block table per sequence
indexes both the LM and the RM cache: both hold the same token positions."""
from __future__ import annotations

import torch

from .. import _C
from .sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.allocator = _C.BlockAllocator(num_blocks, block_size, enable_prefix_caching)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.pending_copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) the runner must apply
        self.num_admitted_tokens = self.num_hit_tokens = 0  # prefix-cache statistics, over all admissions

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    def blocks_needed(self, num_positions: int) -> int:
        return self.allocator.blocks_needed(num_positions)

    def can_admit(self, seq: Sequence) -> bool:
        return self.allocator.can_allocate(seq.num_tokens + 1)

    def admit(self, seq: Sequence) -> int:
        """Blocks for the whole sequence plus the next candidate's slot -> how many leading tokens the prefix cache
        holds already (their prefill is skipped; none for a prompt whose log-probabilities are wanted: every
        position's logits come from its prefill). The scheduler advances the sequence's counts."""
        hits = self.allocator.allocate(seq.seq_id, seq.token_ids, seq.num_tokens + 1,
                                       reuse_prefix=not seq.scores_prompt)
        self.num_admitted_tokens += seq.num_tokens
        self.num_hit_tokens += hits
        return hits

    def mark_computed(self, seq: Sequence, num_positions: int) -> None:
        """Positions [0, num_positions) are in both caches (or will be, before anything reads them): their full
        blocks become reusable by later prompts that start with the same tokens."""
        self.allocator.mark_computed(seq.seq_id, num_positions)

    def unmark(self, seq: Sequence, num_positions: int) -> None:
        """Take back marks past num_positions (a failed step's): the sequence's own blocks there leave the prefix
        cache. A sequence already freed has nothing to take back."""
        if self.allocator.has_sequence(seq.seq_id):
            self.allocator.unmark_computed(seq.seq_id, num_positions)

    def reset_prefix_cache(self) -> None:
        self.allocator.reset_prefix_cache()

    def can_grow(self, seq: Sequence) -> bool:
        return self.allocator.can_ensure(seq.seq_id, seq.num_tokens + 1)

    def grow(self, seq: Sequence) -> None:
        """Room for the slot of the next token (the candidates' position)."""
        self.pending_copies += self.allocator.ensure(seq.seq_id, seq.num_tokens + 1)

    def commit(self, seq: Sequence, token_ids: list[int]) -> None:
        self.allocator.append_tokens(seq.seq_id, token_ids)

    def free(self, seq: Sequence) -> None:
        if self.allocator.has_sequence(seq.seq_id):
            self.allocator.free(seq.seq_id)

    def block_tables(self, seqs: list[Sequence], width: int = 0) -> torch.Tensor:
        """Host int32 [B, max(width, longest table)], zero-padded."""
        return self.allocator.block_tables([s.seq_id for s in seqs], width)

    def slots(self, seqs: list[Sequence], positions: list[int]) -> torch.Tensor:
        return self.allocator.slots([s.seq_id for s in seqs], positions)  # [B] int64

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies
