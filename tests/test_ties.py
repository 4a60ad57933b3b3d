"""One tie rule everywhere: among equal log-probabilities the lower token id comes first, for the candidates and
so for the choice. With coarse logits (bf16 or quantized models tie often) a row's tokens must not depend on its
neighbours' k, the step mode, or the backend (torch path, Triton kernels, reference decoder)."""
import os

import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.kernels.refs import topk_logprobs_ref
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


def stable_sort_topk(logits: torch.Tensor, k: int):
    """The rule, written the slow obvious way."""
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    logp = torch.log_softmax(x.masked_fill(x.isnan(), float("-inf")), dim=-1)
    vals, ids = torch.sort(logp, dim=-1, descending=True, stable=True)
    return vals[:, :k], ids[:, :k]


def coarse_logits(seed: int, B: int, V: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, V, generator=g) * 2).round() / 2  # halves: many ties
    x[0, torch.rand(V, generator=g) < 0.4] = float("-inf")  # min_p / top_p leave -inf behind
    x[0, seed % V] = 0.5  # ... but always one finite logit
    x[-1, :min(3, V - 1)] = float("nan")  # counts as -inf
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_topk_takes_the_lower_id_among_ties(dtype):
    for seed in range(200):
        V = 2 + seed % 257
        k = 1 + seed % min(V, 64)
        x = coarse_logits(seed, 4, V, dtype)
        vals, ids = topk_logprobs_ref(x, k)
        want_vals, want_ids = stable_sort_topk(x, k)
        assert torch.equal(ids, want_ids), (seed, V, k)
        torch.testing.assert_close(vals, want_vals, rtol=0, atol=0)
        # a row's first j candidates are its top-j: they do not depend on the k asked for
        assert torch.equal(topk_logprobs_ref(x, max(1, k // 2))[1], ids[:, :max(1, k // 2)])


def test_a_row_with_no_finite_log_p_takes_its_lowest_ids_on_every_path():
    """All logits -inf, or one +inf: every log p is NaN; the CPU fast path and the device's key path agree."""
    from args_engine.kernels.refs import _topk_lower_id
    for row in ([float("-inf")] * 8, [float("inf"), float("inf"), 1.0, 2.0, 0.0, 0.0, 0.0, 0.0]):
        x = torch.tensor([row, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
        _, ids = topk_logprobs_ref(x, 2)
        assert ids[0].tolist() == [0, 1] and ids[1].tolist() == [7, 6]
        key = torch.log_softmax(x, -1).nan_to_num(nan=float("-inf"))
        assert torch.equal(_topk_lower_id(key, 2)[1], ids)


@pytest.mark.skipif(not TRITON, reason="needs CUDA or TRITON_INTERPRET=1")
def test_kernel_and_torch_agree_on_ties():
    from args_engine.kernels.topk_logprobs import topk_logprobs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for seed in range(6):
        x = coarse_logits(seed, 3, 300)
        for k in (1, 3, 8, 64):
            _, ids = topk_logprobs(x.to(device), k)
            assert torch.equal(ids.cpu(), topk_logprobs_ref(x, k)[1]), (seed, k)


def coarse_models():
    """A tiny pair whose LM logits are rounded to halves (a forward hook on lm_head: every decoder calls it)."""
    lm, rm = tiny_lm(dtype=torch.float64), tiny_rm(dtype=torch.float64)
    lm.get_output_embeddings().register_forward_hook(lambda module, args, out: (out * 2).round() / 2)
    return lm, rm, char_tokenizer()


PROMPTS = ["Hello there", "Tell me a joke.", "Hi"]
K3 = ARGSParams(k=3, w=0.5, max_new_tokens=12)
K8 = ARGSParams(k=8, w=0.5, max_new_tokens=12)


@pytest.mark.parametrize("backend, use_triton, step_mode", [
    ("reference", None, None), ("native", False, "dynamic"), ("native", False, "static"),
    pytest.param("native", True, "dynamic", marks=pytest.mark.skipif(not TRITON, reason="needs Triton"))])
def test_a_rows_tokens_do_not_depend_on_its_neighbours_k(backend, use_triton, step_mode):
    lm, rm, tok = coarse_models()
    kw = {} if backend == "reference" else dict(block_size=4, use_triton=use_triton, step_mode=step_mode)
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend=backend, **kw)
    alone = [engine.generate([p], K3)[0].token_ids for p in PROMPTS]
    beside_k8 = engine.generate(PROMPTS + PROMPTS, [K3] * len(PROMPTS) + [K8] * len(PROMPTS))
    assert [o.token_ids for o in beside_k8[:len(PROMPTS)]] == alone
    # and every backend picks the same: the reference decoder is the oracle
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    assert alone == [o.token_ids for o in ref.generate(PROMPTS, K3)]
