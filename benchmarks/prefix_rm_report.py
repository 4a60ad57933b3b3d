"""The prefix-aware reward head beside the whole-reply head: accuracy by reply fraction (from the head's own
training report) and the committed evaluation of both heads side by side; then the demo's setting.

    python benchmarks/prefix_rm_report.py \
        --whole benchmarks/results/eval/results.json --prefix benchmarks/results/eval_prefix_rm/results.json \
        --first-fit benchmarks/results/eval_prefix_rm_first_fit

--first-fit: the first prefix head (every choice by CV on train, since replaced) for the record: its training
report (head_report.json) and decoding run (results.json) go beside the others; the demo chooses among the heads
shipped now.

Both evaluations must share prompts, settings, judge and greedy responses, and score rewards with the same RM
(the whole-reply head: the prefix run decodes with the prefix head and passes `--score-rm`), so every column
compares. Writes benchmarks/results/prefix_rm.json / .md / _accuracy.png and args_engine/assets/eval_summary.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open

from args_engine.eval.summary import SUMMARY_ASSET, best_setting, summary_line, targets_met
from args_engine.models.defaults import PREFIX_RM_ASSET, REWARD_HEADS, WHOLE_RM_ASSET

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ["args-greedy:k=10:w=1", "args-greedy:k=10:w=1:nrng=3", "args-greedy:k=10:w=1.5",
            "args-greedy:k=10:w=1.5:nrng=3", "args-greedy:k=10:w=2", "args-greedy:k=10:w=2:nrng=3"]


def head_report(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["report"])


def check_comparable(whole: dict, prefix: dict) -> None:
    for key in ("n_prompts", "prompts", "max_new_tokens", "lm", "dtype"):
        if whole["config"][key] != prefix["config"][key]:
            raise ValueError(f"the runs differ in {key}: {whole['config'][key]!r} vs {prefix['config'][key]!r}")
    if whole["judge"] != prefix["judge"]:
        raise ValueError("the runs were judged by different judges")
    texts = [[r["text"] for r in run["methods"]["greedy"]["responses"]] for run in (whole, prefix)]
    if texts[0] != texts[1]:
        raise ValueError("the runs' greedy responses differ")
    # which head decoded: "default" alone was recorded before the default became the prefix head (issue 27)
    decoded = {name: Path(run["config"]["rm"]).name for name, run in (("whole", whole), ("prefix", prefix))}
    if decoded["whole"] not in ("default", WHOLE_RM_ASSET.name) or decoded["prefix"] != PREFIX_RM_ASSET.name:
        raise ValueError(f"the runs must decode with the whole-reply and the prefix head (--rm), got {decoded}")
    scorer = Path(prefix["config"].get("score_rm") or "").name
    if scorer != WHOLE_RM_ASSET.name or whole["config"].get("score_rm") not in (None, str(WHOLE_RM_ASSET)):
        raise ValueError("the rewards must both be the whole-reply head's: run the prefix evaluation with "
                         f"--score-rm {WHOLE_RM_ASSET}")


def side_by_side(runs: dict[str, dict]) -> list[dict]:
    """runs: head label -> evaluation results, the whole-reply head's under "whole"."""
    rows = []
    greedy = runs["whole"]["methods"]["greedy"]
    rows.append({"head": "-", "setting": "greedy", **_figures(greedy), "targets_met": None})
    for label in SETTINGS:
        for head, run in runs.items():
            m = run["methods"].get(label)
            if m is not None:
                rows.append({"head": head, "setting": label, **_figures(m), "targets_met": targets_met(m, greedy)})
    return rows


def _figures(m: dict) -> dict:
    return {k: m[k] for k in ("avg_reward", "reward_gain_in_greedy_sd", "win_tie_vs_greedy", "diversity",
                              "coherence", "tokens_per_s")}


