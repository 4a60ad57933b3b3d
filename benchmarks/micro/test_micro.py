"""Micro benchmarks (pytest-benchmark): one ARGS step, one LM decode, top-k, candidate attention and select, at
the tiny and the default shape, on CPU and on CUDA when present; and the host-overhead figures of issue 11.

    pytest benchmarks/micro --benchmark-only                       # everything (default shapes: minutes on CPU)
    pytest benchmarks/micro --benchmark-only -k tiny               # the host-overhead shape only
    pytest benchmarks/micro --benchmark-only --benchmark-autosave  # keep JSON; later: --benchmark-compare

Host overhead (`test_host_overhead`): tiny LM + RM with different weights, B = 1, k = 10, float32, one CPU
thread, 128 new tokens: ms per ARGS token against HF greedy `generate` on the same tiny LM (the ratio is in
the benchmark's extra_info and printed with -s), and aten ops per ARGS step (torch profiler, nested included).
"""
from __future__ import annotations

import time

import pytest
import torch
from micro_models import CONTROLS as _CONTROLS, SHAPES, build_pair, decoding_engine, dtype_for, launch_profile

from args_engine.models.paged_ops import PagedOps

STEPS = 20  # rounds per step benchmark (each round one engine step)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed_steps(benchmark, engine, device):
    def step():
        engine.decoder.step()
        _sync(device)
    benchmark.pedantic(step, rounds=STEPS, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 8])
def test_args_step(benchmark, device, shape, batch):
    lm, rm = build_pair(shape, device)
    engine = decoding_engine(lm, rm, batch, STEPS + 4)
    benchmark.extra_info.update(shape=shape, batch=batch, k=10, step_mode=engine.decoder.runner.step_mode)
    _timed_steps(benchmark, engine, device)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 8])
def test_lm_decode(benchmark, device, shape, batch):
    """The LM's one-token forward over a 128-token paged prefix, stored into the cache (the runner's LM decode)."""
    lm, rm = build_pair(shape, device)
    runner = decoding_engine(lm, rm, batch, STEPS + 4).decoder.runner
    D, bs = batch, runner.block_size
    ids = torch.randint(3, lm.config.vocab_size, (D, 1), device=device)
    pos = torch.full((D,), 128, dtype=torch.int32, device=device)
    tables = torch.arange(D * 16, dtype=torch.int32, device=device).view(D, 16)  # 256 positions per row
    slots = (tables[:, 8].long() * bs)  # position 128 of each row

    def decode():
        runner.lm.forward_candidates(ids, pos, tables, pos, runner.lm_kv, store_slots=slots)
        _sync(device)
    benchmark.extra_info.update(shape=shape, batch=batch, context=128)
    benchmark.pedantic(decode, rounds=STEPS, iterations=1, warmup_rounds=2)


def _ops(device: str) -> PagedOps:
    return PagedOps(use_triton=device == "cuda")


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 8])
def test_topk(benchmark, device, shape, batch):
    V = SHAPES[shape]["vocab_size"]
    logits = torch.randn(batch, V, device=device, dtype=dtype_for(device)) * 3
    ops = _ops(device)
    benchmark.extra_info.update(shape=shape, batch=batch, V=V, k=10)
    benchmark(lambda: (ops.topk_logprobs(logits, 10), _sync(device)))


def _attention_inputs(shape: str, device: str, batch: int, K: int = 10, context: int = 512, bs: int = 16):
    s = SHAPES[shape]
    Hq, Hkv = s["num_attention_heads"], s["num_key_value_heads"]
    D = s["hidden_size"] // Hq
    dt = dtype_for(device)
    nb = batch * context // bs + 1
    q = torch.randn(batch, K, Hq, D, device=device, dtype=dt)
    kn, vn = (torch.randn(batch, K, Hkv, D, device=device, dtype=dt) for _ in range(2))
    kc, vc = (torch.randn(nb, bs, Hkv, D, device=device, dtype=dt) for _ in range(2))
    tables = torch.randperm(nb - 1)[:batch * (context // bs)].view(batch, -1).to(torch.int32).to(device)
    ctx = torch.full((batch,), context, dtype=torch.int32, device=device)
    return q, kn, vn, kc, vc, tables, ctx, D ** -0.5


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 8])
def test_candidate_attention(benchmark, device, shape, batch):
    args = _attention_inputs(shape, device, batch)
    ops = _ops(device)
    benchmark.extra_info.update(shape=shape, batch=batch, K=10, context=512)
    benchmark(lambda: (ops.candidate_attention(*args), _sync(device)))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 8])
