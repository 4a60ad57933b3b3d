"""Shared by the benchmarks: long prompts from evaluation-split dialogues, timing, the machine's name."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from args_engine.chat import render_prompt
from args_engine.reward.data import load_pairs, parse_dialogue, split_pairs


def long_prompt(tokenizer, n_tokens: int) -> list[int]:
    """Turns of evaluation-split dialogues, gathered until the chat-rendered prompt reaches n_tokens."""
    messages: list[dict] = []
    for pair in split_pairs(load_pairs())["evaluation"]:
        for m in parse_dialogue(pair.chosen):
            if messages and messages[-1]["role"] == m["role"]:
                continue
            messages.append(m)
            if m["role"] == "user" and len(render_prompt(tokenizer, messages)) >= n_tokens:
                return render_prompt(tokenizer, messages)
    raise RuntimeError("not enough evaluation dialogue text")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-")
    return f"cpu-{torch.get_num_threads()}threads-{platform.machine()}"


def write_result(result: dict, name: str, out: str | None = None) -> Path:
    """Write a benchmark's JSON to `out`, or to benchmarks/results/<name>_<machine>.json; print the path."""
    path = Path(out) if out else Path(__file__).parent / "results" / f"{name}_{result['machine']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def bar_chart(path: Path, labels: list[str], values: list[float], ylabel: str, title: str,
              color="#4C72B0") -> None:
    """One bar per label, saved as a PNG at `path` (matplotlib, headless)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(labels, values, color=color)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
