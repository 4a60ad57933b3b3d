"""Hugging Face drop-ins: the custom_generate hook and ARGSLogitsProcessor give the engine's ARGS-greedy tokens,
alone and in left-padded batches."""
import pytest
import torch

import args_engine.hf
from args_engine import ARGSEngine, ARGSParams
from args_engine.hf import ARGSLogitsProcessor
from tiny_models import EOS, PAD, char_tokenizer, tiny_lm, tiny_rm

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


def test_hook_samples_differ_across_return_sequences():
    """generate repeats each prompt num_return_sequences times; each copy samples with its own seed."""
    lm, rm, tok = setup()
    inputs = tok(["Hi"], return_tensors="pt")
    out = lm.generate(**inputs, custom_generate=args_engine.hf.generate, reward_model=rm, args_k=K, args_w=W,
                      do_sample=True, temperature=1.0, num_return_sequences=4, max_new_tokens=N, pad_token_id=PAD)
    assert out.shape[0] == 4 and len({tuple(row) for row in out.tolist()}) > 1
    again = lm.generate(**inputs, custom_generate=args_engine.hf.generate, reward_model=rm, args_k=K, args_w=W,
                        do_sample=True, temperature=1.0, num_return_sequences=4, max_new_tokens=N, pad_token_id=PAD)
    assert torch.equal(out, again)  # seeded: args_seed + row


def test_hook_refuses_beam_search():
    lm, rm, tok = setup()
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate(**tok(["Hi"], return_tensors="pt"), custom_generate=args_engine.hf.generate, reward_model=rm,
                    num_beams=2, max_new_tokens=3, pad_token_id=PAD)


def test_hook_keeps_one_engine_and_does_not_touch_its_eos():
    lm, rm, tok = setup()
    inputs = tok(PROMPTS, return_tensors="pt", padding=True)
    call = dict(custom_generate=args_engine.hf.generate, reward_model=rm, args_k=K, args_w=W, max_new_tokens=4,
                pad_token_id=PAD)
    lm.generate(**inputs, **call)
    first = lm.__dict__["_args_engine"][2]
    lm.generate(**tok(PROMPTS[:1], return_tensors="pt"), **call)  # another batch size: the same engine
    assert lm.__dict__["_args_engine"][2] is first
    default_eos = set(first.eos_ids)
    lm.generate(**inputs, **call, eos_token_id=5)  # another EOS: a new engine replaces the old one
    replaced = lm.__dict__["_args_engine"][2]
    assert replaced is not first and replaced.eos_ids == {5} and first.eos_ids == default_eos
    assert [k for k in lm.__dict__ if k.startswith("_args_engine")] == ["_args_engine"]


def test_logits_processor_follows_beam_reordering():
    """In a beam search the processor keeps its cache (rows follow their beams) and scores as a fresh rebuild."""
    lm, rm, tok = setup()
    inputs = tok(PROMPTS[:2], return_tensors="pt", padding=True)

    class Rebuilding(ARGSLogitsProcessor):
        def __call__(self, input_ids, scores):
            self.reset()
            return super().__call__(input_ids, scores)

    cached = ARGSLogitsProcessor(rm, k=K, w=W, attention_mask=inputs["attention_mask"])
    prefills = []  # per RM forward: whether it read a whole prefix (a rebuild) rather than the k candidates
    real = cached.rm.forward_trunk
    cached.rm.forward_trunk = lambda **kw: (prefills.append(kw["input_ids"].shape[1] != K), real(**kw))[1]
    beams = dict(num_beams=3, do_sample=False, max_new_tokens=8, pad_token_id=PAD)
    out = lm.generate(**inputs, logits_processor=[cached], **beams)
    fresh = Rebuilding(rm, k=K, w=W, attention_mask=inputs["attention_mask"])
    assert torch.equal(out, lm.generate(**inputs, logits_processor=[fresh], **beams))
    assert inputs["input_ids"].shape[1] != K and len(prefills) >= 8 and sum(prefills) == 1
