"""HH-RLHF splits are fixed and disjoint; rendering for the RM matches rendering for decoding."""
import pytest

from args_engine.chat import render_dialogue, render_prompt
from args_engine.reward.data import (SPLIT_SIZES, assert_disjoint_from_training, load_pairs, parse_dialogue,
                                     split_last_reply, split_pairs)
from tiny_models import char_tokenizer

DIALOGUE = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks."


def test_parse_dialogue():
    msgs = parse_dialogue(DIALOGUE)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    prompt, reply = split_last_reply(DIALOGUE)
    assert reply == "Fine, thanks." and prompt[-1] == {"role": "user", "content": "How are you?"}
    with pytest.raises(ValueError):
        split_last_reply("\n\nHuman: only a question")


def test_render_dialogue_extends_the_decoding_prompt():
    tok = char_tokenizer()
    prompt, reply = split_last_reply(DIALOGUE)
    ids = render_dialogue(tok, prompt, reply)
    head = render_prompt(tok, prompt)
    assert ids[:len(head)] == head and tok.decode(ids[len(head):]) == reply


def test_splits_fixed_disjoint_and_guarded(hh_data):
    pairs = load_pairs(hh_data)
    a, b = split_pairs(pairs), split_pairs(pairs)
    assert a == b
    assert len(a["evaluation"]) == SPLIT_SIZES["evaluation"] and len(a["validation"]) == SPLIT_SIZES["validation"]
    assert sum(map(len, a.values())) == len(pairs)
    texts = {name: {p.chosen for p in ps} for name, ps in a.items()}
    assert not (texts["train"] & texts["evaluation"]) and not (texts["validation"] & texts["evaluation"])
    with pytest.raises(ValueError, match="1 evaluation prompt"):
        assert_disjoint_from_training([split_last_reply(a["train"][0].chosen)[0]])
    # the shipped evaluation split shares no prompt with the pairs reward models train or validate on
    assert_disjoint_from_training([split_last_reply(p.chosen)[0] for p in a["evaluation"]])
