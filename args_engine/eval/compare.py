"""Per-method summary statistics and the judge's win-tie rule against greedy.

Win-tie rule (per prompt, method response m vs greedy response g, judge rewards J):
  tie  if the cleaned texts are identical, or |J(m) - J(g)| < TIE_EPS;
  win  if J(m) - J(g) >= TIE_EPS;   loss otherwise.
win_tie_vs_greedy = (wins + ties) / prompts. The judge's rewards are scaled to unit SD over its training
dialogues, so TIE_EPS = 0.02 is 2% of that SD: a difference the judge cannot meaningfully resolve.
"""
from __future__ import annotations

import statistics

TIE_EPS = 0.02
WIN_TIE_RULE = (f"tie if the cleaned responses are identical or |judge(method) - judge(greedy)| < {TIE_EPS} "
                f"(judge rewards have unit SD over its training dialogues); win if the difference is >= {TIE_EPS}; "
                "win_tie = (wins + ties) / prompts")


def outcome(text: str, judge: float, greedy_text: str, greedy_judge: float, eps: float = TIE_EPS) -> str:
    if text == greedy_text or abs(judge - greedy_judge) < eps:
        return "tie"
    return "win" if judge - greedy_judge >= eps else "loss"


def mean(xs) -> float:
    return float(statistics.fmean(xs)) if xs else float("nan")


def sd(xs) -> float:
    return float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def summarize(rows: list[dict], run, greedy_rows: list[dict] | None) -> dict:
    """rows: per-prompt dicts with text, reward, judge_reward, diversity, coherence. Adds `vs_greedy` to rows."""
    rewards = [r["reward"] for r in rows]
    out = {"avg_reward": mean(rewards), "reward_sd": sd(rewards),
           "judge_avg_reward": mean([r["judge_reward"] for r in rows]),
           "diversity": mean([r["diversity"] for r in rows]), "coherence": mean([r["coherence"] for r in rows]),
           "avg_response_words": mean([len(r["text"].split()) for r in rows]),
           "tokens_per_s": sum(run.n_tokens) / max(run.seconds, 1e-9), "seconds": run.seconds,
           "response_tokens": sum(run.n_tokens), "lm_tokens_generated": run.lm_tokens, "rm_calls": run.rm_calls,
           "rm_calls_per_token": run.rm_calls / max(sum(run.n_tokens), 1)}
    if greedy_rows is not None:
        counts = {"win": 0, "tie": 0, "loss": 0}
        for r, g in zip(rows, greedy_rows):
            r["vs_greedy"] = outcome(r["text"], r["judge_reward"], g["text"], g["judge_reward"])
            counts[r["vs_greedy"]] += 1
        n = max(len(rows), 1)
        g_rewards = [g["reward"] for g in greedy_rows]
        out.update(win_tie_vs_greedy=(counts["win"] + counts["tie"]) / n, win_vs_greedy=counts["win"] / n,
                   tie_vs_greedy=counts["tie"] / n, loss_vs_greedy=counts["loss"] / n,
                   reward_gain_in_greedy_sd=(out["avg_reward"] - mean(g_rewards)) / (sd(g_rewards) or float("nan")))
    return out