def plot_accuracy(accuracy: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, acc in accuracy.items():
        xs = [float(f) for f in acc]
        ax.plot([100 * x for x in xs], [100 * a for a in acc.values()], marker="o", label=name)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("reply written (%; matched lengths below 100)")
    ax.set_ylabel("pairwise accuracy (%)")
    ax.set_title("Validation pairs (300): chosen scored above rejected")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(report: dict) -> str:
    acc = report["accuracy_by_fraction"]
    lines = ["# Prefix-aware reward head vs the whole-reply head", "",
             "## Pairwise accuracy by reply fraction (300 validation pairs)", "",
             "| head | " + " | ".join(f"{100 * float(f):g}%" for f in next(iter(acc.values()))) + " |",
             "|---|" + "---|" * len(next(iter(acc.values())))]
    for name, a in acc.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in a.values()) + " |")
    e = report["evaluation"]
    lines += ["", f"Below 100%: chosen[:L] vs rejected[:L] with L = ceil(fraction x the shorter reply's tokens). "
              f"Prefix head: L2 by 5-fold CV on train for each weighting, the weighting chosen by validation (the best "
              f"mean over the fractions among the weightings whose whole-reply accuracy stays within 1 point of "
              f"the whole-reply head's; validation figures of the chosen head are optimistic by that choice): "
              f"{report['prefix_head']['chosen']}; command: `{report['prefix_head']['command']}`.", "",
              "| prefix weight | value weight | L2 (by CV) | " + " | ".join(
                  f"{100 * float(f):g}%" for f in next(iter(acc.values()))) + " | mean |",
              "|---|---|---|" + "---|" * (len(next(iter(acc.values()))) + 1)]
    for w in report["prefix_head"]["weightings"]:
        a = w["validation_accuracy"]
        lines.append(f"| {w['prefix_weight']:g} | {w['value_weight']:g} | {w['l2']:g} | "
                     + " | ".join(f"{100 * v:.1f}" for v in a.values()) + f" | {100 * w['validation_mean']:.1f} |")
    lines += ["",
              f"## Decoding with each head ({e['n_prompts']} evaluation prompts, {e['max_new_tokens']} new tokens)",
              "", "Rewards of every run are the whole-reply head's (the prefix runs decode with a prefix head and "
              "is scored with `--score-rm`), in greedy SDs; judge and greedy responses are the same.", "",
              "| setting | head | reward gain (greedy SDs) | judge win-tie | diversity (%) | coherence | tok/s |",
              "|---|---|---|---|---|---|---|"]
    for r in report["side_by_side"]:
        lines.append(f"| {r['setting']} | {r['head']} | {r['reward_gain_in_greedy_sd']:+.2f} | "
                     f"{r['win_tie_vs_greedy']:.0%} | {100 * r['diversity']:.1f} | {r['coherence']:.3f} | "
                     f"{r['tokens_per_s']:.1f} |")
    lines += ["", "Targets (issue 27): judge win-tie >= 60%, coherence within 0.03 of greedy, diversity >= greedy.",
              "", f"Demo setting: {summary_line(report['demo'])}", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whole", type=Path, default=RESULTS / "eval" / "results.json")
    ap.add_argument("--prefix", type=Path, default=RESULTS / "eval_prefix_rm" / "results.json")
    ap.add_argument("--first-fit", type=Path, default=RESULTS / "eval_prefix_rm_first_fit")
    args = ap.parse_args(argv)
    runs = {"whole": json.loads(args.whole.read_text()), "prefix": json.loads(args.prefix.read_text())}
    shipped = dict(runs)
    assert set(shipped) <= set(REWARD_HEADS), (set(shipped), set(REWARD_HEADS))
    prefix = head_report(PREFIX_RM_ASSET)
    by_fraction = prefix["validation_accuracy_by_fraction"]
    accuracy = {"whole-reply head (default_rm)": by_fraction["baseline"],
                "prefix head (prefix_rm)": by_fraction["prefix"]}
    if args.first_fit is not None and (args.first_fit / "results.json").exists():
        runs["prefix, first fit"] = json.loads((args.first_fit / "results.json").read_text())
        first = json.loads((args.first_fit / "head_report.json").read_text())
        accuracy["first prefix head (all by CV)"] = first["validation_accuracy_by_fraction"]["prefix"]
    for label, run in runs.items():
        if label != "whole":
            check_comparable(runs["whole"], run)
    demo = best_setting(shipped)  # keyed by the shipped heads' names, which the demo loads (reward_head_file)
    cfg = runs["prefix"]["config"]
    report = {"accuracy_by_fraction": accuracy,
              "prefix_head": {k: prefix[k] for k in ("chosen", "command", "seed", "whole_floor", "weightings")},
              "evaluation": {k: cfg[k] for k in ("n_prompts", "max_new_tokens", "prompts", "score_rm", "machine")},
              "side_by_side": side_by_side(runs), "demo": demo}
    (RESULTS / "prefix_rm.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "prefix_rm.md").write_text(markdown(report))
    plot_accuracy(accuracy, RESULTS / "prefix_rm_accuracy.png")
    SUMMARY_ASSET.write_text(json.dumps(demo, indent=1) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
