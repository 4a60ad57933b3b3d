"""Logit controls: with k = 1 or w = 0, ARGS with a control equals Hugging Face greedy `generate` with the same
processor; with ARGS proper, every decoder agrees; min_p / top_p leave only likely candidates; a row's output
does not depend on the batch."""
import os

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from args_engine import ARGSEngine, ARGSParams
from args_engine.decoding.logit_controls import apply_logit_controls, banned_ngram_tokens, dropped_by_min_p_top_p
from step_faults import finish_after_one_failed_step
from tiny_models import EOS, char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["Hello there", "Hi", "What is the best way to cook rice?"]
N = 16
USE_TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


@pytest.fixture(scope="module")
def models():
    return tiny_lm(), tiny_rm(), char_tokenizer()


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the generated tokens, written independently of the engine."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        for b in range(scores.shape[0]):
            for t in set(input_ids[b, self.prompt_len:].tolist()):
                count = input_ids[b, self.prompt_len:].tolist().count(t)
                scores[b, t] -= self.frequency * count + self.presence
        return scores


def hf_tokens(lm, ids: list[int], hf_kwargs: dict, processors=None) -> list[int]:
    x = torch.tensor([ids])
    out = lm.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=N, eos_token_id=EOS,
                      pad_token_id=EOS, logits_processor=LogitsProcessorList(processors or []), **hf_kwargs)
    row = out[0, len(ids):].tolist()
    return row[:row.index(EOS) + 1] if EOS in row else row


CONTROLS = [
    ({"repetition_penalty": 1.8}, {"repetition_penalty": 1.8}),
    ({"repetition_penalty": 0.7}, {"repetition_penalty": 0.7}),
    ({"no_repeat_ngram_size": 2}, {"no_repeat_ngram_size": 2}),
    ({"logit_bias": {5: 4.0, 7: -100.0}}, {"sequence_bias": {(5,): 4.0, (7,): -100.0}}),
    ({"repetition_penalty": 1.3, "no_repeat_ngram_size": 3, "logit_bias": {9: 2.5}},
     {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3, "sequence_bias": {(9,): 2.5}}),
]


@pytest.mark.parametrize("backend", ["native", "reference", "naive"])
@pytest.mark.parametrize("ours, theirs", CONTROLS)
def test_k1_equals_hf_generate_with_the_same_processor(models, backend, ours, theirs):
    lm, rm, tok = models
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend=backend, raw=True, **({"block_size": 4}
                                                                            if backend == "native" else {}))
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        for k, w in ((1, 1.5), (4, 0.0)):
            out = engine.generate([ids], ARGSParams(k=k, w=w, max_new_tokens=N, **ours), progress=False)[0]
            assert out.token_ids == hf_tokens(lm, ids, theirs), (prompt, k, w)


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 1.2), (-0.5, 0.8)])
def test_presence_and_frequency_penalties_match_openai_semantics(models, presence, frequency):
    lm, rm, tok = models
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, block_size=4)
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        out = engine.generate([ids], ARGSParams(k=1, max_new_tokens=N, presence_penalty=presence,
                                                frequency_penalty=frequency), progress=False)[0]
        assert out.token_ids == hf_tokens(lm, ids, {}, [OpenAIPenalties(len(ids), presence, frequency)])


CONTROLLED = dict(repetition_penalty=1.4, presence_penalty=0.5, frequency_penalty=0.3, no_repeat_ngram_size=3,
                  logit_bias={4: 1.0, 11: -3.0}, min_p=0.02, top_p=0.95)


@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_all_decoders_agree_with_controls(models, mode):
    lm, rm, tok = models
    params = ARGSParams(k=5, w=1.5, mode=mode, temperature=0.9, seed=4, max_new_tokens=N, **CONTROLLED)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    outs = {b: [o.token_ids for o in ARGSEngine(lm, rm, tokenizer=tok, backend=b, raw=True).generate(
        ids, params, progress=False)] for b in ("native", "reference", "naive")}
    assert outs["native"] == outs["reference"] == outs["naive"]
    if USE_TRITON:  # the kernels take the -inf logits of dropped tokens too
        triton = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, use_triton=True)
        assert [o.token_ids for o in triton.generate(ids, params, progress=False)] == outs["native"]
    plain = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True).generate(
        ids, ARGSParams(k=5, w=1.5, mode=mode, temperature=0.9, seed=4, max_new_tokens=N), progress=False)
    assert [o.token_ids for o in plain] != outs["native"]  # the controls change something


