"""A reward model on another tokenizer, on a GPU: what the bridge's step costs next to a same-vocabulary RM.

Random Llama-3.2-1B-shaped LM and RM in bf16 (the vocabulary of the tokenizers below), ARGS-greedy k = 10, EOS
ignored, a ~550-LM-token prompt of English text (the README and docs/), B = 1 and 8, native engine, eager steps
(the bridged step has no CUDA graphs; the same-vocabulary RM is also timed with graphs). Two byte-level BPE
tokenizers are trained here on the README and docs/ pages (the GPU machine has no model hub): the LM's, and the
RM's with another vocabulary size, so the RM reads other tokens. Reports decode ms per step for

- the same-vocabulary RM (its own trunk), eager and graph;
- the same RM weights behind the bridge (engine/paged_bridge.py: its own paged pool in RM-token positions),

the ratio bridge / same vocabulary (eager), and the host time the bridge spends tokenizing per step (every
candidate's whole text, one batched call: decoding/bridge.py's exact definition).

    python benchmarks/gpu/bench_bridge_gpu.py [--out DIR] [--batches 1,8] [--new-tokens 64] [--tiny]
Writes DIR/bench_bridge_gpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e_gpu import LLAMA_1B, TINY, build, timed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from args_engine import ARGSEngine, ARGSParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def corpus() -> str:
    """README.md and the docs/ pages: the English text the tokenizers train on and the prompt is cut from."""
    return "\n\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def bpe(vocab: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the corpus' paragraphs."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(corpus().split("\n\n"), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=550)
    ap.add_argument("--tiny", action="store_true", help="a tiny config on CPU, to check the script runs")
    args = ap.parse_args()
    device, config, cache_gb = "cuda", LLAMA_1B, 8.0
    if args.tiny:
        device, config, cache_gb = "cpu", TINY, 0.1
        args.new_tokens, args.prompt_tokens, args.batches = 4, 64, "1,2"
    lm_tok, rm_tok = bpe(4096), bpe(3000)
    lm = build(LlamaForCausalLM, dict(config, vocab_size=len(lm_tok)), device)

    def rm_on(vocab: int):
        return build(LlamaForSequenceClassification, dict(config, vocab_size=vocab), device, num_labels=1,
                     pad_token_id=0)
    text = " ".join(corpus().split())
    ids = lm_tok(text)["input_ids"][:args.prompt_tokens]
    prompt = lm_tok.decode(ids)
    n, k, batches = args.new_tokens, 10, [int(b) for b in args.batches.split(",")]
    params = [ARGSParams(k=k, w=1.0, max_new_tokens=m, ignore_eos=True) for m in (1, n)]
    same_rm = rm_on(len(lm_tok))
    engines = [("same_vocabulary_eager", same_rm, dict(step_mode="dynamic")),
               ("same_vocabulary_graph", same_rm, dict(step_mode="graph" if device == "cuda" else "dynamic")),
               ("bridge_eager", rm_on(len(rm_tok)), dict(rm_tokenizer=rm_tok))]
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (--tiny check)",
              "torch": torch.__version__, "dtype": "bfloat16", "model": "random Llama-3.2-1B-shaped LM and RM",
              "lm_vocab": len(lm_tok), "rm_vocab": len(rm_tok), "prompt_lm_tokens": len(ids),
              "prompt_rm_tokens": len(rm_tok(prompt)["input_ids"]), "k": k, "new_tokens": n, "runs": {}}
    for name, rm, opts in engines:  # prefix cache off: the runs reuse one prompt, a hit would skip timed prefill
        engine = ARGSEngine(lm, rm, tokenizer=lm_tok, backend="native", batch_size=max(batches), raw=True,
                            cache_memory_gb=cache_gb, enable_prefix_caching=False, eos_ids=set(), **opts)
        bridge = engine.decoder.runner.paged_bridge
        if name.startswith("bridge") and bridge is None:
            raise SystemExit("the bridged RM did not get the paged bridge")
        spent = [0.0]
        if bridge is not None:  # host time tokenizing the candidates' texts
            ids_rows = bridge.view.ids_rows

            def timed_ids(rows):
                start = time.perf_counter()
                try:
                    return ids_rows(rows)
                finally:
                    spent[0] += time.perf_counter() - start
            bridge.view.ids_rows = timed_ids
        engine.generate([prompt] * 2, params[0], progress=False)  # warm-up: Triton compiles, graphs capture
        runs = []
        for B in batches:
            t1 = min(timed(lambda: engine.generate([prompt] * B, params[0], progress=False), device)
                     for _ in range(2))
            spent[0] = 0.0
            tn = timed(lambda: engine.generate([prompt] * B, params[1], progress=False), device)
            run = {"batch": B, "step_mode": engine.decoder.runner.step_mode,
                   "decode_ms_per_step": (tn - t1) / (n - 1) * 1e3, "tokens_per_s": B * n / tn}
            if bridge is not None:
                run["tokenize_ms_per_step"] = spent[0] / n * 1e3
            runs.append(run)
            print(name, json.dumps(run), flush=True)
        result["runs"][name] = runs
    result["bridge_over_same_vocabulary_eager"] = [
        b["decode_ms_per_step"] / s["decode_ms_per_step"]
        for b, s in zip(result["runs"]["bridge_eager"], result["runs"]["same_vocabulary_eager"])]
    print("bridge / same vocabulary (eager), per batch:", result["bridge_over_same_vocabulary_eager"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_bridge_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'bench_bridge_gpu.json'}")


if __name__ == "__main__":
    main()
