"""End-to-end on a GPU: random-weight Llama-3.2-1B- or Llama-3.1-8B-shaped LM and RM in bf16, ARGS-greedy
k = 10, 128 new tokens (EOS ignored), B = 1, 8, 64, native engine (Triton kernels). Two trunks (the RM its own
model), or with --shared-trunk the RM a head on the LM's trunk (one trunk forward per step, like the default RM).
Reports decode ms per step, tok/s, and the ratio to the bandwidth floor: (LM weights + RM weights, the shared
trunk once + K/V read per step) / measured device copy bandwidth. At B = 1 also HF greedy, the reference decoder
and the original-style baseline, side by side. --controls: every request also sets repetition_penalty 1.2,
presence_penalty 0.5 and the gate at 0.9 (issue 24: within 10% of the plain step), no side-by-side.

    python benchmarks/gpu/bench_e2e_gpu.py [--out DIR] [--shape 1B|8B] [--shared-trunk] [--batches 1,8,64]
                                           [--new-tokens 128] [--step-mode M] [--controls] [--tiny]
Writes DIR/bench_e2e_gpu_<shape>_<two-trunks|shared-trunk>_<step mode>[_controls].json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from args_engine import ARGSEngine, ARGSParams  # noqa: E402
from micro.micro_models import CONTROLS  # noqa: E402  (the micro benchmarks' controls setting)
from ref_baselines.original_args import original_args_generate  # noqa: E402

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
                rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"})


LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
                rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"})
SHAPES = {"1B": (LLAMA_1B, "random Llama-3.2-1B-shaped", 16.0), "8B": (LLAMA_8B, "random Llama-3.1-8B-shaped", 12.0)}

TINY = dict(LLAMA_1B, vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, bos_token_id=1, eos_token_id=2)


def build(cls, config: dict, device: str, **extra):
    """Random bf16 weights, made in bf16 on the device (an 8B model in float32 first would need 32 GB more)."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = cls(LlamaConfig(**config, **extra))
    finally:
        torch.set_default_dtype(default)
    return model.to(torch.bfloat16).eval()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    x = torch.empty(2**29 if device == "cuda" else 2**24, dtype=torch.float16, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    return 2 * x.numel() * x.element_size() * reps / (time.perf_counter() - start)


def param_bytes(model, skip_embedding: bool) -> int:
    emb = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if not (skip_embedding and p is emb))


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--shape", choices=list(SHAPES), default="1B")
    ap.add_argument("--shared-trunk", action="store_true", help="the RM a head on the LM's trunk")
    ap.add_argument("--tiny", action="store_true", help="a tiny config on CPU, to check the script runs")
    ap.add_argument("--step-mode", default=None, help="graph (CUDA default), static or dynamic")
    ap.add_argument("--controls", action="store_true",
                    help="every request with " + ", ".join(f"{k}={v}" for k, v in CONTROLS.items()))
    args = ap.parse_args()
    config, model_name, cache_gb = SHAPES[args.shape]
    device = "cuda"
    if args.tiny:
        device, config, cache_gb = "cpu", TINY, 0.1
        args.new_tokens, args.prompt_tokens, args.batches = 4, 16, "1,3"
    lm = build(LlamaForCausalLM, config, device)
    rm = build(LlamaForSequenceClassification, config, device, num_labels=1, pad_token_id=0)
    if args.shared_trunk:  # the RM's trunk is the LM's: the engine runs one trunk and one cache for both
        rm.model = lm.model
    bw = copy_bandwidth(device)
    # Prefix cache off: the runs reuse the same prompts, and a hit would skip prefill that the timings include.
    engine = ARGSEngine(lm, rm, backend="native", batch_size=64, cache_memory_gb=cache_gb,
                        enable_prefix_caching=False, step_mode=args.step_mode)
    shared = engine.decoder.runner.shared
    if shared != args.shared_trunk:
        raise SystemExit(f"--shared-trunk={args.shared_trunk} but the engine's shared trunk is {shared}")
    n, P, k = args.new_tokens, args.prompt_tokens, 10
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, config["vocab_size"], (P,), generator=gen).tolist() for _ in range(64)]
    trunks = (("lm", engine.decoder.runner.lm),) if shared else (("lm", engine.decoder.runner.lm),
                                                                  ("rm", engine.decoder.runner.rm))
    per_tok = {name: 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2 for name, m in trunks}  # K/V bytes
    rm_bytes = sum(p.numel() * p.element_size() for p in rm.score.parameters()) if shared else \
        param_bytes(rm, skip_embedding=True)
    weights = param_bytes(lm, skip_embedding=False) + rm_bytes
    trunk_name = "shared-trunk" if shared else "two-trunks"
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (--tiny check)",
              "torch": torch.__version__, "dtype": "bfloat16", "shared_trunk": shared, "shape": args.shape,
              "model": f"{model_name} LM and RM ({trunk_name})", "k": k, "w": 1.0, "prompt_tokens": P,
              "new_tokens": n, "step_mode": engine.decoder.runner.step_mode, "copy_bandwidth_GBps": bw / 1e9,
              "weight_bytes_per_step": weights, "controls": CONTROLS if args.controls else None,
              "graphs_at_start_up": engine.decoder.runner.shapes.stats, "runs": []}

    def params(m):
        return ARGSParams(k=k, w=1.0, max_new_tokens=m, ignore_eos=True, **(CONTROLS if args.controls else {}))

    engine.generate(prompts[:2], params(4), progress=False)  # warm-up: Triton compiles
    for B in [int(b) for b in args.batches.split(",")]:
        # prefill + one step, the better of two (a first call of a batch shape pays one-time costs)
        t1 = min(timed(lambda: engine.generate(prompts[:B], params(1), progress=False), device) for _ in range(2))
        tn = timed(lambda: engine.generate(prompts[:B], params(n), progress=False), device)
        step_s = (tn - t1) / (n - 1)
        kv = B * (P + n // 2) * sum(per_tok.values())  # mean context over the run
        floor_s = (weights + kv) / bw
        run = {"batch": B, "decode_ms_per_step": step_s * 1e3, "tokens_per_s": B * n / tn,
               "decode_tokens_per_s": B / step_s, "prefill_plus_first_step_s": t1,
               "bandwidth_floor_ms_per_step": floor_s * 1e3, "ratio_to_floor": step_s / floor_s}
        result["runs"].append(run)
        print(json.dumps(run), flush=True)

    name = f"bench_e2e_gpu_{args.shape}_{trunk_name}_{result['step_mode']}{'_controls' if args.controls else ''}.json"
    if not args.controls:
        side_by_side(result, lm, rm, engine, prompts[0], min(64, n), params, k, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / name}")


def side_by_side(result: dict, lm, rm, engine, ids: list[int], m: int, params, k: int, device: str) -> None:
    """B = 1, m new tokens: HF greedy, the reference decoder, the native engine and the original-style baseline."""
    x = torch.tensor([ids], device=device)
    hf = timed(lambda: lm.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=m,
                                   min_new_tokens=m, pad_token_id=0), device)
    ref = ARGSEngine(lm, rm, backend="reference")
    t_ref = timed(lambda: ref.generate([ids], params(m), progress=False), device)
    t_nat = timed(lambda: engine.generate([ids], params(m), progress=False), device)
    t_orig = timed(lambda: original_args_generate(lm, ref.rm, ids, k, 1.0, m), device)
    result["b1_side_by_side"] = {"new_tokens": m, "tokens_per_s": {
        "hf_greedy": m / hf, "reference": m / t_ref, "native": m / t_nat, "original_style": m / t_orig}}
    print(json.dumps(result["b1_side_by_side"]), flush=True)


if __name__ == "__main__":
    main()