def test_a_rows_controls_do_not_depend_on_the_batch(models):
    lm, rm, tok = models
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, block_size=4)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    params = [ARGSParams(k=5, w=1.0, max_new_tokens=N, **CONTROLLED), ARGSParams(k=3, w=2.0, max_new_tokens=N),
              ARGSParams(k=5, w=0.5, max_new_tokens=N, repetition_penalty=2.0)]
    together = engine.generate(ids, params, progress=False)
    for i in range(3):
        assert engine.generate([ids[i]], params[i], progress=False)[0].token_ids == together[i].token_ids


@pytest.mark.parametrize("control", [{"min_p": 0.3}, {"top_p": 0.5}])
def test_min_p_and_top_p_keep_only_likely_candidates(models, control):
    lm, rm, tok = models
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, block_size=4)
    for prompt in PROMPTS:
        out = engine.generate([tok(prompt)["input_ids"]], ARGSParams(k=8, w=20.0, max_new_tokens=N, **control),
                              progress=False)[0]
        with torch.no_grad():
            x = torch.tensor([out.prompt_token_ids + out.token_ids])
            probs = torch.softmax(lm(input_ids=x).logits[0].double(), -1)  # [T, V]
        P = len(out.prompt_token_ids)
        for i, t in enumerate(out.token_ids):
            p = probs[P - 1 + i]
            if "min_p" in control:
                assert p[t] >= control["min_p"] * p.max()
            else:
                assert p[p > p[t]].sum() < control["top_p"]


def test_row_helpers():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 2) == [3]  # the last token, 2, was followed by 3
    assert banned_ngram_tokens([5, 6], 1) == [5, 6] and banned_ngram_tokens([5], 3) == []
    x = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert dropped_by_min_p_top_p(x, 0.5, 1.0).tolist() == [False, False, True, True]
    assert dropped_by_min_p_top_p(x, 0.0, 0.7).tolist() == [False, False, True, True]
    assert dropped_by_min_p_top_p(x, 0.0, 0.4).tolist() == [False, True, True, True]
    logits = torch.randn(2, 10)
    before = logits.clone()
    out = apply_logit_controls(logits, [ARGSParams(), ARGSParams(repetition_penalty=2.0)], [[1, 2], [3]], [1, 1])
    assert torch.equal(logits, before) and torch.equal(out[0], before[0])  # no in-place change; row 0 untouched
    assert out[1, 3] == (before[1, 3] / 2 if before[1, 3] > 0 else before[1, 3] * 2)


def test_top_p_just_below_one_still_drops_the_tail():
    """top_p is decided in double precision on the host: 1 - 1e-9 rounds to 1.0 in float32, and must still drop
    the tokens whose likelier mass reaches 1.0 (as a per-row float comparison did)."""
    x = torch.randn(1, 50000, generator=torch.Generator().manual_seed(0)) * 4
    out = apply_logit_controls(x, [ARGSParams(top_p=1 - 1e-9)], [[1]], [1])
    assert out.isinf().sum() > 0 and torch.equal(apply_logit_controls(x, [ARGSParams(top_p=1.0)], [[1]], [1]), x)


def test_hf_hook_takes_the_configs_controls(models):
    import args_engine.hf
    lm, rm, tok = models
    ids = tok(PROMPTS[2])["input_ids"]
    params = ARGSParams(k=5, w=1.5, max_new_tokens=N, repetition_penalty=1.5, no_repeat_ngram_size=2,
                        presence_penalty=0.4, logit_bias={5: 2.0})
    expected = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True).generate([ids], params, progress=False)
    x = torch.tensor([ids])
    out = lm.generate(x, attention_mask=torch.ones_like(x), custom_generate=args_engine.hf.generate, reward_model=rm,
                      args_k=5, args_w=1.5, max_new_tokens=N, repetition_penalty=1.5, no_repeat_ngram_size=2,
                      sequence_bias={(5,): 2.0}, args_presence_penalty=0.4, pad_token_id=EOS, eos_token_id=EOS)
    assert out[0, len(ids):len(ids) + len(expected[0].token_ids)].tolist() == expected[0].token_ids


