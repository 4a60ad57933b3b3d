"""Prompt log-likelihoods (params.prompt_logprobs), the way lm-evaluation-harness scores choices: each prompt
token's log p under the LM given the tokens before it, from the prefill the engine runs anyway. Oracle: plain
transformers on the same ids. max_new_tokens 0 scores without decoding."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["a", "Hello there", "What is the best way to cook rice? Slowly, with a lid on."]  # 1, short, chunked


@pytest.fixture(scope="module")
def models():
    return tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32), char_tokenizer()


def oracle(lm, ids: list[int], n: int):
    """transformers: log p of token p + 1 at position p, and the n likeliest there."""
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)  # [P, V]
    lp = [None] + [logp[p, ids[p + 1]].item() for p in range(len(ids) - 1)]
    top = [None] + [list(zip(*[t.tolist() for t in reversed(logp[p].topk(n))])) for p in range(len(ids) - 1)]
    return lp, top


def engines(models):
    lm, rm, tok = models
    yield "native", ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, block_size=4,
                               max_num_batched_tokens=16)  # the long prompt takes several chunks
    yield "reference", ARGSEngine(lm, rm, tokenizer=tok, backend="reference", raw=True)


def check(out, lm, n):
    lp, top = oracle(lm, out.prompt_token_ids, n)
    assert out.prompt_logprobs[0] is None and out.prompt_top_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    assert out.prompt_logprobs[1:] == pytest.approx(lp[1:], abs=1e-5)
    for got, want in zip(out.prompt_top_logprobs[1:], top[1:]):
        assert [t for t, _ in got] == [t for t, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-5)


@pytest.mark.parametrize("max_new_tokens", [3, 0])
def test_prompt_logprobs_equal_transformers(models, max_new_tokens):
    lm = models[0]
    params = ARGSParams(k=4, w=1.0, max_new_tokens=max_new_tokens, prompt_logprobs=2)
    for name, engine in engines(models):
        outs = engine.generate(PROMPTS, params, progress=False)
        for out in outs:
            check(out, lm, 2)
            assert len(out.token_ids) == max_new_tokens or out.finish_reason == "stop", name
        if max_new_tokens == 0:
            assert all(o.token_ids == [] and o.text == "" and o.finish_reason == "length" for o in outs), name


def test_scoring_rows_change_no_one_elses_tokens(models):
    """A batch mixing scoring-only rows, scoring-and-decoding rows and plain rows: the decoding rows' tokens are
    those they get alone; a prompt seen before is scored in full (no prefix-cache hit skips its positions)."""
    lm, rm, tok = models
    engine = dict(engines(models))["native"]
    plain = ARGSParams(k=4, w=1.0, max_new_tokens=5)
    alone = engine.generate(PROMPTS, plain, progress=False)
    mixed = engine.generate(PROMPTS * 2, [plain] * 3 + [ARGSParams(k=4, w=1.0, max_new_tokens=m, prompt_logprobs=1)
                                                        for m in (0, 5, 0)], progress=False)
    assert [o.token_ids for o in mixed[:3]] == [o.token_ids for o in alone]
    assert mixed[4].token_ids == alone[1].token_ids
    assert all(o.prompt_logprobs is None for o in mixed[:3])
    for o in mixed[3:]:
        check(o, lm, 1)
    assert engine.decoder.num_used_blocks == 0  # nothing leaked


def test_max_new_tokens_zero_needs_prompt_logprobs_and_a_backend_that_scores(models):
    lm, rm, tok = models
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1 .0 only with prompt_logprobs"):
        ARGSParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt_logprobs must be None or an integer in"):
        ARGSParams(prompt_logprobs=21)
    naive = ARGSEngine(lm, rm, tokenizer=tok, backend="naive", raw=True)
    with pytest.raises(ValueError, match="prompt_logprobs needs the native backend"):
        naive.generate(["hi"], ARGSParams(prompt_logprobs=0, max_new_tokens=0), progress=False)
