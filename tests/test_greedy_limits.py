"""k = 1 or w = 0 is plain greedy decoding; stochastic mode only emits top-k tokens and is seeded."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from tiny_models import EOS, char_tokenizer, tiny_lm, tiny_rm

PROMPT = "Tell me a story"


def hf_greedy(lm, ids, n):
    out = lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("backend", ["naive", "reference"])
@pytest.mark.parametrize("params", [ARGSParams(k=1, w=3.0, max_new_tokens=15),
                                    ARGSParams(k=10, w=0.0, max_new_tokens=15)], ids=["k1", "w0"])
def test_reduces_to_greedy(family, backend, params):
    lm, rm, tok = tiny_lm(family), tiny_rm(family), char_tokenizer()
    params.ignore_eos = True
    out = ARGSEngine(lm, rm, tokenizer=tok, backend=backend).generate(PROMPT, params, progress=False)[0]
    assert out.token_ids == hf_greedy(lm, out.prompt_token_ids, 15)


def test_args_changes_the_output():
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    eng = ARGSEngine(lm, rm, tokenizer=tok)
    greedy = eng.generate(PROMPT, ARGSParams(k=1, max_new_tokens=15), progress=False)[0]
    args = eng.generate(PROMPT, ARGSParams(k=10, w=2.0, max_new_tokens=15), progress=False)[0]
    assert args.token_ids != greedy.token_ids
    assert sum(args.rewards) > sum(greedy.rewards)


def test_stochastic_seeded_and_within_topk():
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    eng = ARGSEngine(lm, rm, tokenizer=tok)
    p = lambda seed: ARGSParams(k=4, w=1.0, mode="stochastic", temperature=1.0, seed=seed, max_new_tokens=20)
    a = eng.generate(PROMPT, p(1), progress=False)[0]
    assert eng.generate(PROMPT, p(1), progress=False)[0].token_ids == a.token_ids
    others = {tuple(eng.generate(PROMPT, p(s), progress=False)[0].token_ids) for s in range(2, 6)}
    assert len(others | {tuple(a.token_ids)}) > 1
    ids = list(a.prompt_token_ids)
    for t in a.token_ids:
        with torch.no_grad():
            top = lm(torch.tensor([ids])).logits[0, -1].topk(4).indices.tolist()
        assert t in top
        ids.append(t)


def test_stops_on_eos_and_reports_finish_reason():
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    eng = ARGSEngine(lm, rm, tokenizer=tok)
    free = eng.generate(PROMPT, ARGSParams(k=3, max_new_tokens=12), progress=False)[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    # make the 5th generated token the end-of-sequence token: decoding must stop right there
    eng.eos_ids = eng.decoder.eos_ids = {free.token_ids[4]}
    cut = eng.generate(PROMPT, ARGSParams(k=3, max_new_tokens=12), progress=False)[0]
    first = free.token_ids.index(free.token_ids[4])
    assert cut.token_ids == free.token_ids[:first + 1] and cut.finish_reason == "stop"
    assert EOS not in cut.token_ids or cut.token_ids[-1] == EOS


@pytest.mark.parametrize("backend", ["naive", "reference"])
def test_stop_strings(backend):
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    eng = ARGSEngine(lm, rm, tokenizer=tok, backend=backend)
    free = eng.generate(PROMPT, ARGSParams(k=3, max_new_tokens=12), progress=False)[0]
    stop = free.text[5:7]
    out = eng.generate(PROMPT, ARGSParams(k=3, max_new_tokens=12, stop=[stop, "zzzz"]), progress=False)[0]
    assert out.finish_reason == "stop"
    assert out.text == free.text[:free.text.index(stop)]
    assert free.token_ids[:len(out.token_ids)] == out.token_ids


def test_context_limit_ends_generation():
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    eng = ARGSEngine(lm, rm, tokenizer=tok)
    prompt = [5] * 250  # the tiny models hold 256 positions
    out = eng.generate([prompt], ARGSParams(k=2, max_new_tokens=50), progress=False)[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"
