"""HH-RLHF preference pairs: parsing, chat rendering and the fixed, disjoint splits.

The split definition lives here and only here: the default RM and the judge train on `train`, report
accuracy on `validation`, and decoding is evaluated on `evaluation`. `assert_disjoint_from_training`
guards any evaluation prompt set against pairs that trained a reward model.
"""
from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SPLIT_SEED = 20240101
SPLIT_SIZES = {"evaluation": 300, "validation": 300}  # train = the rest (1,412 of the 2,012 pairs here)
_TURN = re.compile(r"\n\n(Human|Assistant):")


def default_data_path() -> Path:
    """../shared/data/hh-rlhf/harmless-base.jsonl.gz beside the checkout (read in place, never copied)."""
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        cand = parent.parent / "shared" / "data" / "hh-rlhf" / "harmless-base.jsonl.gz"
        if cand.exists():
            return cand
    raise FileNotFoundError("HH-RLHF data not found: expected ../shared/data/hh-rlhf/harmless-base.jsonl.gz "
                            "beside the project checkout")


@dataclass(frozen=True)
class PreferencePair:
    chosen: str
    rejected: str


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a .jsonl or .jsonl.gz file (gzip is told by its magic
    bytes, not the name). A line that is not a JSON object raises ValueError naming the file and line."""
    path = Path(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8") as f:
        n = 0
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: a row must be a JSON object, got {type(row).__name__}")
                yield n, row
        except (UnicodeDecodeError, OSError, EOFError) as e:  # binary data, a truncated or corrupt gzip
            raise ValueError(f"{path}:{n + 1}: cannot read as UTF-8 JSONL{' (gzip)' if gzipped else ''}: {e}") from None


def load_pairs(path: str | Path | None = None) -> list[PreferencePair]:
    path = Path(path) if path else default_data_path()
    pairs = []
    for n, row in read_jsonl(path):
        if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
            raise ValueError(f"{path}:{n}: a preference pair needs string 'chosen' and 'rejected' fields")
        pairs.append(PreferencePair(row["chosen"], row["rejected"]))
    return pairs


def split_pairs(pairs: list[PreferencePair], seed: int = SPLIT_SEED) -> dict[str, list[PreferencePair]]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval, n_val = SPLIT_SIZES["evaluation"], SPLIT_SIZES["validation"]
    if len(pairs) < n_eval + n_val + 1:
        raise ValueError(f"need more than {n_eval + n_val} pairs to split, got {len(pairs)}")
    pick = lambda idx: [pairs[i] for i in idx]
    return {"evaluation": pick(order[:n_eval]),
            "validation": pick(order[n_eval:n_eval + n_val]),
            "train": pick(order[n_eval + n_val:])}


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{'role': 'user', 'content': 'a'}, {'role': 'assistant', ...}]."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"dialogue does not start with a Human/Assistant turn: {text[:60]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]


def split_last_reply(text: str) -> tuple[list[dict[str, str]], str]:
    """The dialogue before the last assistant reply (the prompt) and that reply."""
    messages = parse_dialogue(text)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("dialogue does not end with an assistant reply")
    return messages[:-1], messages[-1]["content"]


def prompt_key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True)


def training_prompt_keys(path: str | Path | None = None) -> set[str]:
    """Prompts (dialogue before the last reply) of every pair a reward model may train or validate on."""
    splits = split_pairs(load_pairs(path))
    return {prompt_key(split_last_reply(p.chosen)[0]) for name in ("train", "validation") for p in splits[name]}


def assert_disjoint_from_training(prompts: list[list[dict[str, str]]], path: str | Path | None = None) -> None:
    seen = training_prompt_keys(path)
    overlap = sum(prompt_key(m) in seen for m in prompts)
    if overlap:
        raise ValueError(f"{overlap} evaluation prompt(s) appear in the reward model's training/validation pairs")
