"""The paged cache of a reward model that reads text on its own tokenizer (decoding/bridge.py): a block allocator
of its own over the RM's pool, in RM-token positions (they differ from the LM's). Host only: never touches
tensors (the model runner copies and writes blocks) nor a tokenizer (the engine keeps each request's RM tokens,
`Request.rm_text_ids`); it never writes a Sequence field.

A sequence's RM cache holds the K/V of `cached_ids(seq)`, RM tokens that begin the tokenization of its text so far.
The allocator's tokens are `settled_ids(seq)` (prefix-cache entries once their blocks are full): those lie at least
`window` tokens behind the end of the text, where more text no longer re-tokenizes them. The last few may still
change as the text grows: the bridge then cuts the cache back and re-reads them, which costs nothing here (those
positions are the sequence's own blocks, never shared). If a change ever reaches the settled part, the sequence's
blocks are freed and allocated again for the part that still holds, whose full blocks come back from the prefix
cache (`cut`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import _C
from .sequence import Sequence


@dataclass
class _RMTokens:
    """What the pool knows of one sequence, in RM tokens."""
    cached: list[int] = field(default_factory=list)  # whose K/V the RM cache holds
    settled: list[int] = field(default_factory=list)  # what the allocator holds


class RMBlockManager:
    """reserve: positions held past the cached tokens for the next step's chosen tail (a longer tail is
    committed in part and re-read later). window: trailing RM tokens kept out of the allocator (not settled). A
    sequence never asks for more than the whole pool: a text longer than it keeps what fits cached and re-reads
    the rest each step (exact, slower), so one sequence alone always runs."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 reserve: int | None = None, window: int = 4):
        self.allocator = _C.BlockAllocator(num_blocks, block_size, enable_prefix_caching)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.reserve = block_size if reserve is None else reserve
        self.window = window
        self.pending_copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) for the RM cache
        self.num_cuts = 0  # cuts into settled tokens (re-allocations): a statistic
        self.seqs: dict[int, _RMTokens] = {}  # seq_id -> its RM tokens (dropped by free)

    def _state(self, seq: Sequence) -> _RMTokens:
        return self.seqs.setdefault(seq.seq_id, _RMTokens())

    def cached_ids(self, seq: Sequence) -> list[int]:
        """The RM tokens whose K/V the sequence's RM cache holds."""
        return self._state(seq).cached

    def settled_ids(self, seq: Sequence) -> list[int]:
        """The RM tokens the allocator holds for the sequence (a prefix of cached_ids or of the text)."""
        return self._state(seq).settled

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    @staticmethod
    def text_ids(seq: Sequence) -> list[int]:
        """The RM tokens of the sequence's text so far (prompt as the RM reads it + response)."""
        return seq.req.rm_text_ids

    def uncached(self, seq: Sequence) -> int:
        """RM tokens of the text the cache does not hold yet (a new prompt's: its first ARGS step reads them)."""
        return max(0, len(self.text_ids(seq)) - len(self.cached_ids(seq)))

    def _want(self, num_cached: int) -> int:
        return min(num_cached + self.reserve, self.num_blocks * self.block_size)

    def can_admit(self, seq: Sequence) -> bool:
        return self.allocator.can_allocate(self._want(len(self.text_ids(seq))))

    def admit(self, seq: Sequence) -> None:
        """Blocks for the text's RM tokens and the reserve; prefix-cache hits are cached already."""
        ids = self.text_ids(seq)
        want = self._want(len(ids))
        settled = ids[:min(want, max(0, len(ids) - self.window))]
        hits = self.allocator.allocate(seq.seq_id, settled, want)
        st = self._state(seq)
        st.cached, st.settled = ids[:hits], settled

    def can_grow(self, seq: Sequence) -> bool:
        return self.allocator.can_ensure(seq.seq_id, self._want(len(self.cached_ids(seq))))

    def grow(self, seq: Sequence) -> None:
        self.pending_copies += self.allocator.ensure(seq.seq_id, self._want(len(self.cached_ids(seq))))

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def capacity(self, seq: Sequence) -> int:
        """Positions the sequence's block table covers."""
        return len(self.allocator.block_table(seq.seq_id)) * self.block_size

    def cut(self, seq: Sequence, ids: list[int], keep: int) -> None:
        """Only the first `keep` tokens of the cache and of the settled tokens still begin the text's RM tokens
        `ids`: drop the rest. Into the settled part: free and allocate again (as many positions as before when the
        pool allows, else fewer: the runner then commits less and the scheduler grows the table or preempts at
        the next step)."""
        st = self._state(seq)
        if keep >= len(st.settled):
            st.cached = st.cached[:keep]
            return
        self.num_cuts += 1
        want = max(self.capacity(seq), keep)
        settled = ids[:max(0, min(keep, len(ids) - self.window))]
        self.allocator.free(seq.seq_id)
        for tokens, positions in ((settled, want), (settled, len(settled)), ([], 0)):
            try:
                hits = self.allocator.allocate(seq.seq_id, tokens, positions)
                break
            except RuntimeError:  # out of blocks: fewer positions
                continue
        st.cached, st.settled = ids[:hits], tokens

    def commit(self, seq: Sequence, ids: list[int], cached: int) -> None:
        """The cache now holds the K/V of ids[:cached] (ids: the chosen candidate's RM tokens); settle all but the
        last `window` tokens."""
        st = self._state(seq)
        st.cached = ids[:cached]
        settled = len(st.settled)
        settle = max(settled, min(cached, len(ids) - self.window))
        if settle > settled:
            self.allocator.append_tokens(seq.seq_id, ids[settled:settle])
            st.settled = st.settled + ids[settled:settle]
        self.allocator.mark_computed(seq.seq_id, min(len(st.settled), cached))

    def free(self, seq: Sequence) -> None:
        """Finished or preempted: its blocks go back and what the pool knew of it is forgotten."""
        self.seqs.pop(seq.seq_id, None)
        if self.allocator.has_sequence(seq.seq_id):
            self.allocator.free(seq.seq_id)

    def reset_prefix_cache(self) -> None:
        self.allocator.reset_prefix_cache()

    def block_tables(self, seqs: list[Sequence]):
        """Host int32 [B, longest table], zero-padded."""
        return self.allocator.block_tables([s.seq_id for s in seqs], 0)

    def slots(self, seq: Sequence, positions: list[int]) -> list[int]:
        return self.allocator.slots([seq.seq_id] * len(positions), positions).tolist()
