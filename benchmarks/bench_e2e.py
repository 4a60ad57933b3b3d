"""End-to-end: the native engine against HF greedy, the reference decoder and the original-style baseline
(benchmarks/ref_baselines/original_args.py), on the default models, ARGS-greedy k = 10, w = 1, EOS ignored so every
decoder emits the same number of tokens. All figures of one run are measured side by side on one machine.

    python benchmarks/bench_e2e.py [--sections e2e,batch,memory,sweep,prefix_cache] [--new-tokens 128] [--quick]

- e2e: B = 1, prompts of about 512 and 2,000 tokens: tok/s of HF greedy, reference, native, original-style.
  The default RM is a head on the LM's own trunk, so `native` runs one shared trunk; `native_two_trunks`
  forces two (what any other LM/RM pair costs).
- batch: 16 evaluation prompts decoded together by native vs the same 16 one at a time by the original style.
- memory: RM cache bytes per sequence, native (paged, one prefix) vs original style (k replicas).
- sweep: tok/s against prompt length and against k, native vs original style (fewer new tokens).
- prefix_cache: native with the prefix cache on vs off. A chat's next turn (time to the first token when
  the earlier turns are cached) and 16 prompts that share a long system message, decoded together.
The other sections measure cold prompts: their engines run with the prefix cache off, since the prompts of
one section share beginnings (the sweep's long prompts extend each other) and would otherwise hit.
Writes benchmarks/results/bench_e2e_<machine>.json (sections not rerun keep their figures) and .png.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from args_engine.progress import progress_bar

from args_engine import ARGSEngine, ARGSParams
from args_engine.reward.data import load_pairs, split_last_reply, split_pairs
from ref_baselines.original_args import original_args_generate
from bench_common import long_prompt, machine_name, timed

RESULTS = Path(__file__).resolve().parent / "results"


class Bench:
    def __init__(self, args):
        self.args = args
        self.native = ARGSEngine.from_pretrained(device=args.device, backend="native", batch_size=16,
                                                 enable_prefix_caching=False)
        self.shared = dict(lm=self.native.lm, rm=self.native.rm, tokenizer=self.native.tokenizer)
        self.ref = ARGSEngine(**self.shared, backend="reference")
        self.lm, self.rm, self.tok = self.native.lm, self.native.rm, self.native.tokenizer

    def params(self, n: int, k: int = 10) -> ARGSParams:
        return ARGSParams(k=k, w=1.0, max_new_tokens=n, ignore_eos=True)

    def hf_greedy(self, ids: list[int], n: int) -> float:
        x = torch.tensor([ids], device=self.args.device)
        start = time.perf_counter()
        with torch.no_grad():
            self.lm.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=self.native.pad_id)
        return n / (time.perf_counter() - start)

    def engine(self, engine: ARGSEngine, prompts: list, n: int, k: int = 10) -> tuple[float, list]:
        start = time.perf_counter()
        outs = engine.generate(prompts, self.params(n, k), progress=False)
        return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start), outs

    def original(self, prompts: list[list[int]], n: int, k: int = 10) -> tuple[float, list, int]:
        start, outs, peak = time.perf_counter(), [], 0
        for ids in prompts:
            tokens, p = original_args_generate(self.lm, self.rm, ids, k, 1.0, n)
            outs.append(tokens)
            peak = max(peak, p)
        return len(prompts) * n / (time.perf_counter() - start), outs, peak

    def e2e(self) -> dict:
        rows = {}
        # the default RM is a head on the LM's trunk, so native shares one trunk; this one runs two, like any pair
        native_two = ARGSEngine(**self.shared, backend="native", share_trunk=False, enable_prefix_caching=False)
        for target in progress_bar(self.args.prompt_lengths, desc="e2e"):
            ids, n = long_prompt(self.tok, target), self.args.new_tokens
            self.hf_greedy(ids, 4)  # warm-up
            row = {"prompt_tokens": len(ids), "hf_greedy": self.hf_greedy(ids, n)}
            row["reference"], ref_out = self.engine(self.ref, [ids], n)
            row["native"], nat_out = self.engine(self.native, [ids], n)
            row["native_two_trunks"], _ = self.engine(native_two, [ids], n)
            row["original_style"], orig_out, _ = self.original([ids], n)
            row["same_tokens"] = ref_out[0].token_ids == nat_out[0].token_ids == orig_out[0]
            row["native_over_hf_greedy"] = row["native"] / row["hf_greedy"]
            row["native_over_original_style"] = row["native"] / row["original_style"]
            row["native_two_trunks_over_hf_greedy"] = row["native_two_trunks"] / row["hf_greedy"]
            row["native_two_trunks_over_original_style"] = row["native_two_trunks"] / row["original_style"]
            rows[str(target)] = row
            print(json.dumps(row))
        return rows

    def batch_prompts(self, count: int) -> list[list[int]]:
        pairs = split_pairs(load_pairs())["evaluation"][:count]
        return [self.native.make_request(split_last_reply(p.chosen)[0], self.params(1)).prompt_ids for p in pairs]

    def batch(self) -> dict:
        prompts, n = self.batch_prompts(16), self.args.batch_new_tokens
        native_tps, nat_out = self.engine(self.native, prompts, n)
        orig_tps, orig_out, _ = self.original(prompts, n)
        row = {"prompts": len(prompts), "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
               "new_tokens": n, "native_batched": native_tps, "original_style_one_at_a_time": orig_tps,
               "ratio": native_tps / orig_tps,
               "same_tokens": sum(o.token_ids == t for o, t in zip(nat_out, orig_out))}
        print(json.dumps(row))
        return row

    def memory(self) -> dict:
        ids, n, k = long_prompt(self.tok, 512), 16, 10
        _, _, baseline = self.original([ids], n, k)
        rm = self.native.decoder.runner.rm
        per_token = 2 * rm.num_layers * rm.num_kv_heads * rm.head_dim * rm.dtype.itemsize
        bs = self.native.decoder.bm.block_size
        T = len(ids) + n
        native_pages = -(-T // bs) * bs * per_token
        scratch = k * per_token  # the candidates' K/V of one step, dropped after the commit
        row = {"prompt_tokens": len(ids), "new_tokens": n, "k": k, "rm_bytes_per_token": per_token,
               "native_rm_cache_bytes": native_pages + scratch, "original_style_rm_cache_bytes": baseline,
               "ratio": baseline / (native_pages + scratch)}
        print(json.dumps(row))
        return row

    def sweep(self) -> dict:
        n = self.args.sweep_new_tokens
        out = {"new_tokens": n, "prompt_length": [], "k": []}
        for target in progress_bar(self.args.sweep_lengths, desc="sweep length"):
            ids = long_prompt(self.tok, target)
            out["prompt_length"].append({"prompt_tokens": len(ids), "native": self.engine(self.native, [ids], n)[0],
                                         "original_style": self.original([ids], n)[0]})
        ids = long_prompt(self.tok, 512)
        for k in progress_bar(self.args.sweep_ks, desc="sweep k"):
            out["k"].append({"k": k, "native": self.engine(self.native, [ids], n, k)[0],
                             "original_style": self.original([ids], n, k)[0]})
        print(json.dumps(out))
        return out

    def prefix_cache(self) -> dict:
        engines = {False: self.native, True: ARGSEngine(**self.shared, backend="native", batch_size=16)}
        # A chat's next turn: the earlier turns (about half the prompt) were the previous request.
        earlier, turn = long_prompt(self.tok, self.args.prompt_lengths[-1] // 2), long_prompt(
            self.tok, self.args.prompt_lengths[-1])
        assert turn[:len(earlier)] == earlier
        ttft = {}
        for on, engine in engines.items():
            self.engine(engine, [earlier], 1)
            ttft[on] = timed(lambda: self.engine(engine, [turn], 1))
        # 16 prompts behind one long system message, submitted together.
        system = self.tok.decode(long_prompt(self.tok, 512), skip_special_tokens=True)
        pairs = split_pairs(load_pairs())["evaluation"][16:32]
        prompts = [[{"role": "system", "content": system}] + split_last_reply(p.chosen)[0] for p in pairs]
        n, batch, bm = self.args.batch_new_tokens, {}, engines[True].decoder.bm
        hits, admitted = bm.num_hit_tokens, bm.num_admitted_tokens
        for on, engine in engines.items():
            batch[on], _ = self.engine(engine, prompts, n)
        hits, admitted = bm.num_hit_tokens - hits, bm.num_admitted_tokens - admitted
        row = {"next_turn": {"cached_prompt_tokens": len(earlier), "prompt_tokens": len(turn),
                             "ttft_s_off": ttft[False], "ttft_s_on": ttft[True], "speedup": ttft[False] / ttft[True]},
               "shared_system": {"prompts": len(prompts), "mean_prompt_tokens": admitted / len(prompts),
                                 "new_tokens": n, "hit_tokens": hits, "tok_s_off": batch[False],
                                 "tok_s_on": batch[True], "speedup": batch[True] / batch[False]}}
        print(json.dumps(row))
        return row


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("e2e", "sweep", "prefix_cache") if p in result]
    n_axes = ("e2e" in result) + 2 * ("sweep" in result) + ("prefix_cache" in result)
    fig, axes = plt.subplots(1, n_axes, figsize=(5 * n_axes, 3.8))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    if "e2e" in result:
        ax, names = axes.pop(0), ["hf_greedy", "reference", "native", "native_two_trunks", "original_style"]
        rows = result["e2e"]
        width = 0.8 / len(rows)
        for i, (length, row) in enumerate(rows.items()):
            xs = [j + i * width for j in range(len(names))]
            ax.bar(xs, [row[m] for m in names], width, label=f"prompt {row['prompt_tokens']} tok")
        ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(names))], names, rotation=25, ha="right")
        ax.set_ylabel("tokens / s (B = 1, k = 10)")
        ax.legend()
    if "sweep" in result:
        s = result["sweep"]
        for key, xname in (("prompt_length", "prompt_tokens"), ("k", "k")):
            ax = axes.pop(0)
            for m, style in (("native", "o-"), ("original_style", "s--")):
                ax.plot([r[xname] for r in s[key]], [r[m] for r in s[key]], style, label=m)
            ax.set_xlabel(xname.replace("_", " "))
            ax.set_ylabel(f"tokens / s ({s['new_tokens']} new)")
            ax.legend()
    if "prefix_cache" in result:
        ax, pc = axes.pop(0), result["prefix_cache"]
        turn, batch = pc["next_turn"], pc["shared_system"]
        labels = [f"next turn, TTFT\n({turn['cached_prompt_tokens']} of {turn['prompt_tokens']} tok cached)",
                  f"{batch['prompts']} prompts, one system msg\ntok/s ({batch['hit_tokens']} tok hit)"]
        ax.bar(labels, [turn["speedup"], batch["speedup"]], 0.5)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylabel("speed-up, prefix cache on vs off")
        ax.set_title("native prefix cache")
    fig.suptitle(f"{result['machine']}: ARGS decoding, default models ({', '.join(panels)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="e2e,batch,memory,sweep,prefix_cache")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-new-tokens", type=int, default=64)
    ap.add_argument("--sweep-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = ap.parse_args()
    args.prompt_lengths, args.sweep_lengths, args.sweep_ks = [512, 2000], [128, 512, 1024, 2048], [1, 5, 10, 20]
    if args.quick:
        args.new_tokens = args.batch_new_tokens = args.sweep_new_tokens = 4
        args.prompt_lengths, args.sweep_lengths, args.sweep_ks = [64], [64, 128], [1, 4]
    bench = Bench(args)
    result = {"machine": machine_name(), "torch": torch.__version__, "dtype": "float32", "k": 10, "w": 1.0,
              "new_tokens": args.new_tokens, "quick": args.quick}
    for section in args.sections.split(","):
        result[section] = getattr(bench, section)()
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"bench_e2e_{result['machine']}"
        path = stem.with_suffix(".json")
        if path.exists():  # a rerun of some sections keeps the others' figures
            result = {**json.loads(path.read_text()), **result}
        path.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
