"""Kernel benchmark (CUDA only): the Triton kernels against the torch code they replace.

    python benchmarks/bench_kernels.py

- topk_logprobs vs torch.topk(torch.log_softmax(logits.float())): bf16 logits, V = 49,152 and 128,256,
  B = 1, 8, 64, k = 10.
- candidate_attention vs a torch gather of the paged prefix + SDPA (each candidate masked to the prefix and
  its own key): Llama-3.2-1B attention (Hq 32, Hkv 8, D 64), block 16, context 512 / 2048, B = 1, 8, 64,
  K = 10 candidates, bf16.
- add_rmsnorm vs the torch residual add + RMSNorm (float32 statistics) it fuses, and rope_qkv vs the torch
  rotation + contiguous q/k/v + K/V store it fuses: Llama-3.2-1B (H 2048; Hq 32, Hkv 8, D 64) and Llama-3.1-8B
  (H 4096; Hq 32, Hkv 8, D 128) shapes, N = 1, 80 (B = 8 x K = 10 candidates) and 640 (64 x 10) tokens, bf16.
Times are triton.testing.do_bench medians; GB/s counts the bytes each op must read (logits; prefix K/V)
and write. Prints a table and writes JSON to $OUT/bench_kernels.json when OUT is set, else to
benchmarks/results/bench_kernels_<gpu>.json. Without CUDA it prints a message and exits 0.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def load_kernels():
    """Import the repo's kernels/ directory as a package without importing (or building) args_engine."""
    spec = importlib.machinery.ModuleSpec("_bench_kernels", None, is_package=True)  # kernels/ has no __init__.py
    spec.submodule_search_locations = [str(ROOT / "kernels")]
    sys.modules["_bench_kernels"] = importlib.util.module_from_spec(spec)
    return {name: importlib.import_module(f"_bench_kernels.{name}")
            for name in ("topk_logprobs", "candidate_attention", "add_rmsnorm", "rope_qkv")}


def bench(fn) -> float:
    from triton.testing import do_bench
    r = do_bench(fn, warmup=5, rep=25, quantiles=[0.5])
    return float(r[0] if isinstance(r, (list, tuple)) else r)


def _row(op, shape, t_tri, t_ref, nbytes, err, **extra) -> dict:
    return dict(op=op, shape=shape, triton_us=t_tri * 1e3, torch_us=t_ref * 1e3, speedup=t_ref / t_tri,
                triton_GBps=nbytes / t_tri / 1e6, torch_GBps=nbytes / t_ref / 1e6, max_abs_err=err,
                same_choice=None, **extra)


LAYER_SHAPES = {"1B": (2048, 32, 8, 64), "8B": (4096, 32, 8, 128)}  # H, Hq, Hkv, D


def bench_topk(tk, rows):
    for V in (49_152, 128_256):
        for B in (1, 8, 64):
            k = 10
            logits = torch.randn(B, V, device="cuda", dtype=torch.bfloat16) * 3
            v, i = tk.topk_logprobs(logits, k)
            rv, ri = torch.topk(torch.log_softmax(logits.float(), dim=-1), k, dim=-1)
            err = (v - rv).abs().max().item()
            ok = torch.equal(logits.gather(1, i), logits.gather(1, ri))
            t_tri = bench(lambda: tk.topk_logprobs(logits, k))
            t_ref = bench(lambda: torch.topk(torch.log_softmax(logits.float(), dim=-1), k, dim=-1))
            nbytes = logits.numel() * logits.element_size() + B * k * 12
            rows.append(_row("topk_logprobs", f"B={B} V={V} k={k}", t_tri, t_ref, nbytes, err, B=B, V=V, k=k)
                        | dict(same_choice=ok))


def attention_torch(q, k_new, v_new, key_cache, value_cache, block_tables, T, scale):
    """The torch path: gather each sequence's prefix, append the K candidates' keys, mask each candidate to
    the prefix and itself, SDPA with GQA."""
    B, K, Hq, D = q.shape
    Hkv = key_cache.shape[2]
    kp = key_cache[block_tables.long()].flatten(1, 2)[:, :T]  # [B, T, Hkv, D]
    vp = value_cache[block_tables.long()].flatten(1, 2)[:, :T]
    keys = torch.cat([kp, k_new], dim=1).transpose(1, 2)  # [B, Hkv, T + K, D]
    vals = torch.cat([vp, v_new], dim=1).transpose(1, 2)
    mask = torch.cat([torch.ones(K, T, dtype=torch.bool, device=q.device),
                      torch.eye(K, dtype=torch.bool, device=q.device)], dim=1)  # [K, T + K]
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), keys, vals, attn_mask=mask,
                                                           scale=scale, enable_gqa=Hq != Hkv)
    return out.transpose(1, 2)  # [B, K, Hq, D]


