"""Oracle (c)/(d): the native engine (torch ops, and Triton kernels under the interpreter) gives the reference
decoder's ARGS tokens, alone, in mixed batches, with requests arriving mid-run and under preemption; every cache
block is free afterwards."""
import os

import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.engine.request import Request
from step_faults import fail_once, finish_after_one_failed_step
from tiny_models import EOS, char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["Hello there", "Hi", "What is the best way to learn to cook rice at home?", "x", "Tell me a joke."]
GREEDY = ARGSParams(k=6, w=1.5, max_new_tokens=14)
STOCHASTIC = ARGSParams(k=5, w=1.0, mode="stochastic", temperature=0.8, max_new_tokens=10, seed=7)
USE_TRITON = [False] + ([True] if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available() else [])


def models(family="llama", dtype=torch.float64):
    return tiny_lm(family, dtype=dtype), tiny_rm(family, dtype=dtype), char_tokenizer()


def native(lm, rm, tok, **kw):
    kw.setdefault("block_size", 4)
    return ARGSEngine(lm, rm, tokenizer=tok, backend="native", **kw)


def assert_all_free(engine):
    bm = engine.decoder.bm
    assert bm.num_free_blocks == bm.num_blocks and bm.allocator.num_sequences == 0
    bm.allocator.check()


def assert_same(ref_outs, nat_outs, tol=1e-9):
    for a, b in zip(ref_outs, nat_outs, strict=True):
        assert a.token_ids == b.token_ids
        assert a.finish_reason == b.finish_reason and a.text == b.text
        torch.testing.assert_close(torch.tensor(b.rewards), torch.tensor(a.rewards), rtol=tol, atol=tol)


def reward_tol(family: str = "llama", use_triton: bool = False) -> float:
    """Rewards agree to 1e-9 in float64 unless a float32 step computed another way sits in the path (the tokens
    agree exactly regardless): Gemma 2's HF attention takes its softmax in float32 even in a float64 model, and
    the Triton path's fused add + RMSNorm sums its float32 statistics (HF's RMSNorm is float32 whatever the
    model dtype) in another order than torch, a float32 ulp here and there."""
    return 1e-5 if use_triton or family in ("gemma2", "gemma3") else 1e-9


NATIVE_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_auto_picks_native_for_llama_family(family):
    lm, rm, tok = models(family, torch.float32)
    assert ARGSEngine(lm, rm, tokenizer=tok).backend == "native"


def test_auto_keeps_reference_for_other_families():
    lm, rm, tok = models("gpt2", torch.float32)
    assert ARGSEngine(lm, rm, tokenizer=tok).backend == "reference"
    with pytest.raises(ValueError, match="model family 'gpt2' is not one of the native families"):
        ARGSEngine(lm, rm, tokenizer=tok, backend="native")


@pytest.mark.parametrize("use_triton", USE_TRITON)
@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_greedy_equals_reference_single_and_batched(family, use_triton):
    lm, rm, tok = models(family)
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    nat = native(lm, rm, tok, use_triton=use_triton)
    expected = [ref.generate(p, GREEDY, progress=False)[0] for p in PROMPTS]
    tol = reward_tol(family, use_triton)
    assert_same(expected, nat.generate(PROMPTS, GREEDY, progress=False), tol)
    assert_same(expected[2:3], nat.generate(PROMPTS[2], GREEDY, progress=False), tol)
    assert_all_free(nat)


@pytest.mark.parametrize("use_triton", USE_TRITON)
def test_stochastic_same_seed_same_text_whatever_the_batch(use_triton):
    lm, rm, tok = models()
    nat = native(lm, rm, tok, use_triton=use_triton)
    batched = nat.generate(PROMPTS, STOCHASTIC, progress=False)
    alone = [nat.generate(p, STOCHASTIC, progress=False)[0] for p in PROMPTS]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference").generate(PROMPTS, STOCHASTIC, progress=False)
    assert [o.token_ids for o in batched] == [o.token_ids for o in ref]  # same per-request Gumbel draws
    assert_all_free(nat)


