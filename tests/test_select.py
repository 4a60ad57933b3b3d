"""Candidate selection: argmax of log p + w * r, per-row k, and sampling from softmax(score / temperature)."""
import torch

from args_engine import ARGSParams
from args_engine.decoding.common import select_candidates, topk_logprobs
from args_engine.engine.request import Request


def req(**kw):
    return Request([1], ARGSParams(**kw), max_len=100)


def test_topk_logprobs_is_log_softmax_topk():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    logp, idx = topk_logprobs(logits, 2)
    assert idx.tolist() == [[1, 2]]
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[:, [1, 2]])


def test_greedy_score_and_per_row_k():
    logp = torch.tensor([[-0.1, -1.0, -3.0], [-0.1, -1.0, -3.0]])
    r = torch.tensor([[0.0, 1.0, 10.0], [0.0, 1.0, 10.0]])
    # row 0: k = 3, w = 1 -> scores -0.1, 0.0, 7.0; row 1: k = 2 hides the third candidate
    choice = select_candidates(logp, r, [req(k=3, w=1.0), req(k=2, w=1.0)])
    assert choice.tolist() == [2, 1]
    assert select_candidates(logp, r, [req(k=3, w=0.0), req(k=3, w=0.05)]).tolist() == [0, 0]


def test_stochastic_frequencies_follow_softmax_of_score_over_temperature():
    logp, r = torch.tensor([[-0.5, -1.0, -2.0, -9.0]]), torch.tensor([[0.0, 0.5, 1.0, 0.0]])
    rq = req(k=3, w=1.0, mode="stochastic", temperature=0.5, seed=123)
    n = 4000
    picks = []
    for _ in range(n):  # one draw per response position: the noise is a function of (seed, position)
        picks.append(select_candidates(logp, r, [rq]))
        rq.out_ids.append(0)
    counts = torch.bincount(torch.cat(picks), minlength=4).double()
    expected = torch.softmax((logp + r)[0, :3] / 0.5, -1)
    assert counts[3] == 0  # outside this request's k
    assert torch.allclose(counts[:3] / n, expected.double(), atol=0.03)