def test_server_takes_openai_and_hf_controls(models):
    from args_engine.integrations.server import create_app
    from args_engine.integrations.server_config import ServerConfig
    from server_util import ServerThread, post
    lm, rm, tok = models
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", block_size=4)
    fields = {"presence_penalty": 0.5, "frequency_penalty": 0.3, "repetition_penalty": 1.4, "no_repeat_ngram_size": 3,
              "min_p": 0.01, "top_p": 0.98, "logit_bias": {"5": 3.0}}
    ids = tok("Hello there")["input_ids"]
    expected = ARGSEngine(lm, rm, tokenizer=tok, backend="native", block_size=4).generate(
        [ids], ARGSParams(k=4, w=1.0, max_new_tokens=N, **{**fields, "logit_bias": {5: 3.0}}), progress=False)[0]
    with ServerThread(create_app(engine, ServerConfig(served_model_names=["tiny"]))) as url:
        body = {"model": "tiny", "prompt": "Hello there", "max_tokens": N, "args_k": 4, **fields}
        status, r, _ = post(url, "/v1/completions", body)
        assert status == 200 and r["choices"][0]["text"] == expected.text
        for field, bad in [("presence_penalty", 3), ("repetition_penalty", 0), ("no_repeat_ngram_size", -1),
                           ("min_p", 2), ("top_p", 0), ("logit_bias", {"x": 1}), ("logit_bias", {"5": 500}),
                           ("logit_bias", {"999999": 1})]:
            status, err, _ = post(url, "/v1/completions", {**body, field: bad})
            assert status == 400 and err["error"]["param"] == field, (field, bad, err)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_bans_on_the_device_equal_the_host_oracle(n):
    from args_engine.decoding.logit_controls import ngram_bans

    g = torch.Generator().manual_seed(n)
    rows = [torch.randint(0, 4, (int(L),), generator=g).tolist() for L in (0, 1, 2, 3, 5, 9, 17, 20)]  # 20: no padding
    V = 4
    hist = torch.full((len(rows), 20), V)
    for i, r in enumerate(rows):
        hist[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    bans = ngram_bans(hist, torch.tensor([len(r) for r in rows]), n, V)
    for i, r in enumerate(rows):
        assert sorted(set(bans[i].tolist()) - {V}) == banned_ngram_tokens(r, n), (r, n)


def test_native_history_is_copied_once_then_kept_on_the_device(models, monkeypatch):
    """The controlled rows' tokens cross once per sequence (its first step); later steps copy none of them, the
    step appends its own token; slots go back when sequences finish; more sequences and longer ones than the
    table first holds grow it. Tokens equal the reference decoder's."""
    lm, rm, tok = models
    native = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, block_size=4)
    runner = native.decoder.runner
    runner.controls = type(runner.controls)(runner.device, runner.vocab_size, slots=2, width=8)
    copied, real = [], runner.transfer.pack

    def pack(a, *regions):
        copied.append({k: v.shape for k, v in a.items() if k.startswith("ctl_")})
        return real(a, *regions)
    monkeypatch.setattr(runner.transfer, "pack", pack)
    ids = [tok(p)["input_ids"] for p in PROMPTS] * 2  # 6 sequences, 2 slots at first; prompts past width 8
    params = [ARGSParams(k=4, w=1.0, max_new_tokens=N, repetition_penalty=1.5, no_repeat_ngram_size=2),
              ARGSParams(k=4, w=1.0, max_new_tokens=N),
              ARGSParams(k=3, w=2.0, max_new_tokens=N, presence_penalty=0.8, frequency_penalty=0.4)] * 2
    got = [o.token_ids for o in native.generate(ids, params, progress=False)]
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference", raw=True).generate(ids, params, progress=False)
    assert got == [o.token_ids for o in ref]
    steps = [c for c in copied if "ctl_slot" in c]
    assert len(steps) >= N and "ctl_init" in steps[0] and steps[0]["ctl_init"][0] == 4  # 4 controlled rows
    assert all("ctl_init" not in c and "ctl_hist" not in c for c in steps[1:])  # no history after the first
    assert runner.controls.tokens.shape[0] >= 4 and runner.controls.tokens.shape[1] > 8
    assert runner.controls.num_slots_in_use == 0 and len(runner.controls.free) == runner.controls.tokens.shape[0]


def test_a_step_that_fails_after_its_appends_copies_those_rows_again(models, monkeypatch):
    """A slot holds padding past its sequence's length (no mask per step): a step that appended its tokens on the
    device and then failed leaves them there, so the next step copies those rows again. A reused slot is written
    whole. Tokens equal an uninterrupted run's."""
    lm, rm, tok = models
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    params = ARGSParams(k=4, w=1.0, max_new_tokens=N, repetition_penalty=1.5, presence_penalty=0.8,
                        no_repeat_ngram_size=2)
    want = [o.token_ids for o in ARGSEngine(lm, rm, tokenizer=tok, backend="reference", raw=True).generate(
        ids, params, progress=False)]
    native = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, block_size=4)
    dec = native.decoder
    reqs = [native.make_request(i, params) for i in ids]
    dec.add_requests(reqs)
    # failing at the step's one read: the device work, the history's appends included, is done
    finish_after_one_failed_step(monkeypatch, dec, dec.runner, "read")
    assert [r.out_ids for r in reqs] == want