def test_per_request_params_and_small_batch_size():
    lm, rm, tok = models()
    plist = [ARGSParams(k=1, max_new_tokens=5), ARGSParams(k=8, w=2.0, max_new_tokens=9),
             ARGSParams(k=3, w=0.5, mode="stochastic", seed=3, max_new_tokens=7), GREEDY, STOCHASTIC]
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference").generate(PROMPTS, plist, progress=False)
    nat = native(lm, rm, tok, batch_size=2)  # continuous batching: at most 2 sequences at once
    assert_same(ref, nat.generate(PROMPTS, plist, progress=False))
    assert_all_free(nat)


def test_requests_arriving_mid_run_and_chunked_prefill():
    lm, rm, tok = models()
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    nat = native(lm, rm, tok, max_num_batched_tokens=8)  # long prompts take several steps to prefill
    engine = nat.decoder
    reqs = [nat.make_request(p, GREEDY) for p in PROMPTS]
    engine.add_request(reqs[0])
    pending, steps = reqs[1:], 0
    while engine.has_unfinished() or pending:
        if pending and steps % 3 == 2:
            engine.add_request(pending.pop(0))
        engine.step()
        steps += 1
    for p, r in zip(PROMPTS, reqs):
        assert r.out_ids == ref.generate(p, GREEDY, progress=False)[0].token_ids
    assert_all_free(nat)


@pytest.mark.parametrize("use_triton", USE_TRITON)
def test_preemption_when_blocks_run_out(use_triton):
    lm, rm, tok = models()
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference").generate(PROMPTS, GREEDY, progress=False)
    nat = native(lm, rm, tok, num_blocks=24, use_triton=use_triton)  # the longest request alone needs 21
    assert_same(ref, nat.generate(PROMPTS, GREEDY, progress=False), reward_tol(use_triton=use_triton))
    assert nat.decoder.scheduler.num_preemptions > 0
    assert_all_free(nat)


SHARED_PREFIX_PROMPTS = ["You are a helpful assistant; answer briefly. " + q for q in ("Hi", "Tell me a joke.")]


def models_on_trunks(same_trunk: bool):
    """same_trunk: the RM is a head on the LM's own trunk (like the default RM), so one cache serves both."""
    lm, rm, tok = models()
    if same_trunk:
        rm.model.load_state_dict(lm.model.state_dict())
    return lm, rm, tok


@pytest.mark.parametrize("use_triton", USE_TRITON)
@pytest.mark.parametrize("same_trunk", [False, True])
def test_prefix_cache_reuses_computed_blocks(use_triton, same_trunk):
    lm, rm, tok = models_on_trunks(same_trunk)
    prompts = SHARED_PREFIX_PROMPTS + SHARED_PREFIX_PROMPTS[:1]
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    nat = native(lm, rm, tok, use_triton=use_triton)
    assert nat.decoder.runner.shared == same_trunk
    off = native(lm, rm, tok, use_triton=use_triton, enable_prefix_caching=False)
    tol = reward_tol(use_triton=use_triton)
    ids = [nat.make_request(p, GREEDY).prompt_ids for p in prompts]
    whole_blocks = lambda n: n // 4 * 4  # noqa: E731  (block_size 4)
    # Prompt 2 reuses the blocks it shares with prompt 1; prompt 3 repeats prompt 1: all blocks but the one
    # holding its last token (whose logits must be computed).
    expected_hits = [0, whole_blocks(min(len(os.path.commonprefix([ids[0], ids[1]])), len(ids[1]) - 1)),
                     whole_blocks(len(ids[2]) - 1)]
    for p, hits in zip(prompts, expected_hits):
        before = nat.decoder.bm.num_hit_tokens
        assert_same(ref.generate(p, GREEDY, progress=False), nat.generate(p, GREEDY, progress=False), tol)
        assert nat.decoder.bm.num_hit_tokens - before == hits
        assert_same(ref.generate(p, GREEDY, progress=False), off.generate(p, GREEDY, progress=False), tol)
    assert expected_hits[1] >= 40 and nat.decoder.prefix_cache_hit_rate > 0.5
    assert off.decoder.bm.num_hit_tokens == 0
    # All in one batch: a prompt admitted in the same step reuses the blocks an earlier one's chunk fills in
    # that step's forward; with 12-token chunks it reuses only what earlier chunks and this step's fill.
    batch = prompts[:2] * 2
    expected = ref.generate(batch, GREEDY, progress=False)
    one_step = native(lm, rm, tok, use_triton=use_triton)
    assert_same(expected, one_step.generate(batch, GREEDY, progress=False), tol)
    assert one_step.decoder.bm.num_hit_tokens == expected_hits[1] + whole_blocks(len(ids[0]) - 1) + \
        whole_blocks(len(ids[1]) - 1)
    chunked = native(lm, rm, tok, use_triton=use_triton, max_num_batched_tokens=12)
    assert_same(expected, chunked.generate(batch, GREEDY, progress=False), tol)
    assert chunked.decoder.bm.num_hit_tokens > 0
    for engine in (nat, off, one_step, chunked):
        assert_all_free(engine)


