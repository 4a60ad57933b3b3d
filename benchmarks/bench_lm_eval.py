"""lm-evaluation-harness on the default models, three ways, one local multiple-choice task of N documents:
the engine in process (--model args-engine), the server through lm-eval's local-completions client (token ids,
echo + logprobs), and lm-eval's own `hf` backend (the oracle). Prints and records each way's wall time, its
accuracy, and the largest |log-likelihood - hf's| over every (document, choice).

The task: HH-RLHF evaluation-split dialogues (never used to train the RM), context = the dialogue up to the last
"Assistant:", choices = the chosen and the rejected reply (their first 40 words), target = chosen. Its accuracy
is how often the LM itself finds the preferred reply likelier: a property of the LM, not of ARGS (log-likelihoods
are the LM's; see docs/evaluation.md).

    python benchmarks/bench_lm_eval.py [--docs 100] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm_eval  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from args_engine import ARGSEngine  # noqa: E402
from args_engine.integrations.lmeval import ARGSEvalLM  # noqa: E402
from args_engine.integrations.server import create_app  # noqa: E402
from args_engine.integrations.server_config import ServerConfig  # noqa: E402
from args_engine.integrations.server_thread import ServerThread  # noqa: E402
from args_engine.reward.data import data_provenance, load_pairs, split_pairs  # noqa: E402
from bench_common import bar_chart, machine_name, write_result  # noqa: E402

TASK = "args_hh_preference_mc"


def write_task(root: Path, docs: int) -> None:
    rows = []
    for pair in split_pairs(load_pairs())["evaluation"][:docs]:
        head, _, chosen = pair.chosen.rpartition("\n\nAssistant:")
        _, _, rejected = pair.rejected.rpartition("\n\nAssistant:")
        rows.append({"context": head.strip() + "\n\nAssistant:",
                     "choices": [" " + " ".join(r.split()[:40]) for r in (chosen, rejected)], "label": 0})
    (root / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'docs.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
target_delimiter: ""
doc_to_target: label
metric_list:
  - metric: acc
""")


def run(model, tasks, **kw) -> tuple[float, float, list[float]]:
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=model, tasks=[TASK], task_manager=tasks, log_samples=True, **kw)
    wall = time.perf_counter() - start
    lls = [r[0][0] for s in out["samples"][TASK] for r in s["resps"]]
    return wall, out["results"][TASK]["acc,none"], lls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8, help="hf backend's batch and the engine's rows")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/lm_eval_<machine>.json)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="args-lm-eval-"))
    write_task(root, args.docs)
    tasks = TaskManager(include_path=str(root))
    engine = ARGSEngine.from_pretrained(raw=True, backend="native", batch_size=args.batch_size)
    tok_dir = root / "tokenizer"
    engine.tokenizer.save_pretrained(tok_dir)
    results = {}
    wall, acc, hf = run(HFLM(pretrained=engine.lm, tokenizer=engine.tokenizer, batch_size=args.batch_size), tasks)
    results["hf"] = {"wall_s": wall, "acc": acc}
    wall, acc, ours = run(ARGSEvalLM(engine=engine), tasks)
    results["in-process"] = {"wall_s": wall, "acc": acc, "max_abs_diff_vs_hf": max(abs(a - b) for a, b in zip(ours, hf))}
    with ServerThread(create_app(engine, ServerConfig(served_model_names=["args-engine"]))) as url:
        model_args = (f"model=args-engine,base_url={url}/v1/completions,tokenizer_backend=huggingface,"
                      f"tokenizer={tok_dir},num_concurrent=1,max_retries=1,max_length=8192")
        wall, acc, server = run("local-completions", tasks, model_args=model_args)
    results["server"] = {"wall_s": wall, "acc": acc,
                         "max_abs_diff_vs_hf": max(abs(a - b) for a, b in zip(server, hf))}
    for name, r in results.items():
        extra = f", max |ll - hf| {r['max_abs_diff_vs_hf']:.2e}" if "max_abs_diff_vs_hf" in r else ""
        print(f"{name:>10}: {r['wall_s']:.1f} s, acc {r['acc']:.3f}{extra}")
    result = {"benchmark": "lm_eval", "machine": machine_name(), "date": time.strftime("%Y-%m-%d"),
              "docs": args.docs, "choices_per_doc": 2, "batch_size": args.batch_size,
              "models": "default (SmolLM2-135M-Instruct, float32)", "lm_eval": lm_eval.__version__,
              "data": data_provenance(), "results": results}
    path = write_result(result, "lm_eval", args.out)
    plot(results, path.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    bar_chart(path, list(results), [r["wall_s"] for r in results.values()], "wall time (s)",
              "lm-eval multiple choice, same task and models", color=["#888", "#2a7", "#27a"])


if __name__ == "__main__":
    main()
