"""Every Triton kernel compiles for sm_90 (H100) on this CPU machine, at the shapes the engine launches, through the
launchers' own GPU choices of block sizes and splits; ptxas's report holds: no spills and no local-memory stack,
shared memory within an H100 block's 227 KB.

The compiles run in one subprocess without TRITON_INTERPRET (conftest sets it, and interpreted kernels cannot be
compiled), over a pool of the machine's cores; equal specializations compile once. Run this file as a script to
print the table: python tests/test_kernel_compile_sm90.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_util import H100_SMEM, sm90_toolchain_missing

# Native families' attention shapes: (hidden, Hq, Hkv, D, Gemma 2's score cap)
FAMILIES = {
    "1B": (2048, 32, 8, 64, None),  # Llama-3.2-1B
    "8B": (4096, 32, 8, 128, None),  # Llama-3.1-8B, Mistral-7B
    "gemma2-2B": (2304, 8, 4, 256, 50.0),  # D = 256, soft-capped scores
    "qwen2-7B": (3584, 28, 4, 128, None),  # GQA group 7
    "phi3-mini": (3072, 32, 32, 96, None),  # group 1, D = 96 (padded to 128)
    "70B": (8192, 64, 8, 128, None),  # group 8
}
# bf16 everywhere; fp16 and fp32 at the 1B / 8B / Gemma widths (the code differs by dtype, not by family)
CASES = [(f, "bfloat16") for f in FAMILIES] + [(f, dt) for f in ("1B", "8B", "gemma2-2B")
                                               for dt in ("float16", "float32")]
K = 10  # ARGS candidates per row
VOCAB = 128256


def _launches(family: str, dtype_name: str):
    """Calls of every launcher the engine makes at this family's shapes, on small CPU tensors of the real widths."""
    import torch

    from args_engine.kernels import (add_rmsnorm, args_select, candidate_attention, prefill_attention, rope_qkv,
                                     store_kv, topk_logprobs)

    dt = getattr(torch, dtype_name)
    H, Hq, Hkv, D, cap = FAMILIES[family]
    BS, MB = 16, 256  # tables of 256 blocks: a 4096-token context
    kc = torch.zeros(4, BS, Hkv, D, dtype=dt)

    def cand(B, Kc, tree=False):
        q = torch.zeros(B, Kc, Hq, D, dtype=dt)
        kn = torch.zeros(B, Kc, Hkv, D, dtype=dt)
        seg = torch.zeros(B, Kc, dtype=torch.int32) if tree else None
        candidate_attention.candidate_attention(q, kn, kn, kc, kc, torch.zeros(B, MB, dtype=torch.int32),
                                                torch.ones(B, dtype=torch.int32), 0.1, softcap=cap, segments=seg)

    def prefill(n):
        prefill_attention.prefill_attention(torch.zeros(n, Hq, D, dtype=dt), kc, kc,
                                            torch.zeros(1, MB, dtype=torch.int32),
                                            torch.tensor([0, n], dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                                            n, 0.1, softcap=cap)

    def rope(n, store):
        q, k = torch.zeros(n, Hq, D, dtype=dt), torch.zeros(n, Hkv, D, dtype=dt)
        cos = torch.zeros(64, D, dtype=dt)
        extra = (kc, kc, torch.zeros(n, dtype=torch.long)) if store else ()
        rope_qkv.rope_qkv(q, k, k, cos, cos, torch.zeros(n, dtype=torch.long), *extra)

    def select(B, gumbel):
        f32 = torch.float32 if dt != torch.float64 else dt
        lp = torch.zeros(B, K, dtype=f32)
        ck = torch.zeros(2, B, K, Hkv, D, dtype=dt)
        args_select.args_select(lp, lp, torch.zeros(B, K, dtype=torch.long), torch.full((B,), K, dtype=torch.int32),
                                torch.ones(B, dtype=f32), torch.ones(B, dtype=f32), lp.double() if gumbel else None,
                                ck, ck, torch.zeros(2, 4, BS, Hkv, D, dtype=dt), torch.zeros(2, 4, BS, Hkv, D, dtype=dt),
                                torch.zeros(B, dtype=torch.long))

    yield "candidate decode B=64 K=1", lambda: cand(64, 1)
    yield "candidate ARGS B=64 K=10", lambda: cand(64, K)
    yield "candidate ARGS B=1 K=10 split", lambda: cand(1, K)
    yield "candidate bridged tree B=1 K=10 split", lambda: cand(1, K, tree=True)
    yield "prefill 512-token chunk", lambda: prefill(512)
    yield "prefill 8-token chunk", lambda: prefill(8)
    yield "rope_qkv + store", lambda: rope(8, True)
    yield "rope_qkv", lambda: rope(8, False)
    yield "store_kv", lambda: store_kv.store_kv(torch.zeros(8, Hkv, D, dtype=dt), torch.zeros(8, Hkv, D, dtype=dt),
                                                kc, kc, torch.zeros(8, dtype=torch.long))
    yield "add_rmsnorm residual", lambda: add_rmsnorm.add_rmsnorm(torch.zeros(4, H, dtype=dt),
                                                                  torch.zeros(4, H, dtype=dt),
                                                                  torch.ones(H, dtype=dt), 1e-6)
    yield "add_rmsnorm per head", lambda: add_rmsnorm.add_rmsnorm(torch.zeros(4, Hq, D, dtype=dt), None,
                                                                  torch.ones(D, dtype=dt), 1e-6)
    yield "args_select greedy", lambda: select(64, False)
    yield "args_select sampled", lambda: select(64, True)
    for B in (1, 64):  # one row splits over the SMs, a full batch does not
        yield f"topk_logprobs B={B}", lambda B=B: topk_logprobs.topk_logprobs(torch.zeros(B, VOCAB, dtype=dt), K)


def compile_all() -> dict:
    """{case: [compile stats of each launch it makes]}, each distinct specialization compiled once, in a pool."""
    import multiprocessing

    from kernel_util import record_launches, specialize_sm90

    cases, specs = {}, {}
    only = os.environ.get("SM90_ONLY")  # e.g. SM90_ONLY=8B-float32,1B-bfloat16: a part of the grid, by hand
    for family, dt in CASES if not only else [c for c in CASES if f"{c[0]}-{c[1]}" in only.split(",")]:
        for name, launch in _launches(family, dt):
            keys = []
            for fn, args, kwargs in record_launches(launch):
                key, spec = specialize_sm90(fn, args, kwargs)
                specs.setdefault(key, spec)
                keys.append(key)
            cases[f"{family}-{dt}: {name}"] = keys
    keys = sorted(specs)
    global _SPECS
    _SPECS = [specs[k] for k in keys]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        stats = pool.map(_compile_one, range(len(keys)), chunksize=1)
    by_key = {}
    for key, st in zip(keys, stats):
        ptx, ttir = st.pop("ptx"), st.pop("ttir")
        st["fma"] = len(re.findall(r"\bfma\.rn\.f(32|64)", ptx))
        st["approx_div_sqrt"] = len(re.findall(r"\b(div\.full|div\.approx|sqrt\.approx|rsqrt\.approx)\.", ptx))
        # 64-bit token offsets in prefill: its q / out row strides (sq_n, so_n) widened to i64 before the multiply
        st["wide_args"] = sorted(set(re.findall(r"arith\.extsi %(\w+) : i32 to i64", ttir)))
        st["key"] = key
        by_key[key] = st
    return {case: [by_key[k] for k in ks] for case, ks in cases.items()}


_SPECS: list = []


def _compile_one(i):
    from kernel_util import compile_sm90

    return compile_sm90(*_SPECS[i])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    missing = sm90_toolchain_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("sm90") / "stats.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(out.read_text())


CASE_IDS = [f"{f}-{dt}" for f, dt in CASES]


@pytest.mark.parametrize("case", CASE_IDS)
def test_every_launch_compiles_without_spills(compiled, case):
    if os.environ.get("SM90_ONLY") and case not in os.environ["SM90_ONLY"].split(","):
        pytest.skip("not in SM90_ONLY")
    launches = {name: stats for name, stats in compiled.items() if name.startswith(case + ":")}
    assert launches and all(launches.values())
    bad = [f"{name}: {st['key']} regs {st['regs']} spills {st['spill_stores']}/{st['spill_loads']} B stack "
           f"{st['stack']} B smem {st['smem']} B" for name, stats in launches.items() for st in stats
           if st["spill_stores"] or st["spill_loads"] or st["stack"] or st["smem"] > H100_SMEM]
    assert not bad, "\n".join(bad)


def test_args_select_score_is_not_fused(compiled):
    # lp + w * r must round twice on the GPU as in torch: a fused FMA picks differently on near-ties
    stats = [st for name, sts in compiled.items() if "args_select" in name for st in sts]
    assert stats and all(st["fma"] == 0 for st in stats), [(st["key"], st["fma"]) for st in stats]


def test_add_rmsnorm_statistics_are_ieee_rounded(compiled):
    # Triton's fp32 `/` and sqrt are approximate on CUDA (div.full, sqrt.approx): 1-3 ulp off torch's rstd
    stats = [st for name, sts in compiled.items() if "add_rmsnorm" in name for st in sts]
    assert stats and all(st["approx_div_sqrt"] == 0 for st in stats), [(st["key"], st["approx_div_sqrt"])
                                                                         for st in stats]


def test_prefill_token_offsets_are_64_bit(compiled):
    # (q0 + m) * sq_n passes 2^31 at N x Hq x D >= 2^31 (a 524k-token step at 8B shapes)
    stats = [st for name, sts in compiled.items() if "prefill" in name for st in sts]
    assert stats
    for st in stats:
        assert {"sq_n", "so_n"} <= set(st["wide_args"]), (st["key"], st["wide_args"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    result = compile_all()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(result))
    else:
        for case, stats in result.items():
            for st in stats:
                print(f"{case:60s} {st['kernel']:40s} regs {st['regs']:3d} spill {st['spill_stores']:5d}/"
                      f"{st['spill_loads']:5d} stack {st['stack']:5d} smem {st['smem']:6d} fma {st['fma']}")