@pytest.mark.parametrize("same_trunk", [False, True])
def test_failed_step_recovers_and_keeps_the_prefix_cache(monkeypatch, same_trunk):
    lm, rm, tok = models_on_trunks(same_trunk)
    prompts = SHARED_PREFIX_PROMPTS
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    nat = native(lm, rm, tok)
    engine = nat.decoder
    assert engine.runner.shared == same_trunk
    first = nat.make_request(prompts[0], GREEDY)
    engine.add_request(first)
    for _ in range(3):  # prompt 1 is prefilled and decoding; its blocks are in the prefix cache
        engine.step()

    # Prompt 2 is admitted with hits on prompt 1's blocks, and its prefill fails: the blocks it marked (to be
    # filled by that prefill) leave the cache; prompt 1's entries stay. Both sequences were in the step: both
    # start over, and prompt 1 finds its own blocks again.
    fail_once(monkeypatch, engine.runner, "_prefill", "forward failed")
    second = nat.make_request(prompts[1], GREEDY)
    engine.add_request(second)
    with pytest.raises(RuntimeError, match="forward failed"):
        engine.step()
    assert engine.num_running == 0 and engine.num_waiting == 2 and engine.num_used_blocks == 0
    assert sorted(engine.failed_request_ids) == sorted(engine.seqs)
    engine.bm.allocator.check()
    hits = engine.bm.num_hit_tokens
    engine.step()
    whole_blocks = lambda n: n // 4 * 4  # noqa: E731  (block_size 4)
    common = len(os.path.commonprefix([first.prompt_ids, second.prompt_ids]))
    # prompt 1 (3 tokens decoded) hits its own blocks; prompt 2 hits what it shares with prompt 1
    assert engine.bm.num_hit_tokens - hits == whole_blocks(len(first.prompt_ids) + 3 - 1) + whole_blocks(common)
    while engine.has_unfinished():
        engine.step()
    for req, p in zip((first, second), prompts):
        assert req.out_ids == ref.generate(p, GREEDY, progress=False)[0].token_ids
    assert_all_free(nat)


@pytest.mark.parametrize("same_trunk", [False, True])
def test_retried_step_gives_a_seeded_stochastic_request_the_same_tokens(monkeypatch, same_trunk):
    """A step that fails after its inputs were prepared (the noise drawn) and is retried must not change a seeded
    request's tokens: the noise is a function of the seed and the position, not of how often a step ran."""
    lm, rm, tok = models_on_trunks(same_trunk)
    want = native(lm, rm, tok).generate(PROMPTS[0], STOCHASTIC)[0].token_ids
    nat = native(lm, rm, tok)
    engine = nat.decoder
    req = nat.make_request(PROMPTS[0], STOCHASTIC)
    engine.add_request(req)
    finish_after_one_failed_step(monkeypatch, engine, engine.runner, "run")
    assert req.out_ids == want
    assert_all_free(nat)


