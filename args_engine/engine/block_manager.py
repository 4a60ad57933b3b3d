"""The engine's view of the C++ block allocator (args_engine._C.BlockAllocator). One block table per sequence
indexes both the LM and the RM cache: both hold the same token positions."""
from __future__ import annotations

import torch

from .. import _C
from .sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        # Prefix caching stays off here: the allocator registers a prompt's blocks when they are allocated, before
        # their K/V is written, so a prompt admitted meanwhile could reuse blocks that hold nothing yet.
        self.allocator = _C.BlockAllocator(num_blocks, block_size, False)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.pending_copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) the runner must apply

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    def blocks_needed(self, num_positions: int) -> int:
        return self.allocator.blocks_needed(num_positions)

    def can_admit(self, seq: Sequence) -> bool:
        return self.allocator.can_allocate(seq.num_tokens + 1)

    def admit(self, seq: Sequence) -> None:
        """Blocks for the whole sequence plus the next candidate's slot; prefix-cache hits skip their prefill."""
        hits = self.allocator.allocate(seq.seq_id, seq.token_ids, seq.num_tokens + 1)
        seq.lm_cached = seq.rm_cached = hits

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

    def block_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        return self.allocator.block_tables([s.seq_id for s in seqs], 0)  # [B, max_blocks] int32

    def slots(self, seqs: list[Sequence], positions: list[int]) -> torch.Tensor:
        return self.allocator.slots([s.seq_id for s in seqs], positions)  # [B] int64

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies
