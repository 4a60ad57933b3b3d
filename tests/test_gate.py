"""Uncertainty-gated ARGS: where the LM's top token has probability >= tau it is taken without RM scoring. The
native engine (the gate decided on the device, in the step) equals the reference decoder and the naive
definition, token for token, RM token counts included."""
import os

import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["Hello there", "Hi", "What is the best way to cook rice?", "abc"]
N = 14
USE_TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


@pytest.fixture(scope="module", params=[True, False], ids=["shared-trunk", "two-trunks"])
def models(request):
    lm, tok = tiny_lm(), char_tokenizer()
    if request.param:  # the RM is a head on the LM's own trunk: one cache, no LM decode forward
        rm = tiny_rm()
        rm.model.load_state_dict(lm.model.state_dict())
    else:
        rm = tiny_rm()
    return lm, rm, tok


def decode(lm, rm, tok, backend, params, **kw):
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend=backend, raw=True, **kw)
    return engine.generate([tok(p)["input_ids"] for p in PROMPTS], params, progress=False)


def top_probs(lm, out) -> list[float]:
    with torch.no_grad():
        x = torch.tensor([out.prompt_token_ids + out.token_ids])
        probs = torch.softmax(lm(input_ids=x).logits[0].double(), -1)  # [T, V]
    P = len(out.prompt_token_ids)
    return [probs[P - 1 + i].max().item() for i in range(len(out.token_ids))]


@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_gated_native_equals_reference_and_naive(models, mode):
    lm, rm, tok = models
    params = [ARGSParams(k=5, w=2.0, mode=mode, temperature=0.8, seed=i, max_new_tokens=N, gate=g)
              for i, g in enumerate([0.1, 0.2, None, 0.15])]  # a mixed batch: one row never gated
    outs = {b: decode(lm, rm, tok, b, params) for b in ("native", "reference", "naive")}
    if USE_TRITON:
        outs["triton"] = decode(lm, rm, tok, "native", params, use_triton=True)
    ref = [(o.token_ids, o.rm_tokens) for o in outs["naive"]]
    for name, o in outs.items():
        assert [(x.token_ids, x.rm_tokens) for x in o] == ref, name
        for x, y in zip(o, outs["naive"]):  # the Triton path's RMSNorm: see test_native.reward_tol
            assert x.rewards == pytest.approx(y.rewards, abs=1e-5 if name == "triton" else 1e-9)
    # the gate really took some steps and left others: fewer RM tokens than k per token, more than 1
    gated_rows = [o for o, p in zip(outs["native"], params) if p.gate is not None]
    assert any(o.rm_tokens < 5 * len(o.token_ids) for o in gated_rows)
    assert any(o.rm_tokens > len(o.token_ids) for o in gated_rows)
    assert outs["native"][2].rm_tokens == 5 * len(outs["native"][2].token_ids)


def test_gate_decisions_follow_the_lms_confidence(models):
    lm, rm, tok = models
    tau = 0.15
    out = decode(lm, rm, tok, "native", ARGSParams(k=5, w=3.0, max_new_tokens=N, gate=tau))
    always = decode(lm, rm, tok, "native", ARGSParams(k=1, max_new_tokens=N))
    for o, plain in zip(out, always):
        confident = [p >= tau for p in top_probs(lm, o)]
        assert o.rm_tokens == sum(1 if c else 5 for c in confident)
    # tau tiny: every step is gated, which is plain greedy decoding
    tiny = decode(lm, rm, tok, "native", ARGSParams(k=5, w=3.0, max_new_tokens=N, gate=1e-9))
    assert [o.token_ids for o in tiny] == [o.token_ids for o in always]
    assert all(o.rm_tokens == len(o.token_ids) for o in tiny)


def computed_candidates(runner) -> list[int]:
    """A spy on the RM's candidate forward: the candidate tokens each call computes (the scored cells, or the
    whole [B, K] grid)."""
    seen, real = [], runner.rm.forward_candidates

    def spy(ids, *a, scored=None, **kw):
        seen.append(ids.numel() if scored is None else len(scored))
        return real(ids, *a, scored=scored, **kw)
    runner.rm.forward_candidates = spy
    return seen


@pytest.mark.parametrize("step_mode", ["dynamic", "static"])
def test_gated_rows_candidates_skipped_on_a_cpu_rm_masked_in_static_shapes(models, step_mode):
    """The gate decides on the device. A CPU RM in eager steps reads the gated row's top token alone (1 + 5
    candidates per step here); static shapes (the CUDA-graph code) keep its cells and mask them, with no host
    read. The tokens and RM-token counts are the same either way."""
    lm, rm, tok = models
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, step_mode=step_mode)
    runner = engine.decoder.runner
    seen = computed_candidates(runner)
    params = [ARGSParams(k=5, w=2.0, max_new_tokens=N, gate=1e-9), ARGSParams(k=5, w=2.0, max_new_tokens=N)]
    outs = engine.generate([tok(p)["input_ids"] for p in PROMPTS[:2]], params, progress=False)
    steps = [len(o.token_ids) for o in outs]
    assert [o.rm_tokens for o in outs] == [steps[0], 5 * steps[1]]
    if step_mode == "dynamic":  # the RM computed what the choices needed, no more
        assert 1 + 5 in seen and sum(seen) == sum(o.rm_tokens for o in outs)
    else:  # the whole rows x graph_k grid computed (the gated row's cells masked): one shape per batch bucket
        assert set(seen) <= {2 * runner.shapes.graph_k, runner.shapes.graph_k} and 2 * runner.shapes.graph_k in seen
    assert runner.read.num_reads == max(steps)  # one per step: the gate needs none of its own
    plain = ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True).generate(
        [tok(p)["input_ids"] for p in PROMPTS[:2]], [ARGSParams(k=1, max_new_tokens=N), params[1]], progress=False)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]


def test_gate_is_validated():
    for bad in (0, 1.5, -0.1, "x"):
        with pytest.raises(ValueError, match="gate"):
            ARGSParams(gate=bad)


def test_gate_through_the_server_and_eval_keys():
    from args_engine.eval.methods import parse_method
    from args_engine.integrations.protocol import BadRequest, parse_params
    from args_engine.integrations.server_config import ServerConfig
    params, _, _ = parse_params({"args_gate": 0.5}, ServerConfig())
    assert params[0].gate == 0.5
    with pytest.raises(BadRequest) as e:
        parse_params({"args_gate": 2}, ServerConfig())
    assert e.value.param == "args_gate"
    assert parse_method("args-greedy:w=1.5:gate=0.9").label == "args-greedy:k=10:w=1.5:gate=0.9"
    with pytest.raises(ValueError):
        parse_method("greedy:gate=0.9")  # the baselines never call the RM