def test_request_larger_than_the_cache_is_refused():
    lm, rm, tok = models()
    nat = native(lm, rm, tok, num_blocks=4)
    with pytest.raises(ValueError, match="cache blocks"):
        nat.generate(PROMPTS[2], GREEDY, progress=False)
    assert_all_free(nat)


def test_streaming_matches_generate_and_abort_frees_blocks():
    lm, rm, tok = models()
    nat = native(lm, rm, tok)
    full = nat.generate(PROMPTS[:3], GREEDY, progress=False)
    texts, tokens, last = ["", "", ""], [[], [], []], {}
    for ev in nat.generate_stream(PROMPTS[:3], GREEDY):
        texts[ev.request_id] += ev.text
        tokens[ev.request_id].append(ev.token_id)
        if ev.finished:
            last[ev.request_id] = ev.output
    assert [o.token_ids for o in full] == tokens
    assert [o.text for o in full] == texts == [last[i].text for i in range(3)]
    assert_all_free(nat)

    stream = nat.generate_stream(PROMPTS, GREEDY)
    next(stream)
    assert nat.decoder.num_used_blocks > 0
    stream.close()  # the client went away: abort everything
    assert_all_free(nat)


def test_stop_strings_are_not_streamed():
    lm, rm, tok = models()
    nat = native(lm, rm, tok)
    free_run = nat.generate(PROMPTS[0], ARGSParams(k=4, w=1.0, max_new_tokens=20, ignore_eos=True),
                            progress=False)[0].text
    stop = free_run[5:8]
    params = ARGSParams(k=4, w=1.0, max_new_tokens=20, ignore_eos=True, stop=[stop])
    streamed = "".join(ev.text for ev in nat.generate_stream(PROMPTS[0], params))
    expected = nat.generate(PROMPTS[0], params, progress=False)[0]
    assert expected.finish_reason == "stop" and streamed == expected.text == free_run[:free_run.find(stop)]
    assert_all_free(nat)


def test_k1_and_w0_are_plain_greedy():
    lm, rm, tok = models()
    nat = native(lm, rm, tok)
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    hf = lm.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=EOS, pad_token_id=0)
    hf_ids = hf[0, len(ids):].tolist()
    for params in (ARGSParams(k=1, w=3.0, max_new_tokens=10), ARGSParams(k=10, w=0.0, max_new_tokens=10)):
        assert nat.generate(PROMPTS[0], params, progress=False)[0].token_ids == hf_ids[:len(hf_ids)]


def test_mid_run_abort_frees_blocks():
    lm, rm, tok = models()
    nat = native(lm, rm, tok)
    engine = nat.decoder
    rids = [engine.add_request(Request(nat.make_request(p, GREEDY).prompt_ids, GREEDY, 256)) for p in PROMPTS]
    engine.step()
    engine.step()
    for rid in rids:
        engine.abort(rid)
    assert not engine.has_unfinished()
    assert_all_free(nat)


@pytest.mark.parametrize("use_triton", USE_TRITON)
def test_rm_on_the_lm_trunk_runs_one_trunk_forward_per_step(use_triton):
    lm, rm, tok = models()
    rm.model.load_state_dict(lm.model.state_dict())  # a reward head on the LM's own trunk, like the default RM
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    shared = native(lm, rm, tok, use_triton=use_triton, num_blocks=24)  # small: preemption happens too
    separate = native(lm, rm, tok, use_triton=use_triton, share_trunk=False)
    assert shared.decoder.runner.shared and not separate.decoder.runner.shared
    assert shared.decoder.runner.lm_kv is shared.decoder.runner.rm_kv  # one cache serves both
    for params in (GREEDY, STOCHASTIC):
        expected = ref.generate(PROMPTS, params, progress=False)
        assert_same(expected, shared.generate(PROMPTS, params, progress=False), reward_tol(use_triton=use_triton))
        assert_same(expected, separate.generate(PROMPTS, params, progress=False), reward_tol(use_triton=use_triton))
    assert shared.decoder.scheduler.num_preemptions > 0 and not shared.decoder.seqs
    assert_all_free(shared)
    assert not native(*models(), use_triton=use_triton).decoder.runner.shared  # different trunks