def test_select(benchmark, device, shape, batch):
    """Score, choose and commit the chosen K/V of every layer (args_select)."""
    s = SHAPES[shape]
    L, Hkv, D, K = s["num_hidden_layers"], s["num_key_value_heads"], s["hidden_size"] // s["num_attention_heads"], 10
    dt = dtype_for(device)
    f32 = dict(device=device, dtype=torch.float32)
    logp, rewards = -torch.rand(batch, K, **f32), torch.randn(batch, K, **f32)
    cand = torch.randint(0, 1000, (batch, K), device=device)
    k = torch.full((batch,), K, dtype=torch.int32, device=device)
    w = torch.ones(batch, dtype=torch.float64, device=device)
    temp = torch.zeros(batch, dtype=torch.float64, device=device)
    ck, cv = (torch.randn(L, batch, K, Hkv, D, device=device, dtype=dt) for _ in range(2))
    kc, vc = (torch.zeros(L, batch + 1, 16, Hkv, D, device=device, dtype=dt) for _ in range(2))
    slots = torch.arange(batch, device=device) * 16
    ops = _ops(device)
    benchmark.extra_info.update(shape=shape, batch=batch, K=K, layers=L)
    benchmark(lambda: (ops.args_select(logp, rewards, cand, k, w, temp, None, ck, cv, kc, vc, slots), _sync(device)))


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_launches_per_step(benchmark, kernels):
    """Device kernel launches per eager ARGS step (micro_models.launches_per_step), per trunk layer and projected
    to the 1B and 8B shapes: the count CUDA graphs replay and the fused kernels cut. The same on any device; the
    Triton path on CPU needs TRITON_INTERPRET=1."""
    import os
    if kernels == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton path on CPU needs TRITON_INTERPRET=1 (no CUDA here)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = launch_profile(kernels == "triton", device)
    benchmark.extra_info.update(kernels=kernels, **profile)
    print(f"\nlaunches per eager ARGS step ({kernels}): {profile['per_layer']:.0f} per trunk layer + "
          f"{profile['fixed']:.0f}; projected 1B {profile['projected_1B']:.0f}, 8B {profile['projected_8B']:.0f}")
    benchmark.pedantic(lambda: None, rounds=1)  # the figure is the count, not a time


NEW_TOKENS = 128


CONTROLS = {"plain": None, "controls": _CONTROLS}


@pytest.mark.parametrize("controls", list(CONTROLS))
def test_host_overhead(benchmark, controls):
    """tiny, CPU, one thread, B = 1, k = 10, float32: ms per ARGS token vs HF greedy on the same LM."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lm, rm = build_pair("tiny", "cpu", torch.float32)
        ids = torch.randint(3, lm.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))

        def hf_greedy():
            lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        do_sample=False, pad_token_id=0)
        hf_greedy()
        hf_s = min(_seconds(hf_greedy) for _ in range(3))

        engine = decoding_engine(lm, rm, 1, NEW_TOKENS + 4 * (NEW_TOKENS + 8), prompt_len=32,
                                 controls=CONTROLS[controls])
        benchmark.pedantic(engine.decoder.step, rounds=NEW_TOKENS, iterations=3, warmup_rounds=4)
        args_ms = benchmark.stats.stats.median * 1e3
        hf_ms = hf_s / NEW_TOKENS * 1e3
        ops = aten_ops_per_step(engine)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(controls=controls, args_ms_per_token=args_ms, hf_greedy_ms_per_token=hf_ms,
                                ratio_to_hf_greedy=args_ms / hf_ms, aten_ops_per_step=ops, target_ratio=1.0)
    print(f"\nhost overhead (tiny, 1 CPU thread, B=1, k=10, {controls}): ARGS {args_ms:.3f} ms/token, HF greedy "
          f"{hf_ms:.3f} ms/token, ratio {args_ms / hf_ms:.2f}x; {ops} aten ops per ARGS step")


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def aten_ops_per_step(engine, steps: int = 5) -> int:
    """aten op calls per engine step (torch profiler; nested calls counted), averaged over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.decoder.step()
    return round(sum(1 for e in prof.events() if e.name.startswith("aten::")) / steps)
