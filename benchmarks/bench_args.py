"""First end-to-end benchmark: HF greedy vs ARGS (naive oracle and cached reference) on the default models.

    python benchmarks/bench_args.py [--prompt-tokens 500] [--new-tokens 64] [--k 10] [--naive-tokens 8]

Prints tok/s and ratios; writes benchmarks/results/bench_args_<machine>.json and a bar plot. The naive
decoder re-runs the RM over the whole sequence for each of the k candidates each step, so it decodes only
--naive-tokens tokens (its per-token cost grows with the length; the figure is an upper bound).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from args_engine import ARGSEngine, ARGSParams
from bench_common import long_prompt, machine_name, timed

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=500)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--naive-tokens", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    ref = ARGSEngine.from_pretrained(device=args.device, backend="reference")
    naive = ARGSEngine(ref.lm, ref.rm, tokenizer=ref.tokenizer, backend="naive")
    ids = long_prompt(ref.tokenizer, args.prompt_tokens)
    lm, n = ref.lm, args.new_tokens
    x = torch.tensor([ids], device=args.device)

    def hf_greedy():
        with torch.no_grad():
            lm.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                        pad_token_id=ref.pad_id)

    params = lambda tokens: ARGSParams(k=args.k, w=1.0, max_new_tokens=tokens, ignore_eos=True)
    hf_greedy()  # warm-up
    t_greedy = timed(hf_greedy)
    t_ref = timed(lambda: ref.generate([ids], params(n), progress=False))
    t_naive = timed(lambda: naive.generate([ids], params(args.naive_tokens), progress=False))
    tps = {"hf_greedy": n / t_greedy, "reference": n / t_ref, "naive": args.naive_tokens / t_naive}
    result = {
        "machine": machine_name(), "torch": torch.__version__, "prompt_tokens": len(ids), "new_tokens": n,
        "naive_new_tokens": args.naive_tokens, "k": args.k, "w": 1.0, "batch": 1, "dtype": "float32",
        "tokens_per_s": tps,
        "ratio_to_hf_greedy": {name: v / tps["hf_greedy"] for name, v in tps.items()},
        "reference_over_naive": tps["reference"] / tps["naive"],
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"bench_args_{result['machine']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, stem.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["tokens_per_s"])
    vals = [result["tokens_per_s"][k] for k in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, vals, color=["#888888", "#2a7ab9", "#c44e52"])
    ax.bar_label(bars, labels=[f"{v:.2f} tok/s\n{r:.2f}x" for v, r in
                               zip(vals, [result["ratio_to_hf_greedy"][k] for k in names])])
    ax.set_ylabel("tokens / s (B = 1)")
    ax.set_title(f"{result['machine']}: prompt {result['prompt_tokens']} tok, k = {result['k']}")
    ax.set_ylim(0, max(vals) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
