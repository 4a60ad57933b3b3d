"""What the kind of reward model costs: the default LM (SmolLM2-135M-Instruct) at a 550-token prompt, ARGS-greedy
k = 10, EOS ignored, B = 1, with

- (a) same-vocabulary decoder RMs: the default RM (a head on the LM's trunk: native, one shared trunk), and a
      random SmolLM2-sized RM with its own trunk, on the native and on the reference backend;
- (b) a same-size decoder RM behind the tokenizer bridge: random SmolLM2-sized weights on a byte-level BPE
      tokenizer trained here on HH text (reference backend: BridgeDecoder, an HF RM cache per request; native:
      the paged LM and the RM on its own paged pool in RM-token positions, engine/paged_bridge.py);
- (c) a MiniLM-size encoder RM (BERT, 6 layers x 384, MiniLM's WordPiece tokenizer, 512 positions): the k
      candidate texts, left-truncated to 512 tokens, in one batch per step; O(k x T) per step.

Reports tok/s and ms per token for each, and the bridge's ratio to the same-vocabulary RM on the same backend
(target <= 1.3x) and to the native one. Writes benchmarks/results/bench_rm_kinds_<machine>.json and .png.

    python benchmarks/bench_rm_kinds.py [--new-tokens 32] [--prompt-tokens 550]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaConfig,
                          LlamaForSequenceClassification, PreTrainedTokenizerFast)

from args_engine import ARGSEngine, ARGSParams
from args_engine.eval.embed import minilm_dir
from args_engine.reward.data import load_pairs
from common import long_prompt, machine_name, write_result


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


def tok_per_s(engine: ARGSEngine, ids: list[int], n: int) -> float:
    params = ARGSParams(k=10, w=1.0, max_new_tokens=n, ignore_eos=True)
    engine.generate([ids], ARGSParams(k=10, w=1.0, max_new_tokens=2, ignore_eos=True), progress=False)  # warm
    start = time.perf_counter()
    out = engine.generate([ids], params, progress=False)[0]
    return len(out.token_ids) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=550)
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
    rows = {}
    for name, engine in engines.items():
        rate = tok_per_s(engine, ids, args.new_tokens)
        rows[name] = {"tokens_per_s": rate, "ms_per_token": 1e3 / rate}
        print(f"{name:<52} {rate:7.2f} tok/s  {1e3 / rate:8.1f} ms/token", flush=True)
    bridge = rows["(b) same-size RM behind the BPE bridge, reference"]["ms_per_token"]
    result = {"machine": machine_name(), "torch": torch.__version__, "lm": "SmolLM2-135M-Instruct (float32)",
              "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "k": 10, "batch": 1, "rms": rows,
              "bridge_over_same_vocab_reference": bridge / rows["(a) same-size RM, own trunk, reference"]["ms_per_token"],
              "bridge_over_same_vocab_native": bridge / rows["(a) same-size RM, own trunk, native"]["ms_per_token"],
              "native_bridge_over_same_vocab_native":
                  rows["(b) same-size RM behind the BPE bridge, native"]["ms_per_token"]
                  / rows["(a) same-size RM, own trunk, native"]["ms_per_token"],
              "target_bridge_ratio": 1.3}
    print(f"bridge / same-vocabulary RM: {result['bridge_over_same_vocab_reference']:.2f}x on the reference backend, "
          f"{result['bridge_over_same_vocab_native']:.2f}x against native (target <= 1.3x); native bridge / native "
          f"same-vocabulary: {result['native_bridge_over_same_vocab_native']:.2f}x")
    path = write_result(result, "bench_rm_kinds", args.out)
    plot(result, path.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["rms"])
    rates = [result["rms"][n]["tokens_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.barh(range(len(names)), rates, color=["#4c72b0", "#4c72b0", "#8fa9d6", "#dd8452", "#dd8452", "#55a868"])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens / s (B = 1, k = 10)")
    ax.set_title(f"RM kinds: default LM, {result['prompt_tokens']}-token prompt, {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
