"""engine/rm_block_manager.py on the host alone: a bridged RM's pool in RM-token positions (settled tokens behind
a window, cuts, prefix-cache hits, no leaked blocks)."""
from args_engine.engine.request import Request
from args_engine.engine.rm_block_manager import RMBlockManager
from args_engine.engine.sequence import Sequence
from args_engine.params import ARGSParams


class CharView:
    """RM tokens = the characters' code points of prefix + response (response ids are code points too)."""

    def ids(self, prefix, response_ids):
        return [ord(c) for c in prefix] + list(response_ids)


def make_seq(prefix: str, seq_id: int) -> Sequence:
    req = Request([1, 2, 3], ARGSParams(k=2, max_new_tokens=8), max_len=64)
    req.rm_prefix = prefix
    req.rm_text_ids = CharView().ids(prefix, [])  # the engine's part: the pool never runs a tokenizer
    return Sequence(req, seq_id)


def test_admit_settle_cut_and_free():
    bm = RMBlockManager(num_blocks=8, block_size=4, reserve=4, window=2)
    seq = make_seq("abcdefghij", 0)  # 10 RM tokens
    assert bm.can_admit(seq)
    bm.admit(seq)
    assert bm.cached_ids(seq) == [] and bm.settled_ids(seq) == [ord(c) for c in "abcdefgh"]  # all but the window
    assert bm.capacity(seq) >= 14  # the text and the reserve
    text = [ord(c) for c in "abcdefghij"] + [100, 101]
    bm.commit(seq, text, len(text))  # the cache holds all 12; the allocator all but the last 2
    assert bm.cached_ids(seq) == text and bm.settled_ids(seq) == text[:10]
    bm.cut(seq, text, 11)  # the last token changed: above the settled part, no re-allocation
    assert bm.cached_ids(seq) == text[:11] and bm.num_cuts == 0
    free_before = bm.num_free_blocks
    bm.cut(seq, text[:6] + [999] * 6, 6)  # a settled token changed: freed and allocated again
    assert bm.num_cuts == 1 and bm.settled_ids(seq) == text[:6]  # the 6 that hold (the window counts from the end)
    assert bm.cached_ids(seq) == text[:4]  # their full block came back from the prefix cache
    assert bm.num_free_blocks == free_before
    bm.free(seq)
    assert bm.num_free_blocks == bm.num_blocks and not bm.seqs  # nothing kept of a freed sequence


def test_prefix_hits_between_sequences_and_the_lone_sequence_cap():
    bm = RMBlockManager(num_blocks=8, block_size=4, reserve=4, window=2)
    a, b = make_seq("0123456789", 0), make_seq("0123456789xy", 1)
    bm.admit(a)
    ids = [ord(c) for c in "0123456789"]
    bm.commit(a, ids, len(ids))  # computed: blocks [0123] [4567] registered
    bm.admit(b)
    assert bm.cached_ids(b) == [ord(c) for c in "01234567"]  # two full blocks from a's cache
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == bm.num_blocks
    # a text longer than the whole pool still admits (it keeps what fits and re-reads the rest)
    long = make_seq("z" * 100, 2)
    assert bm.can_admit(long)
    bm.admit(long)
    assert bm.capacity(long) == 8 * 4
    bm.free(long)


def test_the_scheduler_counts_a_new_prompts_rm_tokens_against_the_step_budget():
    """The step that completes a prompt also reads its RM tokens (the bridge's causal extension): they count
    against max_num_batched_tokens, so a second long prompt waits for the next step instead of piling on."""
    from args_engine.engine.block_manager import BlockManager
    from args_engine.engine.scheduler import Scheduler
    rm_bm = RMBlockManager(num_blocks=64, block_size=4)
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=40, rm_block_manager=rm_bm)
    a, b = make_seq("x" * 50, 0), make_seq("y" * 50, 1)  # 3 LM prompt tokens, 50 RM tokens each
    sched.add(a)
    sched.add(b)
    prefill, decode = sched.schedule()
    assert [s for s, _ in prefill] == [a] and not decode  # a's 3 + 2 + 50 tokens spent the budget
    assert rm_bm.uncached(a) == 50 and list(sched.waiting) == [b]
