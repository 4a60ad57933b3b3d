"""Evaluation prompts: a JSONL file, or the default set from the HH-RLHF evaluation split.

Every prompt is a chat message list ending with a user turn (a plain "prompt" string becomes one user turn).
Whatever its source, a prompt set is checked against the pairs the default RM and the judge trained or
validated on (`assert_disjoint_from_training`), and refused on any overlap.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..reward.data import assert_disjoint_from_training, load_pairs, read_jsonl, split_last_reply, split_pairs

Messages = list[dict[str, str]]


def as_messages(prompt) -> Messages:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("empty prompt")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                   for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise ValueError(f"a prompt is a string or a list of {{role, content}} messages, got {prompt!r:.80}")


def read_prompts_file(path: str | Path) -> list[str | Messages]:
    """The prompts of a .jsonl or .jsonl.gz file, as written: rows with "prompt" (a string or a message list)
    or HH-RLHF rows with "chosen" (the dialogue up to its last "Assistant:" becomes a message list). A bad row
    raises ValueError naming the file and line."""
    prompts = []
    for n, row in read_jsonl(path):
        try:
            if "prompt" in row:
                as_messages(row["prompt"])  # validates: a non-empty string or a message list
                prompts.append(row["prompt"])
            elif isinstance(row.get("chosen"), str):
                prompts.append(split_last_reply(row["chosen"])[0])
            else:
                raise ValueError("a row needs a 'prompt' (or HH-RLHF 'chosen') field")
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def load_prompts_file(path: str | Path) -> list[Messages]:
    """read_prompts_file, every prompt as a message list (a string becomes one user turn)."""
    return [as_messages(p) for p in read_prompts_file(path)]


def default_prompts(data_path: str | Path | None = None) -> list[Messages]:
    """The evaluation split of ../shared/data/hh-rlhf (300 prompts, fixed order): it trained neither the
    default RM nor the judge. `--limit N` takes the first N."""
    prompts = [split_last_reply(p.chosen)[0] for p in split_pairs(load_pairs(data_path))["evaluation"]]
    assert_disjoint_from_training(prompts, data_path)
    return prompts


def check_prompts(prompts: list[Messages], data_path: str | Path | None = None, required: bool = True) -> None:
    """Raise ValueError if any prompt occurs in the RM/judge training or validation pairs. Without the HH data
    (a machine lacking ../shared/data) the check cannot run: raise if `required`, else warn."""
    try:
        assert_disjoint_from_training(prompts, data_path)
    except FileNotFoundError:
        if required:
            raise
        warnings.warn("HH-RLHF data not found: cannot check the prompts against the reward models' training "
                      "pairs")


def hh_text(messages: Messages, reply: str | None = None) -> str:
    """Render as HH-RLHF text: "Human: ...\\n\\nAssistant: ..." turns; with `reply`, the assistant's answer
    follows the last "Assistant:"; without, the text ends at that cue."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = [f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    turns.append("Assistant:" if reply is None else f"Assistant: {reply}")
    return "\n\n".join(turns)
