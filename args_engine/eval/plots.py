"""The paper's figure (average reward, diversity and coherence against w) and a bar chart of the table."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _variant(params: dict) -> str:
    """An ARGS-greedy method's settings besides w: its logit controls and gate (k when not 10), '' when none."""
    skip = {"kind", "w", "T", "n", "seed"}
    return ", ".join(f"{k}={v:g}" for k, v in params.items() if k not in skip and v is not None
                     and not (k == "k" and v == 10))


def plot_vs_w(results: dict, path: str | Path) -> bool:
    """ARGS-greedy methods by w, one line per variant (no controls; each control or gate setting), with greedy
    as w = 0 on the plain line (ARGS with w = 0 is greedy). False when there is no ARGS-greedy method."""
    methods = results["methods"]
    lines: dict[str, list] = {}
    for m in methods.values():
        if m["params"]["kind"] == "args-greedy":
            lines.setdefault(_variant(m["params"]), []).append((m["params"]["w"], m))
    if not lines:
        return False
    if "greedy" in methods and "" in lines:
        lines[""].append((0.0, methods["greedy"]))
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title, scale in ((axes[0], "avg_reward", "average reward", 1), (axes[1], "diversity",
                                  "diversity (%)", 100), (axes[2], "coherence", "coherence", 1)):
        for variant, points in sorted(lines.items()):
            points.sort(key=lambda p: p[0])
            ax.plot([w for w, _ in points], [m[key] * scale for _, m in points], "o-", label=variant or "no controls")
        if "greedy" in methods:
            ax.axhline(methods["greedy"][key] * scale, color="grey", ls=":", lw=1)
        ax.set_xlabel("w (ARGS-greedy; w = 0 is greedy)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ARGS-greedy vs w ({results['config']['n_prompts']} prompts; dotted: greedy)")
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
