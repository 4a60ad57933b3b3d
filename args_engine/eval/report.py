"""results.md: a table like the paper's, plus the settings that produced it."""
from __future__ import annotations

import math


def _f(x, fmt="{:.3f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _data_line(data: dict | None) -> list[str]:
    if not data:
        return []
    which = "the reference file" if data.get("reference") else "NOT the reference file: splits and figures differ"
    return [f"Data: `{data['file']}`, {data['pairs']} pairs, sha256 `{data['sha256'][:16]}...` ({which}).", ""]


def _scorer(cfg: dict) -> str:
    return f", responses scored by `{cfg['score_rm']}`" if cfg.get("score_rm") else ""


def markdown(results: dict) -> str:
    cfg, judge = results["config"], results["judge"]
    lines = [
        "# ARGS evaluation", "",
        f"{cfg['n_prompts']} prompts ({cfg['prompts']}), up to {cfg['max_new_tokens']} new tokens; "
        f"LM `{cfg['lm']}`, decoding RM `{cfg['rm']}`{_scorer(cfg)}; device {cfg['device']} ({cfg['dtype']}), "
        f"batch size {cfg['batch_size']}, ARGS backend `{cfg['args_backend']}`.", "",
        f"Judge: {judge['encoder']} features ({judge['features']}) + a Bradley-Terry linear head trained on the "
        f"default RM's train split; pairwise accuracy on the validation split "
        f"{_f(judge['validation_accuracy'], '{:.1%}')}.", "", *_data_line(cfg.get("data")),
        "| method | avg reward | reward sd | gain (greedy sds) | win-tie vs greedy (judge) | diversity (%) | "
        "coherence | tok/s | RM calls / token |",
        "|---|---|---|---|---|---|---|---|---|"]
    for label, m in results["methods"].items():
        lines.append(f"| {label} | {_f(m['avg_reward'])} | {_f(m['reward_sd'])} | "
                     f"{_f(m.get('reward_gain_in_greedy_sd'), '{:+.2f}')} | "
                     f"{_f(m.get('win_tie_vs_greedy'), '{:.1%}')} | {_f(100 * m['diversity'], '{:.2f}')} | "
                     f"{_f(m['coherence'])} | {_f(m['tokens_per_s'], '{:.2f}')} | "
                     f"{_f(m['rm_calls_per_token'], '{:.2f}')} |")
    lines += ["", f"Win-tie rule: {results['win_tie_rule']}.", "",
              "Rewards are of the cleaned response (cut at the next \"Human:\" turn) under the "
              f"{'decoding RM' if not cfg.get('score_rm') else 'scoring RM'}, in "
              "units of its reward SD over the RM's training dialogues. Diversity: product over n = 2..4 of "
              "|unique n-grams| / (|n-grams| + 1) on whitespace words, per response, averaged, shown x100. "
              "Coherence: cosine of all-MiniLM-L6-v2 embeddings of prompt and response. tok/s: response tokens "
              "per second of the method's own wall time (best-of-N includes its N samples and their scoring). "
              "RM calls: scorings made by the method (ARGS: k per token; best-of-N: N per prompt).", ""]
    return "\n".join(lines)