def test_refused_request_in_a_batch_leaves_nothing_queued():
    lm, rm, tok = models()
    nat = native(lm, rm, tok, num_blocks=12)  # holds the short prompts, not the long one
    with pytest.raises(ValueError, match="cache blocks"):
        nat.generate([PROMPTS[0], PROMPTS[2]], GREEDY, progress=False)
    assert not nat.decoder.has_unfinished()
    assert_all_free(nat)
    assert nat.generate(PROMPTS[1], GREEDY, progress=False)[0].token_ids


@pytest.mark.parametrize("option", [dict(block_size=0), dict(num_blocks=0), dict(num_blocks=-3),
                                    dict(max_num_batched_tokens=0),
                                    dict(block_size=2.5)])
def test_bad_engine_options_are_named(option):
    lm, rm, tok = models()
    with pytest.raises(ValueError, match=next(iter(option))):
        ARGSEngine(lm, rm, tokenizer=tok, backend="native", **option)


def test_native_options_are_checked():
    lm, rm, tok = models()
    with pytest.raises(ValueError, match="unknown engine options.*blocksize"):
        ARGSEngine(lm, rm, tokenizer=tok, blocksize=4)
    gpt_lm, gpt_rm, _ = models("gpt2")
    with pytest.raises(ValueError, match="native backend only"):
        ARGSEngine(gpt_lm, gpt_rm, tokenizer=tok, block_size=4)  # auto resolves to reference here


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_native_norm_and_rope_equal_hf_bit_for_bit(family):
    """The runner's fused RMSNorm and its RoPE table give exactly the HF modules' values (float32)."""
    from args_engine.models.llama import rotate
    lm = tiny_lm(family, dtype=torch.float32)
    base = lm.base_model
    x = torch.randn(7, lm.config.hidden_size) * 3
    runner = ARGSEngine(lm, tiny_rm(family, dtype=torch.float32), tokenizer=char_tokenizer(),
                        backend="native").decoder.runner
    assert torch.equal(runner.lm.norm(x), base.norm(x))
    assert torch.equal(runner.lm.layers[0].input_norm(x), base.layers[0].input_layernorm(x))
    pos = torch.tensor([0, 5, 3, 200, 17])
    rope = runner.lm.layers[-1].rope_type  # Gemma 3: the last tiny layer is global
    cos, sin = runner.lm._rope(x[:5], pos)[rope].gathered
    hf_cos, hf_sin = base.rotary_emb(x[:5], pos[None], *([rope] if rope else []))
    q = torch.randn(5, 4, cos.shape[-1])
    half = q.shape[-1] // 2
    hf_rot = q * hf_cos[0][:, None] + torch.cat((-q[..., half:], q[..., :half]), -1) * hf_sin[0][:, None]
    assert torch.equal(rotate(q, cos, sin), hf_rot)


@pytest.mark.parametrize("use_triton", USE_TRITON)
def test_rope_type_with_per_forward_tables(use_triton):
    """A RoPE type whose values depend on the sequence length (dynamic NTK) has no position table: its cos/sin
    are made per forward, one row per token (the Triton path reads them by row index too)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from tiny_models import _config
    lm_cfg, rm_cfg = _config("llama").to_dict(), _config("llama", num_labels=1).to_dict()
    scaling = {"rope_type": "dynamic", "factor": 2.0}
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**{**lm_cfg, "rope_scaling": scaling})).double().eval()
    torch.manual_seed(1)
    rm = LlamaForSequenceClassification(LlamaConfig(**{**rm_cfg, "rope_scaling": scaling})).double().eval()
    tok = char_tokenizer()
    nat = native(lm, rm, tok, use_triton=use_triton)
    assert not nat.decoder.runner.lm.static_rope
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference").generate(PROMPTS, GREEDY, progress=False)
    assert_same(ref, nat.generate(PROMPTS, GREEDY, progress=False), reward_tol(use_triton=use_triton))
    assert_all_free(nat)
