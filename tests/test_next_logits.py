"""The next-token logits table (engine/next_logits.py): one device row per running sequence, the last row the
padding rows'. Slots are held from a sequence's first step to its end; a preempted sequence (waiting again, to
prefill anew) gives its slot up when another needs one, so max_num_seqs running sequences always find a row."""
import pytest
import torch

from args_engine import ARGSParams
from args_engine.engine.next_logits import NextLogits
from args_engine.engine.request import Request
from args_engine.engine.sequence import Sequence, Status


def running(n: int) -> list[Sequence]:
    seqs = [Sequence(Request([1, 2], ARGSParams(), max_len=16)) for _ in range(n)]
    for s in seqs:
        s.status = Status.RUNNING
    return seqs


def test_slots_are_kept_released_and_taken_back_from_preempted_sequences():
    table = NextLogits(max_num_seqs=2, vocab_size=5, dtype=torch.float32, device=torch.device("cpu"))
    assert table.rows.shape == (3, 5) and table.spare == 2
    a, b, c = running(3)
    first = table.slots([a, b]).tolist()
    assert sorted(first) == [0, 1] and table.slots([b, a]).tolist() == first[::-1]  # kept across steps
    with pytest.raises(RuntimeError, match="more than 2 sequences"):
        table.slots([c])  # both holders still run
    b.status = Status.WAITING  # preempted: it prefills anew when readmitted
    assert table.slots([c]).tolist() == [first[1]]
    table.release(a.seq_id)
    b.status = Status.RUNNING
    assert table.slots([b]).tolist() == [first[0]]
    assert NextLogits.bytes_for(2, 5, torch.float32) == table.rows.numel() * 4
