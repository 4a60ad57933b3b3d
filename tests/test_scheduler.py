"""The scheduler's token budget counts what a step really computes: each decoding sequence's LM token and its
k RM candidates, and the k candidates of a prompt whose last chunk completes in the step."""
from args_engine import ARGSParams
from args_engine.engine.request import Request
from args_engine.engine.block_manager import BlockManager
from args_engine.engine.scheduler import Scheduler
from args_engine.engine.sequence import Sequence


def seq(prompt_len: int, k: int) -> Sequence:
    return Sequence(Request(list(range(1, prompt_len + 1)), ARGSParams(k=k, max_new_tokens=8), max_len=256))


def test_candidates_count_against_the_budget():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=40)
    first = seq(10, k=20)
    sched.add(first)
    prefill, decode = sched.schedule()
    assert prefill == [(first, 10)] and not decode
    # 10 prompt tokens + 20 candidates leave 10 of 40: a second prompt gets a 10-token chunk, not 30
    second = seq(30, k=20)
    sched.add(second)
    first.lm_cached = first.rm_cached = 10
    first.token_ids.append(99)
    first.rm_cached = 11  # the chosen candidate's K/V was committed: first is prefilled and decodes
    prefill, decode = sched.schedule()
    assert decode == [first]
    assert prefill == [(second, 40 - (1 + 20))]  # what the decode step's LM token and 20 candidates leave


def prefilled(sched: Scheduler, s: Sequence) -> None:
    """Admit s and mark its prompt computed and its first token chosen, as a step would."""
    sched.add(s)
    sched.waiting.remove(s)
    assert sched.bm.admit(s) == 0
    s.status = type(s.status).RUNNING
    sched.running.append(s)
    s.lm_cached = s.num_tokens
    s.token_ids.append(1)
    s.rm_cached = s.num_tokens


def test_running_sequences_always_decode_and_admission_waits():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=16)
    running = [seq(3, k=10), seq(3, k=10)]
    for s in running:
        prefilled(sched, s)
    waiting = seq(3, k=10)
    sched.add(waiting)
    prefill, decode = sched.schedule()
    assert decode == running and prefill == []  # 2 x 11 exceed the budget of 16: both decode, none is admitted
    sched.finish(running[0])
    prefill, decode = sched.schedule()
    assert decode == [running[1]] and prefill == [(waiting, 3)]  # 16 - 11 leaves room for the waiting prompt


def test_failed_step_takes_back_only_its_own_marks_and_sequences():
    """A step that fails: its prefill marks leave the prefix cache, earlier entries stay, and only its own
    sequences start over (one whose prefill chunk did not fit the budget keeps its blocks)."""
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=30)
    done = seq(12, k=2)
    sched.add(done)
    sched.schedule()
    done.lm_cached = done.rm_cached = 12
    sched.finish(done)  # its 12 prompt positions were marked and written: 3 reusable blocks

    same_start = seq(16, k=2)  # shares the 12 tokens, then 4 of its own
    other = Sequence(Request(list(range(50, 90)), ARGSParams(k=2, max_new_tokens=8), max_len=256))
    sched.add(same_start)
    sched.add(other)
    prefill, decode = sched.schedule()
    assert [(s, n) for s, n in prefill] == [(same_start, 4), (other, 30 - 4 - 2)]  # hits: only 4 to compute
    assert same_start.lm_cached == 12
    sched.fail_step([same_start])  # say only same_start ran: other's chunk is outside the failed step
    assert other in sched.running and sched.bm.allocator.has_sequence(other.seq_id)
    assert same_start in sched.waiting and not sched.bm.allocator.has_sequence(same_start.seq_id)
    sched.bm.allocator.check()
    # the entries from before the step stay; same_start's own block 4 (marked in the failed step) does not
    again = seq(16, k=2)
    assert sched.bm.allocator.allocate(again.seq_id, again.token_ids, 17) == 12


def test_failed_scheduling_starts_everything_over_and_empties_the_cache():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=40)
    a = seq(12, k=2)
    sched.add(a)
    sched.schedule()
    sched.fail_all()
    assert a in sched.waiting and not sched.running
    b = seq(12, k=2)
    assert sched.bm.allocator.allocate(b.seq_id, b.token_ids, 13) == 0
