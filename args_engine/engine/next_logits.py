"""The LM's logits for each running sequence's next token, kept on the device in one persistent table.

A step reads its rows' logits by slot (`rows [S + 1, V]`, gathered inside the step, inside the CUDA graph) and
writes the next step's there: the shared trunk's candidate forward (the chosen candidate's hidden state through
the LM head), a two-trunk LM decode, or the prefill that completes a prompt. One buffer, sized at start-up and
counted in the memory budget, replaces a per-sequence tensor that was stacked, padded and copied into the
graph's input every step. Owned by the model runner: host bookkeeping (which sequence holds which slot) and
device tensors, never a read.

The last row is the padding rows' (static shapes): they read it and write it, and nothing else does."""
from __future__ import annotations

import numpy as np
import torch

from .sequence import Sequence, Status


class NextLogits:
    def __init__(self, max_num_seqs: int, vocab_size: int, dtype: torch.dtype, device: torch.device):
        self.rows = torch.zeros(max_num_seqs + 1, vocab_size, dtype=dtype, device=device)  # [S + 1, V]
        self.spare = max_num_seqs  # the padding rows' slot
        self._held: dict[int, tuple[int, Sequence]] = {}  # seq_id -> (slot, sequence)
        self._free = list(range(max_num_seqs - 1, -1, -1))

    @staticmethod
    def bytes_for(max_num_seqs: int, vocab_size: int, dtype: torch.dtype) -> int:
        """The table's size, for the memory budget."""
        return (max_num_seqs + 1) * vocab_size * dtype.itemsize

    def slots(self, seqs: list[Sequence]) -> np.ndarray:
        """Host: each sequence's slot [B] int64, a free one for a sequence that holds none (a prompt just
        completed, or one recomputed after preemption: its prefill writes the row before the step reads it)."""
        out = np.empty(len(seqs), dtype=np.int64)
        for i, s in enumerate(seqs):
            held = self._held.get(s.seq_id)
            if held is None:
                held = self._held[s.seq_id] = (self._take(), s)
            out[i] = held[0]
        return out

    def release(self, seq_id: int) -> None:
        """Finished or aborted: its slot goes back."""
        held = self._held.pop(seq_id, None)
        if held is not None:
            self._free.append(held[0])

    def _take(self) -> int:
        if not self._free:  # preempted sequences (waiting again) give theirs back: they prefill anew
            for seq_id in [i for i, (_, s) in self._held.items() if s.status is not Status.RUNNING]:
                self.release(seq_id)
        if not self._free:
            raise RuntimeError(f"more than {self.spare} sequences hold next-token logits: the scheduler runs at "
                               "most max_num_seqs at once")
        return self._free.pop()
