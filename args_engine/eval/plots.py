"""The paper's figure (average reward, diversity and coherence against w) and a bar chart of the table."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_vs_w(results: dict, path: str | Path) -> bool:
    """ARGS-greedy methods by w, with greedy as w = 0 (ARGS with w = 0 is greedy). False when there is no
    ARGS-greedy method to plot."""
    methods = results["methods"]
    points = sorted((m["params"]["w"], m) for m in methods.values() if m["params"]["kind"] == "args-greedy")
    if not points:
        return False
    if "greedy" in methods:
        points = [(0.0, methods["greedy"])] + points
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    ws = [w for w, _ in points]
    for ax, key, title, scale in ((axes[0], "avg_reward", "average reward", 1), (axes[1], "diversity",
                                  "diversity (%)", 100), (axes[2], "coherence", "coherence", 1)):
        ax.plot(ws, [m[key] * scale for _, m in points], "o-")
        ax.set_xlabel("w (ARGS-greedy; w = 0 is greedy)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"ARGS-greedy vs w ({results['config']['n_prompts']} prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_bars(results: dict, path: str | Path) -> None:
    methods = results["methods"]
    labels = list(methods)
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, key, title, scale in ((axes[0], "avg_reward", "average reward", 1),
                                  (axes[1], "win_tie_vs_greedy", "judge win-tie vs greedy (%)", 100),
                                  (axes[2], "diversity", "diversity (%)", 100), (axes[3], "coherence", "coherence", 1)):
        vals = [(methods[l].get(key) or 0.0) * scale for l in labels]
        ax.bar(range(len(labels)), vals, color="tab:blue")
        if key == "avg_reward":
            ax.errorbar(range(len(labels)), vals, yerr=[methods[l]["reward_sd"] for l in labels], fmt="none",
                        ecolor="k", capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