def bench_attention(ca, rows):
    Hq, Hkv, D, BS, K = 32, 8, 64, 16, 10
    dt = torch.bfloat16
    for T in (512, 2048):
        for B in (1, 8, 64):
            MB = T // BS
            NB = B * MB
            q = torch.randn(B, K, Hq, D, device="cuda", dtype=dt)
            kn, vn = (torch.randn(B, K, Hkv, D, device="cuda", dtype=dt) for _ in range(2))
            kc, vc = (torch.randn(NB, BS, Hkv, D, device="cuda", dtype=dt) for _ in range(2))
            bt = torch.randperm(NB, device="cuda").view(B, MB).to(torch.int32)
            cl = torch.full((B,), T, dtype=torch.int32, device="cuda")
            scale = D ** -0.5
            out = ca.candidate_attention(q, kn, vn, kc, vc, bt, cl, scale)
            ref = attention_torch(q, kn, vn, kc, vc, bt, T, scale)
            err = (out.float() - ref.float()).abs().max().item()
            t_tri = bench(lambda: ca.candidate_attention(q, kn, vn, kc, vc, bt, cl, scale))
            t_ref = bench(lambda: attention_torch(q, kn, vn, kc, vc, bt, T, scale))
            nbytes = (2 * B * T * Hkv * D + 2 * q.numel() + 2 * kn.numel()) * 2  # prefix K/V + q, out, own K/V
            rows.append(_row("candidate_attention", f"B={B} T={T} K={K}", t_tri, t_ref, nbytes, err, B=B, T=T, K=K))


def bench_layer_ops(arn, rq, rows):
    """The per-layer elementwise work the engine fuses: residual add + RMSNorm, and RoPE + the K/V store."""
    dt = torch.bfloat16
    for name, (H, Hq, Hkv, D) in LAYER_SHAPES.items():
        for N in (1, 80, 640):
            x, res = (torch.randn(N, H, device="cuda", dtype=dt) for _ in range(2))
            w = torch.randn(H, device="cuda", dtype=dt)

            def norm_torch():
                s = res + x
                return w * torch.rms_norm(s.float(), (H,), eps=1e-5).to(dt), s
            err = (arn.add_rmsnorm(x, res, w, 1e-5)[0].float() - norm_torch()[0].float()).abs().max().item()
            rows.append(_row("add_rmsnorm", f"{name} N={N}", bench(lambda: arn.add_rmsnorm(x, res, w, 1e-5)),
                             bench(norm_torch), 4 * N * H * 2, err, N=N))

            qkv = torch.randn(N, Hq + 2 * Hkv, D, device="cuda", dtype=dt)
            q, k, v = qkv[:, :Hq], qkv[:, Hq:Hq + Hkv], qkv[:, Hq + Hkv:]
            cos, sin = (torch.randn(4096, 1, D, device="cuda", dtype=dt) for _ in range(2))
            pos = torch.randint(0, 4096, (N,), device="cuda")
            kc, vc = (torch.zeros(N // 16 + 1, 16, Hkv, D, device="cuda", dtype=dt) for _ in range(2))
            slots = torch.randperm(kc.shape[0] * 16, device="cuda")[:N]

            def rope_torch():
                c, s_ = cos[pos], sin[pos]
                qk = qkv[:, :Hq + Hkv]
                qk = qk * c + qk.roll(D // 2, dims=-1) * s_
                kk = qk[:, Hq:]
                kc.view(-1, Hkv, D)[slots] = kk
                vc.view(-1, Hkv, D)[slots] = v
                return qk[:, :Hq].contiguous(), kk.contiguous(), v.contiguous()
            got = rq.rope_qkv(q, k, v, cos, sin, pos, kc, vc, slots)
            err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, rope_torch()))
            nbytes = 2 * qkv.numel() * 2 + 2 * N * Hkv * D * 2 + 2 * N * D * 2  # read+write q/k/v, store, tables
            rows.append(_row("rope_qkv+store", f"{name} N={N}",
                             bench(lambda: rq.rope_qkv(q, k, v, cos, sin, pos, kc, vc, slots)), bench(rope_torch),
                             nbytes, err, N=N))


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; nothing to measure (the kernels' CPU tests use the interpreter).")
        return 0
    start = time.perf_counter()
    mods = load_kernels()
    gpu = torch.cuda.get_device_name()
    rows: list[dict] = []
    bench_topk(mods["topk_logprobs"], rows)
    bench_attention(mods["candidate_attention"], rows)
    bench_layer_ops(mods["add_rmsnorm"], mods["rope_qkv"], rows)
    print(f"{gpu}  (times: do_bench median, us; GB/s: bytes the op must move / time)")
    print(f"{'op':<20} {'shape':<22} {'triton us':>10} {'torch us':>10} {'speedup':>8} {'tri GB/s':>9} "
          f"{'torch GB/s':>10} {'max err':>9}")
    for r in rows:
        print(f"{r['op']:<20} {r['shape']:<22} {r['triton_us']:>10.1f} {r['torch_us']:>10.1f} {r['speedup']:>8.2f} "
              f"{r['triton_GBps']:>9.0f} {r['torch_GBps']:>10.0f} {r['max_abs_err']:>9.2g}")
    import triton
    result = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                  dtype="bfloat16", rows=rows, wall_s=time.perf_counter() - start)
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "bench_kernels.json"
    else:
        path = ROOT / "benchmarks" / "results" / f"bench_kernels_{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path} ({result['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
