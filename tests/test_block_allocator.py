"""args_engine._C.BlockAllocator: every method, its errors, prefix caching, fork + copy-on-write, and a
hypothesis state machine that also models the cache contents (a slot -> token map) to prove that every
committed position of every sequence reads back its own token."""
import pytest
import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from args_engine._C import BlockAllocator


def snapshot(a: BlockAllocator, seq_ids=()):
    return (a.num_free_blocks, a.num_sequences, [a.ref_count(b) for b in range(a.num_blocks)],
            {s: (a.block_table(s), a.num_tokens(s)) for s in seq_ids if a.has_sequence(s)})


# ---- construction and basic bookkeeping -------------------------------------------------------

def test_constructor_and_properties():
    a = BlockAllocator(8, 4)
    assert (a.num_blocks, a.block_size, a.num_free_blocks, a.num_sequences) == (8, 4, 8, 0)
    assert BlockAllocator(num_blocks=2, block_size=1, enable_prefix_caching=False).num_blocks == 2
    for args in [(0, 4), (4, 0), (-1, 4)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            BlockAllocator(*args)
    with pytest.raises(AttributeError):
        a.num_blocks = 3
    a.check()


def test_blocks_needed_and_can_allocate():
    a = BlockAllocator(3, 4)
    assert [a.blocks_needed(n) for n in (0, 1, 4, 5, 12, 13)] == [0, 1, 1, 2, 3, 4]
    assert a.can_allocate(12) and not a.can_allocate(13)
    with pytest.raises(ValueError, match="num_positions"):
        a.blocks_needed(-1)


def test_allocate_table_tokens_and_slots():
    a = BlockAllocator(8, 4)
    assert a.allocate(7, [1, 2, 3, 4, 5], 9) == 0
    assert a.has_sequence(7) and not a.has_sequence(8) and a.num_sequences == 1
    assert a.num_tokens(7) == 5 and len(a.block_table(7)) == 3 and a.num_free_blocks == 5
    assert a.block_table(7) == [0, 1, 2]  # FIFO free list: a fresh allocator hands out 0, 1, 2, ...
    t = a.block_table(7)
    assert [a.slot(7, p) for p in range(12)] == [t[p // 4] * 4 + p % 4 for p in range(12)]
    assert all(a.ref_count(b) == (1 if b in t else 0) for b in range(8))
    a.check()


def test_allocate_errors_change_nothing():
    a = BlockAllocator(4, 4)
    a.allocate(1, [1, 2, 3], 3)
    before = snapshot(a, [1, 2])
    with pytest.raises(ValueError, match="already exists"):
        a.allocate(1, [5], 1)
    with pytest.raises(ValueError, match="num_positions"):
        a.allocate(2, [1, 2, 3], 2)
    with pytest.raises(ValueError, match="num_positions"):
        a.allocate(2, [], -1)
    assert not a.can_allocate(13)
    with pytest.raises(RuntimeError, match="out of blocks"):
        a.allocate(2, [9] * 5, 13)
    assert snapshot(a, [1, 2]) == before and not a.has_sequence(2)
    a.check()


def test_unknown_sequence_raises_key_error():
    a = BlockAllocator(4, 2)
    for call in (lambda: a.free(3), lambda: a.num_tokens(3), lambda: a.block_table(3), lambda: a.slot(3, 0),
                 lambda: a.ensure(3, 1), lambda: a.can_ensure(3, 1), lambda: a.append_tokens(3, [1]),
                 lambda: a.fork(3, 4), lambda: a.block_tables([3]), lambda: a.slots([3], [0])):
        with pytest.raises(KeyError, match="unknown sequence id 3"):
            call()
    a.check()


def test_positions_and_block_ids_out_of_range():
    a = BlockAllocator(4, 2)
    a.allocate(0, [1, 2, 3], 3)  # two blocks: positions [0, 4)
    a.slot(0, 3)
    for pos in (-1, 4):
        with pytest.raises(IndexError, match="out of range"):
            a.slot(0, pos)
    with pytest.raises(IndexError, match="out of range"):
        a.slots([0], [4])
    for b in (-1, 4):
        with pytest.raises(IndexError, match="block id"):
            a.ref_count(b)
    before = snapshot(a, [0])
    with pytest.raises(IndexError, match="call ensure first"):
        a.append_tokens(0, [4, 5])
    assert snapshot(a, [0]) == before
    a.append_tokens(0, [4])
    assert a.num_tokens(0) == 4


def test_free_returns_blocks_fifo_and_is_deterministic():
    a = BlockAllocator(4, 2, enable_prefix_caching=False)
    a.allocate(0, [1, 2, 3], 4)  # blocks 0, 1
    a.free(0)
    assert a.num_free_blocks == 4 and a.num_sequences == 0 and not a.has_sequence(0)
    # Freed blocks go to the back, last block first: the order is 2, 3, 1, 0.
    a.allocate(1, [], 8)
    assert a.block_table(1) == [2, 3, 1, 0]
    with pytest.raises(KeyError):
        a.free(0)
    a.check()


# ---- growth and copy-on-write -------------------------------------------------------------------

def test_ensure_grows_and_fails_atomically():
    a = BlockAllocator(3, 4)
    a.allocate(0, [1, 2, 3, 4], 4)
    assert a.ensure(0, 4) == [] and len(a.block_table(0)) == 1  # already covered
    assert a.ensure(0, 2) == []  # fewer positions than tokens: nothing to do
    assert a.can_ensure(0, 9) and a.ensure(0, 9) == [] and len(a.block_table(0)) == 3
    assert a.num_free_blocks == 0 and not a.can_ensure(0, 13)
    before = snapshot(a, [0])
    with pytest.raises(RuntimeError, match="out of blocks"):
        a.ensure(0, 13)
    assert snapshot(a, [0]) == before
    with pytest.raises(ValueError):
        a.ensure(0, -1)
    a.check()


def test_fork_shares_then_copy_on_write():
    a = BlockAllocator(8, 4)
    a.allocate(0, [1, 2, 3, 4, 5, 6], 6)  # blocks [b0 full, b1 partial]
    b0, b1 = a.block_table(0)
    a.fork(0, 1)
    assert a.block_table(1) == [b0, b1] and a.num_tokens(1) == 6
    assert a.ref_count(b0) == a.ref_count(b1) == 2 and a.num_free_blocks == 6
    with pytest.raises(ValueError, match="already exists"):
        a.fork(0, 1)
    # Child writes position 6 (in shared b1): b1 is copied; b0 stays shared (position 6 is not in it).
    assert a.can_ensure(1, 7)
    pairs = a.ensure(1, 7)
    (src, dst), = pairs
    assert src == b1 and a.block_table(1) == [b0, dst] and dst not in (b0, b1)
    assert a.ref_count(b1) == 1 and a.ref_count(dst) == 1 and a.ref_count(b0) == 2
    assert a.ensure(0, 7) == []  # parent now owns b1 alone: writes in place
    a.append_tokens(1, [70])
    a.append_tokens(0, [71])
    # Growth past the table copies nothing; both also grow independently.
    assert a.ensure(0, 9) == [] and a.ensure(1, 9) == []
    a.free(0)
    assert a.ref_count(b0) == 1 and a.ref_count(b1) == 0
    a.free(1)
    assert a.num_free_blocks == 8
    a.check()


def test_fork_at_block_boundary_and_preallocated_blocks():
    a = BlockAllocator(8, 2)
    a.allocate(0, [1, 2], 6)  # 3 blocks, last two hold no tokens yet
    t = a.block_table(0)
    a.fork(0, 1)
    # Positions [2, 6) lie in the two shared, not yet written blocks: both are copied for the writer.
    pairs = a.ensure(1, 6)
    assert [p[0] for p in pairs] == t[1:] and a.block_table(1)[0] == t[0]
    a.check()


def test_copy_on_write_out_of_blocks_changes_nothing():
    a = BlockAllocator(2, 4)
    a.allocate(0, [1, 2], 4)
    a.fork(0, 1)
    a.allocate(2, [5], 4)  # the last free block
    assert not a.can_ensure(1, 3)
    before = snapshot(a, [0, 1, 2])
    with pytest.raises(RuntimeError, match="copy-on-write"):
        a.ensure(1, 3)
    assert snapshot(a, [0, 1, 2]) == before
    a.check()


# ---- prefix caching -------------------------------------------------------------------------

def test_prefix_hits_share_full_blocks():
    a = BlockAllocator(16, 4)
    p = list(range(10))  # two full blocks + 2 tokens
    assert a.allocate(0, p, 10) == 0
    a.mark_computed(0, 10)
    t = a.block_table(0)
    assert a.allocate(1, p[:8] + [100, 101, 102], 11) == 8
    assert a.block_table(1)[:2] == t[:2] and a.block_table(1)[2] != t[2]
    assert a.ref_count(t[0]) == a.ref_count(t[1]) == 2 and a.ref_count(t[2]) == 1
    # Never the whole prompt: an 8-token prompt made of two cached blocks reuses only the first.
    assert a.allocate(2, p[:8], 8) == 4 and a.block_table(2)[0] == t[0] and a.block_table(2)[1] != t[1]
    assert a.allocate(3, p[:9], 9) == 8
    # A different second block stops the chain; a different first block stops it at once.
    assert a.allocate(4, p[:4] + [9, 9, 9, 9, 1], 9) == 4
    assert a.allocate(5, [7] + p[1:10], 10) == 0
    assert a.allocate(6, p[4:8] + p[4:8] + [0], 9) == 0  # same tokens as block 1, but not after block 0
    a.check()


def test_a_prompt_computed_twice_at_once_keeps_its_continuations_findable():
    # Two identical prompts admitted together: the second's full blocks are not registered (the first's own
    # the hashes), so the blocks the second appends after them must chain onto the first's blocks, or its
    # continuation hits only the shared prompt and never its own generated tokens.
    a = BlockAllocator(32, 4)
    p = list(range(8))
    for s in (0, 1):
        a.allocate(s, p, 8)
    for s in (0, 1):
        a.mark_computed(s, 8)
    a.ensure(1, 13)
    a.append_tokens(1, [50, 51, 52, 53, 54])
    a.mark_computed(1, 13)
    assert a.allocate(2, p + [50, 51, 52, 53, 54], 13) == 12  # was 8: the third block hung under an orphan
    assert a.block_table(2)[2] == a.block_table(1)[2]
    a.check()


def test_hit_counts_and_short_prompts():
    a = BlockAllocator(8, 4)
    a.allocate(0, [1, 2, 3, 4], 4)
    a.mark_computed(0, 4)
    assert a.allocate(1, [1, 2, 3, 4], 4) == 0  # exactly one block: must compute the last token
    assert a.allocate(2, [1, 2, 3, 4, 5], 5) == 4
    assert a.allocate(3, [], 0) == 0 and a.block_table(3) == []
    assert a.allocate(4, [1, 2, 3], 3) == 0
    a.check()


def test_no_reuse_for_a_prompt_scored_in_full():
    """reuse_prefix=False (a prompt whose every position's log p is wanted): no hits, fresh blocks, which are
    registered once computed and serve later prompts."""
    a = BlockAllocator(16, 4)
    p = list(range(10))
    assert a.allocate(0, p, 11) == 0
    a.mark_computed(0, 10)
    assert a.allocate(1, p, 11, reuse_prefix=False) == 0
    assert not set(a.block_table(1)) & set(a.block_table(0))
    a.check()
    b = BlockAllocator(16, 4)
    assert b.allocate(0, p, 11, reuse_prefix=False) == 0
    b.mark_computed(0, 10)
    assert b.allocate(1, p, 11) == 8 and b.block_table(1)[:2] == b.block_table(0)[:2]
    b.check()


def test_prefix_caching_disabled():
    a = BlockAllocator(8, 4, enable_prefix_caching=False)
    a.allocate(0, list(range(9)), 9)
    a.mark_computed(0, 9)
    assert a.allocate(1, list(range(9)), 9) == 0
    assert not set(a.block_table(0)) & set(a.block_table(1))
    a.check()


def test_blocks_are_hit_only_once_computed():
    a = BlockAllocator(16, 4)
    a.allocate(0, [1, 2, 3], 8)
    a.append_tokens(0, [4, 5])  # block 0 is full, but its K/V is not written yet
    assert a.num_tokens(0) == 5 and a.num_computed(0) == 0
    assert a.allocate(1, [1, 2, 3, 4, 9], 5) == 0
    a.mark_computed(0, 3)  # part of block 0: still nothing to hit
    assert a.allocate(2, [1, 2, 3, 4, 9], 5) == 0
    a.mark_computed(0, 5)
    assert a.num_computed(0) == 5
    assert a.allocate(3, [1, 2, 3, 4, 9], 5) == 4 and a.block_table(3)[0] == a.block_table(0)[0]
    a.append_tokens(0, [6, 7, 8])  # block 1 becomes full
    assert a.allocate(4, [1, 2, 3, 4, 5, 6, 7, 8, 0], 9) == 4
    a.mark_computed(0, 8)
    assert a.allocate(5, [1, 2, 3, 4, 5, 6, 7, 8, 0], 9) == 8
    a.mark_computed(0, 2)  # never moves back
    assert a.num_computed(0) == 8
    a.check()


def test_a_sequence_freed_before_its_prefill_leaves_no_prefix():
    a = BlockAllocator(8, 4)
    p = list(range(9))
    a.allocate(0, p, 9)
    a.free(0)
    assert a.allocate(1, p, 9) == 0
    a.mark_computed(1, 4)
    a.free(1)
    assert a.allocate(2, p, 9) == 4  # only the block that was written
    a.check()


def test_reset_prefix_cache_forgets_every_entry():
    a = BlockAllocator(16, 4)
    p = list(range(9))
    a.allocate(0, p, 9)
    a.mark_computed(0, 9)
    a.reset_prefix_cache()
    assert a.allocate(1, p, 9) == 0
    a.mark_computed(0, 9)  # already marked: stays forgotten
    assert a.allocate(2, p, 9) == 0
    a.mark_computed(1, 9)
    assert a.allocate(3, p, 9) == 8 and a.block_table(3)[:2] == a.block_table(1)[:2]
    a.check()


def test_mark_computed_errors():
    a = BlockAllocator(8, 4)
    a.allocate(0, [1, 2, 3], 8)
    before = snapshot(a, [0])
    for n in (-1, 4):
        with pytest.raises(ValueError, match=r"num_computed .* out of range \[0, 3\]"):
            a.mark_computed(0, n)
    with pytest.raises(KeyError, match="unknown sequence id 5"):
        a.mark_computed(5, 0)
    assert snapshot(a, [0]) == before and a.num_computed(0) == 0
    a.check()


def test_freed_blocks_keep_their_prefix_until_reused():
    a = BlockAllocator(4, 4)
    p = list(range(9))
    a.allocate(0, p, 9)
    a.mark_computed(0, 9)
    t = a.block_table(0)
    a.free(0)
    assert a.num_free_blocks == 4
    assert a.allocate(1, p, 9) == 8 and a.block_table(1)[:2] == t[:2]  # hits taken off the free list
    assert a.num_free_blocks == 1
    a.free(1)
    a.allocate(2, [50] * 16, 16)  # hands out every block: all stale prefixes are dropped
    a.free(2)
    assert a.allocate(3, p, 9) == 0
    a.check()


def test_hits_on_free_blocks_count_against_the_free_list():
    a = BlockAllocator(3, 4)
    p = list(range(9))
    a.allocate(0, p, 9)
    a.mark_computed(0, 9)
    a.free(0)
    before = snapshot(a, [1])
    with pytest.raises(RuntimeError, match="out of blocks"):
        a.allocate(1, p, 13)  # 2 hits + 2 fresh, but only 1 free block besides the hits
    assert snapshot(a, [1]) == before
    assert a.allocate(1, p, 12) == 8 and a.num_free_blocks == 0
    a.check()


# ---- batched helpers --------------------------------------------------------------------------

def test_block_tables_and_slots_tensors():
    a = BlockAllocator(8, 2)
    a.allocate(0, [1, 2, 3], 3)
    a.allocate(1, [4], 1)
    bt = a.block_tables([1, 0])
    assert bt.dtype == torch.int32 and bt.tolist() == [a.block_table(1) + [0], a.block_table(0)]
    assert a.block_tables([0], width=5).shape == (1, 5)
    assert a.block_tables([], width=3).shape == (0, 3)
    with pytest.raises(ValueError, match="width"):
        a.block_tables([0], width=-1)
    s = a.slots([0, 1, 0], [2, 0, 3])
    assert s.dtype == torch.int64 and s.tolist() == [a.slot(0, 2), a.slot(1, 0), a.slot(0, 3)]
    assert a.slots([], []).shape == (0,)
    with pytest.raises(ValueError, match="positions"):
        a.slots([0, 1], [0])


# ---- state machine ----------------------------------------------------------------------------

BASES = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9], [5, 6, 7, 8, 1, 2]]
prompts = st.builds(lambda base, cut, tail: base[:cut] + tail, st.sampled_from(BASES), st.integers(0, 8),
                    st.lists(st.integers(0, 3), max_size=4))


class AllocatorMachine(RuleBasedStateMachine):
    """Model: each sequence's tokens, how many of them are computed, and `content`, what the caller has written
    into each slot. The caller's contract is followed: copy blocks returned by ensure, write a position only
    after ensure covered it, and mark positions computed only after writing them. Writes lag allocation (a
    prompt is prefilled over several steps, or never, if it is freed first), so a prefix hit on a block that
    is registered but not yet written would read back the wrong token."""

    @initialize(num_blocks=st.integers(3, 12), block_size=st.integers(1, 4), prefix=st.booleans())
    def setup(self, num_blocks, block_size, prefix):
        self.a = BlockAllocator(num_blocks, block_size, prefix)
        self.bs, self.tokens, self.computed, self.content, self.next_id = block_size, {}, {}, {}, 0

    def _apply_copies(self, pairs):
        for src, dst in pairs:
            for off in range(self.bs):
                self.content[dst * self.bs + off] = self.content.get(src * self.bs + off)

    @rule(prompt=prompts, extra=st.integers(0, 5))
    def allocate(self, prompt, extra):
        sid, self.next_id = self.next_id, self.next_id + 1
        before = snapshot(self.a, self.tokens)
        try:
            hits = self.a.allocate(sid, prompt, len(prompt) + extra)
        except RuntimeError as e:
            assert "out of blocks" in str(e) and snapshot(self.a, self.tokens) == before
            assert not self.a.can_allocate(len(prompt) + extra)
            return
        assert hits % self.bs == 0 and (hits < len(prompt) or hits == 0)
        event(f"allocate: prefix hit {hits > 0}")
        self.tokens[sid], self.computed[sid] = list(prompt), hits
        for pos in range(hits):  # a hit must really hold this prompt's tokens
            assert self.content.get(self.a.slot(sid, pos)) == prompt[pos]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def compute(self, data):
        """The forward writes the K/V of the next uncomputed positions, then marks them computed."""
        sid = data.draw(st.sampled_from(sorted(self.tokens)))
        start = self.computed[sid]
        n = data.draw(st.integers(start, len(self.tokens[sid])))
        for pos in range(start, n):
            self.content[self.a.slot(sid, pos)] = self.tokens[sid][pos]
        self.a.mark_computed(sid, n)
        self.computed[sid] = n

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), extra=st.integers(0, 6))
    def ensure(self, data, extra):
        sid = data.draw(st.sampled_from(sorted(self.tokens)))
        n = len(self.tokens[sid]) + extra
        ok, before = self.a.can_ensure(sid, n), snapshot(self.a, self.tokens)
        try:
            pairs = self.a.ensure(sid, n)
        except RuntimeError:
            assert not ok and snapshot(self.a, self.tokens) == before
            return
        assert ok and len(self.a.block_table(sid)) * self.bs >= n
        event(f"ensure: copy-on-write {bool(pairs)}")
        self._apply_copies(pairs)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), new=st.lists(st.integers(0, 3), min_size=1, max_size=5))
    def append_tokens(self, data, new):
        sid = data.draw(st.sampled_from(sorted(self.tokens)))
        start = len(self.tokens[sid])
        try:
            self._apply_copies(self.a.ensure(sid, start + len(new)))
        except RuntimeError:
            return
        self.a.append_tokens(sid, new)
        self.tokens[sid] += new

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def append_past_table_fails(self, data):
        sid = data.draw(st.sampled_from(sorted(self.tokens)))
        room = len(self.a.block_table(sid)) * self.bs - len(self.tokens[sid])
        before = snapshot(self.a, self.tokens)
        with pytest.raises(IndexError):
            self.a.append_tokens(sid, [0] * (room + 1))
        assert snapshot(self.a, self.tokens) == before

    @rule()
    def reset_prefix_cache(self):
        self.a.reset_prefix_cache()

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.tokens)))
        child, self.next_id = self.next_id, self.next_id + 1
        self.a.fork(parent, child)
        self.tokens[child], self.computed[child] = list(self.tokens[parent]), self.computed[parent]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        sid = data.draw(st.sampled_from(sorted(self.tokens)))
        self.a.free(sid)
        del self.tokens[sid], self.computed[sid]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), extra=st.integers(1, 6))
    def abort(self, data, extra):
        """Free mid-step: after ensure grew/copied blocks but before the tokens were committed."""
        sid = data.draw(st.sampled_from(sorted(self.tokens)))
        try:
            self.a.ensure(sid, len(self.tokens[sid]) + extra)  # the copies are never made: block is dropped
        except RuntimeError:
            pass
        self.a.free(sid)
        del self.tokens[sid], self.computed[sid]

    @invariant()
    def consistent(self):
        a = self.a
        a.check()
        assert a.num_sequences == len(self.tokens)
        holders = {}
        for sid, toks in self.tokens.items():
            table = a.block_table(sid)
            assert a.num_tokens(sid) == len(toks) and len(table) * self.bs >= len(toks)
            assert a.num_computed(sid) == self.computed[sid]
            assert len(set(table)) == len(table)
            for b in table:
                holders[b] = holders.get(b, 0) + 1
            for pos in range(self.computed[sid]):  # every computed position reads back its own token
                assert self.content.get(a.slot(sid, pos)) == toks[pos]
        assert all(a.ref_count(b) == holders.get(b, 0) for b in range(a.num_blocks))
        assert a.num_free_blocks + len(holders) == a.num_blocks

    def teardown(self):
        for sid in list(self.tokens):
            self.a.free(sid)
        assert self.a.num_free_blocks == self.a.num_blocks and self.a.num_sequences == 0
        self.a.check()


AllocatorMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_allocator_state_machine = AllocatorMachine.TestCase


def test_unmark_computed_takes_back_only_this_sequences_entries_past_the_point():
    from args_engine._C import BlockAllocator

    a = BlockAllocator(16, 4, True)
    a.allocate(1, list(range(12)), 13)
    a.mark_computed(1, 8)  # written in an earlier step: blocks 0, 1
    a.mark_computed(1, 12)  # marked by the step that fails: block 2
    a.allocate(2, list(range(12)) + [99], 14)  # admitted in the same step: hits all three
    a.unmark_computed(1, 8)
    assert a.num_computed(1) == 8
    a.check()
    assert a.allocate(3, list(range(12)) + [7], 14) == 8  # block 2's entry is gone, blocks 0, 1 stay
    a.unmark_computed(1, 12)  # nothing past: no-op
    with pytest.raises(ValueError, match="num_computed must be >= 0"):
        a.unmark_computed(1, -1)
    for s in (1, 2, 3):
        a.free(s)
    a.check()
    assert a.num_free_blocks == 16
