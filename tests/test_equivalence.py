"""Oracle (a) naive vs (b) cached reference: identical ARGS tokens, alone and inside mixed-length batches."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

FAMILIES = ["llama", "gpt2", "opt"]
PROMPTS = ["Hello there", "Hi", "What is the best way to learn to cook rice at home?", "x"]


def engines(family, dtype=torch.float64):
    lm, rm, tok = tiny_lm(family, dtype=dtype), tiny_rm(family, dtype=dtype), char_tokenizer()
    return {b: ARGSEngine(lm, rm, tokenizer=tok, backend=b) for b in ("naive", "reference")}


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_identical_single_and_batched(family):
    eng = engines(family)
    params = ARGSParams(k=6, w=1.5, max_new_tokens=12)
    naive = [eng["naive"].generate(p, params, progress=False)[0] for p in PROMPTS]
    batched = eng["reference"].generate(PROMPTS, params, progress=False)
    alone = [eng["reference"].generate(p, params, progress=False)[0] for p in PROMPTS]
    for n, b, a in zip(naive, batched, alone):
        assert n.token_ids == b.token_ids == a.token_ids
        torch.testing.assert_close(torch.tensor(b.rewards), torch.tensor(n.rewards), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(torch.tensor(a.rewards), torch.tensor(n.rewards), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_stochastic_identical_across_backends_and_batches(family):
    eng = engines(family)
    params = ARGSParams(k=5, w=1.0, mode="stochastic", temperature=0.8, max_new_tokens=10, seed=7)
    naive = eng["naive"].generate(PROMPTS[:3], params, progress=False)
    ref = eng["reference"].generate(PROMPTS[:3], params, progress=False)
    alone = eng["reference"].generate(PROMPTS[1], params, progress=False)[0]
    assert [o.token_ids for o in naive] == [o.token_ids for o in ref]
    assert alone.token_ids == ref[1].token_ids


def test_per_request_params_in_one_batch():
    eng = engines("llama")
    plist = [ARGSParams(k=1, max_new_tokens=5), ARGSParams(k=8, w=2.0, max_new_tokens=9),
             ARGSParams(k=3, w=0.5, mode="stochastic", seed=3, max_new_tokens=7)]
    mixed = eng["reference"].generate(PROMPTS[:3], plist, progress=False)
    for p, sp, out in zip(PROMPTS, plist, mixed):
        assert out.token_ids == eng["naive"].generate(p, sp, progress=False)[0].token_ids
        assert len(out.token_ids) == sp.max_new_tokens or out.token_ids[-1] == 1  # EOS ends early


def test_float32_batched_matches_alone():
    eng = engines("llama", dtype=torch.float32)
    params = ARGSParams(k=4, w=1.0, max_new_tokens=8)
    batched = eng["reference"].generate(PROMPTS, params, progress=False)
    for p, b in zip(PROMPTS, batched):
        a = eng["reference"].generate(p, params, progress=False)[0]
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(b.rewards), torch.tensor(a.rewards), rtol=1e-4, atol=1e-4)


def test_lm_and_rm_in_different_dtypes():
    lm, tok = tiny_lm(dtype=torch.float64), char_tokenizer()
    params = ARGSParams(k=4, w=1.0, max_new_tokens=6)
    ref64 = ARGSEngine(lm, tiny_rm(dtype=torch.float64), tokenizer=tok).generate(PROMPTS[:2], params, progress=False)
    mixed = ARGSEngine(lm, tiny_rm(dtype=torch.float32), tokenizer=tok).generate(PROMPTS[:2], params, progress=False)
    for a, b in zip(ref64, mixed):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(b.rewards), torch.tensor(a.rewards), rtol=1e-4, atol=1e-4)


def test_sliding_window_models_capped_at_the_window():
    from transformers import MistralConfig, MistralForCausalLM, MistralForSequenceClassification
    cfg = dict(vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, sliding_window=16, pad_token_id=0)
    torch.manual_seed(0)
    lm = MistralForCausalLM(MistralConfig(**cfg)).double().eval()
    rm = MistralForSequenceClassification(MistralConfig(num_labels=1, **cfg)).double().eval()
    params = ARGSParams(k=6, w=1.0, max_new_tokens=20, ignore_eos=True)
    outs = {b: ARGSEngine(lm, rm, backend=b).generate([[5, 6, 7, 8, 9, 10, 11, 12], [5, 6]], params, progress=False)
            for b in ("naive", "reference")}
    assert [o.token_ids for o in outs["naive"]] == [o.token_ids for o in outs["reference"]]
    assert [len(o.token_ids) for o in outs["reference"]] == [8, 14]  # prompt + response stop at the window
