"""Hugging Face drop-ins: the custom_generate hook and ARGSLogitsProcessor give the engine's ARGS-greedy tokens,
alone and in left-padded batches."""
import pytest
import torch

import args_engine.hf
from args_engine import ARGSEngine, ARGSParams
from args_engine.hf import ARGSLogitsProcessor
from tiny import EOS, PAD, char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["Hello there", "Hi", "What is the best way to cook rice?"]
K, W, N = 6, 1.5, 12


def setup(family="llama"):
    tok = char_tokenizer()
    tok.padding_side = "left"
    return tiny_lm(family), tiny_rm(family), tok


def engine_tokens(lm, rm, tok, prompts, family="llama"):
    backend = "native" if family == "llama" else "reference"
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend=backend, raw=True)
    ids = [tok(p)["input_ids"] for p in prompts]
    return [o.token_ids for o in engine.generate(ids, ARGSParams(k=K, w=W, max_new_tokens=N), progress=False)]


def new_tokens(seqs, P):
    """Strip the prompt and the padding after EOS from generate's output rows."""
    rows = []
    for row in seqs[:, P:].tolist():
        rows.append(row[:row.index(EOS) + 1] if EOS in row else row)
    return rows


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_custom_generate_hook_equals_engine(family):
    lm, rm, tok = setup(family)
    expected = engine_tokens(lm, rm, tok, PROMPTS, family)
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    out = lm.generate(**inputs, custom_generate=args_engine.hf.generate, reward_model=rm, args_k=K, args_w=W,
                      max_new_tokens=N, pad_token_id=PAD)
    P = inputs["input_ids"].shape[1]
    assert out.dtype == torch.long and torch.equal(out[:, :P], inputs["input_ids"])
    assert new_tokens(out, P) == expected
    assert out.shape[1] == P + max(len(t) for t in expected)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logits_processor_greedy_equals_engine(family):
    lm, rm, tok = setup(family)
    expected = engine_tokens(lm, rm, tok, PROMPTS, family)
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    proc = ARGSLogitsProcessor(rm, k=K, w=W, attention_mask=inputs["attention_mask"])
    out = lm.generate(**inputs, logits_processor=[proc], do_sample=False, max_new_tokens=N, pad_token_id=PAD)
    assert new_tokens(out, inputs["input_ids"].shape[1]) == expected
    # one prompt alone, padding found through pad_token_id, and a second call on the same processor
    alone = tok(PROMPTS[2:], return_tensors="pt")
    proc2 = ARGSLogitsProcessor(rm, k=K, w=W, pad_token_id=PAD)
    for _ in range(2):
        out = lm.generate(**alone, logits_processor=[proc2], do_sample=False, max_new_tokens=N, pad_token_id=PAD)
        assert new_tokens(out, alone["input_ids"].shape[1]) == expected[2:]


def test_logits_processor_cache_matches_recompute():
    """Scores from the cached path equal a fresh rebuild at every step."""
    lm, rm, tok = setup()
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    cached = ARGSLogitsProcessor(rm, k=K, w=W, attention_mask=inputs["attention_mask"])
    fresh = ARGSLogitsProcessor(rm, k=K, w=W, attention_mask=inputs["attention_mask"])
    ids = inputs["input_ids"]
    for _ in range(5):
        logits = lm(input_ids=ids, attention_mask=(ids != PAD).long()).logits[:, -1].float()  # [B, V]
        a = cached(ids, logits)
        fresh.reset()
        torch.testing.assert_close(a, fresh(ids, logits))
        ids = torch.cat([ids, a.argmax(1, keepdim=True)], dim=1)


def test_logits_processor_sampling_only_draws_candidates():
    """With k = 1 the only candidate is the LM's argmax: sampling through the processor is plain greedy."""
    lm, rm, tok = setup()
    inputs = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    proc = ARGSLogitsProcessor(rm, k=1, w=W, attention_mask=inputs["attention_mask"])
    torch.manual_seed(0)
    sampled = lm.generate(**inputs, logits_processor=[proc], do_sample=True, temperature=0.7, top_k=0,
                          max_new_tokens=8, pad_token_id=PAD)
    greedy = lm.generate(**inputs, do_sample=False, max_new_tokens=8, pad_token_id=PAD)
    assert torch.equal(sampled, greedy)


def test_hook_needs_a_reward_model():
    lm, _, tok = setup()
    with pytest.raises(ValueError, match="reward_model"):
        lm.generate(**tok(["Hi"], return_tensors="pt"), custom_generate=args_engine.hf.generate, max_new_tokens=3)
