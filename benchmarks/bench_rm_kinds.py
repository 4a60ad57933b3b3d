"""What the kind of reward model costs: the default LM (SmolLM2-135M-Instruct) at a 550-token prompt, ARGS-greedy
k = 10, EOS ignored, B = 1, with

- (a) same-vocabulary decoder RMs: the default RM (a head on the LM's trunk: native, one shared trunk), and a
      random SmolLM2-sized RM with its own trunk, on the native and on the reference backend;
- (b) a same-size decoder RM behind the tokenizer bridge: random SmolLM2-sized weights on a byte-level BPE
      tokenizer trained here on HH text (reference backend: BridgeDecoder, an HF RM cache per request; native:
      the paged LM and the RM on its own paged pool in RM-token positions, engine/paged_bridge.py);
- (c) a MiniLM-size encoder RM (BERT, 6 layers x 384, MiniLM's WordPiece tokenizer, 512 positions): the k
      candidate texts, left-truncated to 512 tokens, in one batch per step; O(k x T) per step.

Reports tok/s and ms per token for each (and, on native, with 4 prompts decoded together), prefill included and
decode only (past the first token), medians of rounds that interleave the RMs; and the bridge's ratio to the
same-vocabulary RM on the same backend (target <= 1.3x) and to the native one, and the prompt's length in each
bridged RM's tokens (a same-vocabulary RM reads the LM's). Writes
benchmarks/results/bench_rm_kinds_<machine>.json and .png.

    python benchmarks/bench_rm_kinds.py [--new-tokens 32] [--prompt-tokens 550] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaConfig,
                          LlamaForSequenceClassification, PreTrainedTokenizerFast)

from args_engine import ARGSEngine, ARGSParams
from args_engine.eval.embed import minilm_dir
from args_engine.reward.data import load_pairs
from bench_common import long_prompt, machine_name, write_result


def bpe_tokenizer(vocab: int = 8000) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([p.chosen for p in load_pairs()[:3000]], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    return fast


def smollm_sized_rm(lm, vocab: int):
    cfg = {k: v for k, v in lm.config.to_dict().items() if k not in ("id2label", "label2id", "architectures")}
    cfg.update(vocab_size=vocab, num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(**cfg)).to(lm.dtype).eval()


def minilm_sized_encoder():
    torch.manual_seed(0)
    cfg = BertConfig.from_pretrained(minilm_dir())
    cfg.num_labels = 1
    return BertForSequenceClassification(cfg).eval()


def measure(engine: ARGSEngine, ids: list[int], n: int, batch: int = 1) -> tuple[float, float]:
    """`batch` copies of the prompt decoded together -> (generated tokens per second, prefill included; decode ms
    per generated token: the time past the first token, which pays the prefill)."""
    def run(max_new_tokens: int) -> tuple[float, int]:
        start = time.perf_counter()
        out = engine.generate([ids] * batch, ARGSParams(k=10, w=1.0, max_new_tokens=max_new_tokens, ignore_eos=True),
                              progress=False)
        return time.perf_counter() - start, sum(len(o.token_ids) for o in out)
    run(2)  # warm
    first, _ = run(1)
    total, tokens = run(n)
    return tokens / total, 1e3 * (total - first) / (tokens - batch)


def ratio(rows: dict, a: str, b: str, key: str = "ms_per_token") -> float:
    return rows[a][key] / rows[b][key]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=550)
    ap.add_argument("--rounds", type=int, default=3, help="measurements per RM, interleaved; the median is kept")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    default = ARGSEngine.from_pretrained(backend="native", enable_prefix_caching=False)
    lm, tok = default.lm, default.tokenizer
    ids = long_prompt(tok, args.prompt_tokens)
    # the prompt's text, for the bridged RMs (raw: the LM's chat rendering read as text)
    bpe = bpe_tokenizer()
    same_vocab_rm = smollm_sized_rm(lm, lm.config.vocab_size)
    bridged_rm = smollm_sized_rm(lm, len(bpe))
    wordpiece = AutoTokenizer.from_pretrained(minilm_dir())
    engines = {
        "(a) default RM, shared trunk, native": default,
        "(a) same-size RM, own trunk, native": ARGSEngine(lm, same_vocab_rm, tokenizer=tok, backend="native",
                                                          enable_prefix_caching=False),
        "(a) same-size RM, own trunk, reference": ARGSEngine(lm, same_vocab_rm, tokenizer=tok, backend="reference"),
        "(b) same-size RM behind the BPE bridge, reference": ARGSEngine(lm, bridged_rm, tokenizer=tok,
                                                                        rm_tokenizer=bpe, backend="reference"),
        "(b) same-size RM behind the BPE bridge, native": ARGSEngine(lm, bridged_rm, tokenizer=tok, rm_tokenizer=bpe,
                                                                     backend="native", enable_prefix_caching=False),
        "(c) MiniLM-size encoder RM, reference": ARGSEngine(lm, minilm_sized_encoder(), tokenizer=tok,
                                                            rm_tokenizer=wordpiece, backend="reference"),
    }
    # B = 4 on native: what continuous batching gives each RM kind (the bridged RM on its own paged pool)
    batched = {f"{name}, B = 4": name for name in ("(b) same-size RM behind the BPE bridge, native",
                                                   "(a) same-size RM, own trunk, native")}
    names = [*engines, *batched]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(args.rounds):  # rounds interleave the RMs, so the machine's drift hits them alike
        for name in names:
            batch = 4 if name in batched else 1
            samples[name].append(measure(engines[batched.get(name, name)], ids, args.new_tokens, batch))
            rate, decode = samples[name][-1]
            print(f"round {r + 1}: {name:<56} {rate:7.2f} tok/s  {1e3 / rate:8.1f} ms/token  decode "
                  f"{decode:7.1f} ms/token", flush=True)
    rows = {}
    for name in names:
        rate, decode = (statistics.median(x) for x in zip(*samples[name]))
        rows[name] = {"tokens_per_s": rate, "ms_per_token": 1e3 / rate, "decode_ms_per_token": decode,
                      "batch": 4 if name in batched else 1, "rounds": samples[name]}
    same_ref, same_nat = "(a) same-size RM, own trunk, reference", "(a) same-size RM, own trunk, native"
    encoder = "(c) MiniLM-size encoder RM, reference"
    bridge_ref, bridge_nat = ("(b) same-size RM behind the BPE bridge, reference",
                              "(b) same-size RM behind the BPE bridge, native")
    result = {"machine": machine_name(), "torch": torch.__version__, "lm": "SmolLM2-135M-Instruct (float32)",
              "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "k": 10, "rounds": args.rounds,
              "prompt_rm_tokens": {kind: len(view.ids(view.prefix(ids, False), [])) for kind, view in (
                  ("bpe_bridge", engines[bridge_nat].bridge), ("encoder", engines[encoder].bridge))},
              "statistic": "median over rounds", "rms": rows,
              "bridge_over_same_vocab_reference": ratio(rows, bridge_ref, same_ref),
              "bridge_over_same_vocab_native": ratio(rows, bridge_ref, same_nat),
              "native_bridge_over_same_vocab_native": ratio(rows, bridge_nat, same_nat),
              "native_bridge_over_same_vocab_native_b4": ratio(rows, *batched),
              "decode_only": {"bridge_over_same_vocab_reference": ratio(rows, bridge_ref, same_ref,
                                                                        "decode_ms_per_token"),
                              "native_bridge_over_same_vocab_native": ratio(rows, bridge_nat, same_nat,
                                                                            "decode_ms_per_token"),
                              "native_bridge_over_same_vocab_native_b4": ratio(rows, *batched,
                                                                               "decode_ms_per_token")},
              "target_bridge_ratio": 1.3}
    for name in names:
        print(f"median: {name:<56} {rows[name]['tokens_per_s']:7.2f} tok/s  decode "
              f"{rows[name]['decode_ms_per_token']:7.1f} ms/token")
    d = result["decode_only"]
    print(f"bridge / same-vocabulary RM (ms per token, prefill included; decode only): reference "
          f"{result['bridge_over_same_vocab_reference']:.2f}x, {d['bridge_over_same_vocab_reference']:.2f}x; native "
          f"{result['native_bridge_over_same_vocab_native']:.2f}x, {d['native_bridge_over_same_vocab_native']:.2f}x; "
          f"native B = 4 {result['native_bridge_over_same_vocab_native_b4']:.2f}x, "
          f"{d['native_bridge_over_same_vocab_native_b4']:.2f}x (target <= 1.3x)")
    print(f"the prompt in RM tokens: {result['prompt_rm_tokens']} (LM tokens: {len(ids)})")
    path = write_result(result, "bench_rm_kinds", args.out)
    plot(result, path.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["rms"])
    rates = [result["rms"][n]["tokens_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    colors = {"(a)": "#4c72b0", "(b)": "#dd8452", "(c)": "#55a868"}
    ax.barh(range(len(names)), rates, color=[colors[n[:3]] for n in names])
    for i, n in enumerate(names):
        if result["rms"][n].get("batch", 1) > 1:
            ax.patches[i].set_hatch("//")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens / s (k = 10; hatched: 4 prompts decoded together)")
    ax.set_title(f"RM kinds: default LM, {result['prompt_tokens']}-token prompt, {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
