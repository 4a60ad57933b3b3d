"""What the committed evaluation supports best, in one small file the package ships (assets/eval_summary.json):
the demo decodes with that setting and prints one line of what the evaluation found for it.

The choice follows issue 27's targets for a setting a reader would want: judge win-tie vs greedy >= 60%,
coherence within 0.03 of greedy's, diversity >= greedy's. The setting that meets the most targets wins; among
equals, the higher judge win-tie, then the higher reward gain. Nothing here changes a metric."""
from __future__ import annotations

import json
from pathlib import Path

SUMMARY_ASSET = Path(__file__).resolve().parent.parent / "assets" / "eval_summary.json"
TARGETS = {"win_tie": 0.60, "coherence_gap": 0.03}
HEAD_NAMES = {"prefix": "prefix", "whole": "whole-reply"}  # the shipped heads (models/defaults.py REWARD_HEADS)


def targets_met(m: dict, greedy: dict) -> dict[str, bool]:
    return {"judge win-tie >= 60%": m["win_tie_vs_greedy"] >= TARGETS["win_tie"],
            "coherence within 0.03 of greedy": greedy["coherence"] - m["coherence"] <= TARGETS["coherence_gap"] + 1e-12,
            "diversity >= greedy": m["diversity"] >= greedy["diversity"]}


def best_setting(runs: dict[str, dict]) -> dict:
    """runs: head name -> an eval results.json (same prompts, greedy and scoring RM) -> the summary dict."""
    rows = []
    for head, results in runs.items():
        greedy = results["methods"]["greedy"]
        for label, m in results["methods"].items():
            if m["params"]["kind"] != "args-greedy":
                continue
            met = targets_met(m, greedy)
            rows.append((sum(met.values()), m["win_tie_vs_greedy"], m["reward_gain_in_greedy_sd"], head, label, m,
                         met, greedy))
    if not rows:
        raise ValueError("no args-greedy method in these results")
    n_met, _, _, head, label, m, met, greedy = max(rows, key=lambda r: r[:3])
    p = m["params"]
    cfg = runs[head]["config"]
    return {"head": head, "label": label, "k": p["k"], "w": p["w"],
            "no_repeat_ngram_size": p.get("no_repeat_ngram_size") or 0,
            "repetition_penalty": p.get("repetition_penalty") or 1.0,
            "reward_gain_in_greedy_sd": m["reward_gain_in_greedy_sd"], "win_tie_vs_greedy": m["win_tie_vs_greedy"],
            "coherence": m["coherence"], "diversity": m["diversity"], "greedy_coherence": greedy["coherence"],
            "greedy_diversity": greedy["diversity"], "targets_met": met,
            "evaluation": {"n_prompts": cfg["n_prompts"], "max_new_tokens": cfg["max_new_tokens"],
                           "prompts": cfg["prompts"], "score_rm": cfg.get("score_rm")}}


def load_summary(path: str | Path = SUMMARY_ASSET) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def summary_line(s: dict) -> str:
    e = s["evaluation"]
    controls = f", no_repeat_ngram_size={s['no_repeat_ngram_size']}" if s["no_repeat_ngram_size"] else ""
    missed = [t for t, ok in s["targets_met"].items() if not ok]
    scorer = f" (scored by {_head_name(e['score_rm'])})" if e.get("score_rm") else ""
    return (f"Committed evaluation ({e['n_prompts']} HH-RLHF prompts, {e['max_new_tokens']} new tokens), "
            f"ARGS-greedy k={s['k']} w={s['w']:g}{controls}, {HEAD_NAMES.get(s['head'], s['head'])} reward head: "
            f"reward{scorer} "
            f"{s['reward_gain_in_greedy_sd']:+.2f} greedy SDs, judge win-tie {s['win_tie_vs_greedy']:.0%}, "
            f"coherence {s['coherence']:.3f} (greedy {s['greedy_coherence']:.3f}), diversity "
            f"{100 * s['diversity']:.1f} (greedy {100 * s['greedy_diversity']:.1f})"
            + (f"; targets missed: {', '.join(missed)}" if missed else "; every target met") + ".")


def _head_name(path: str) -> str:
    """A scoring head file -> how the line names it: a shipped head by what it is, any other by its file name."""
    from ..models.defaults import REWARD_HEADS

    name = Path(path).name
    shipped = {p.name: HEAD_NAMES[head] for head, p in REWARD_HEADS.items()}
    return f"the {shipped[name]} head" if name in shipped else Path(path).stem
