"""Evaluation prompts: both JSONL formats, the default set, and the guard against RM/judge training pairs."""
import json

import pytest

from args_engine.eval.prompts import as_messages, check_prompts, default_prompts, hh_text, load_prompts_file
from args_engine.reward.data import load_pairs, split_last_reply, split_pairs


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_prompt_and_hh_formats(tmp_path):
    f = _write(tmp_path / "p.jsonl", [
        {"prompt": "How do I bake bread?"},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Recipe?\n\nAssistant: Flour.", "rejected": "x"},
        {"prompt": [{"role": "user", "content": "Q", "extra": 1}]}])
    p = load_prompts_file(f)
    assert p[0] == [{"role": "user", "content": "How do I bake bread?"}]
    assert p[1] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Recipe?"}]
    assert p[2] == [{"role": "user", "content": "Q"}]
    assert hh_text(p[1]) == "Human: Hi\n\nAssistant: Hello!\n\nHuman: Recipe?\n\nAssistant:"
    assert hh_text(p[0], "Knead.") == "Human: How do I bake bread?\n\nAssistant: Knead."


def test_jsonl_errors_name_the_line(tmp_path):
    with pytest.raises(ValueError, match=r"p.jsonl:2: a row needs a 'prompt'"):
        load_prompts_file(_write(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"text": "no"}]))
    with pytest.raises(ValueError, match="empty prompt"):
        load_prompts_file(_write(tmp_path / "q.jsonl", [{"prompt": "  "}]))
    with pytest.raises(ValueError):
        as_messages(42)


def test_default_set_is_the_evaluation_split_and_the_guard_raises_on_training_pairs(hh_data):
    splits = split_pairs(load_pairs(hh_data))
    prompts = default_prompts()
    assert prompts == [split_last_reply(p.chosen)[0] for p in splits["evaluation"]]
    check_prompts(prompts[:5])  # disjoint: no error
    for name in ("train", "validation"):  # the judge and the default RM trained / validated on these
        leaked = prompts[:3] + [split_last_reply(splits[name][7].chosen)[0]]
        with pytest.raises(ValueError, match="1 evaluation prompt"):
            check_prompts(leaked)


def test_guard_covers_single_turn_prompt_strings(tmp_path, hh_data):
    splits = split_pairs(load_pairs(hh_data))
    single = next(m for m in (split_last_reply(p.chosen)[0] for p in splits["train"]) if len(m) == 1)
    f = _write(tmp_path / "p.jsonl", [{"prompt": single[0]["content"]}])
    with pytest.raises(ValueError, match="appear in the reward model's training"):
        check_prompts(load_prompts_file(f))
