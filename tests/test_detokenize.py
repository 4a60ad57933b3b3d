"""IncrementalText: token by token it builds exactly the full decode, never ends in half a character, and
decodes short windows only (not the whole response again)."""
import random

import pytest

from args_engine.decoding.detokenize import IncrementalText
from tiny_models import char_tokenizer

TEXTS = ["Hello there, how are you today?\n\nI'm fine.", "  leading spaces and\ttabs ", "Ünïcödé: naïve café, 東京, 🙂👍🏽!",
         "code: `x = [i**2 for i in range(10)]`", "a" * 300]


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call read."""

    def __init__(self, tok):
        self.tok, self.window_sizes = tok, []

    def decode(self, ids, **kw):
        self.window_sizes.append(len(ids))
        return self.tok.decode(ids, **kw)


def stream(tok, ids):
    inc = IncrementalText(tok)
    pieces = []
    for i, t in enumerate(ids):
        pieces.append(inc.append(t))
        so_far = tok.decode(ids[:i + 1], skip_special_tokens=True)
        assert so_far.startswith(inc.text) and not inc.text.endswith("\ufffd")
    pieces.append(inc.flush())
    assert "".join(pieces) == inc.text
    return inc.text


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from args_engine.models.defaults import default_lm_dir
    return AutoTokenizer.from_pretrained(default_lm_dir())


@pytest.mark.parametrize("text", TEXTS)
def test_char_tokenizer(text):
    tok = char_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    assert stream(tok, ids) == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_default_lm_tokenizer(smol_tokenizer, text):
    ids = smol_tokenizer.encode(text, add_special_tokens=False)
    assert stream(smol_tokenizer, ids) == smol_tokenizer.decode(ids, skip_special_tokens=True)
    # A special token in the middle (EOS, a chat marker) decodes to nothing and delays nothing after it.
    ids = ids[:5] + [smol_tokenizer.eos_token_id] + ids[5:]
    assert stream(smol_tokenizer, ids) == smol_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_default_lm_tokenizer_random_ids(smol_tokenizer):
    # Random ids include byte-level pieces that split characters; the text must still match a full decode.
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(smol_tokenizer)) for _ in range(60)]
        assert stream(smol_tokenizer, ids) == smol_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_windows_stay_short(smol_tokenizer):
    ids = smol_tokenizer.encode(" ".join(TEXTS) * 4, add_special_tokens=False)
    counting = CountingTokenizer(smol_tokenizer)
    inc = IncrementalText(counting)
    for t in ids:
        inc.append(t)
    inc.flush()
    assert inc.text == smol_tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) > 400 and max(counting.window_sizes) <= 8  # a full re-decode would read all of them


@pytest.mark.slow
def test_genuine_replacement_characters_do_not_stall(smol_tokenizer):
    from args_engine.decoding.detokenize import MAX_PENDING_TOKENS

    ids = smol_tokenizer.encode("x \ufffd\ufffd\ufffd\ufffd\ufffd\ufffd y \ufffd", add_special_tokens=False)
    inc = IncrementalText(smol_tokenizer)
    for t in ids:
        inc.append(t)
        assert len(inc.ids) - inc._read < MAX_PENDING_TOKENS  # held back at most a character's worth
    assert inc.text + inc.flush() == smol_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_stop_string_right_before_an_incomplete_character(smol_tokenizer):
    # A token that decodes to " " plus the first byte of a multi-byte character: the text before it is held back
    # until the character completes, but a stop string ending in its space must still end the response there.
    from args_engine.engine.request import Request, append_token
    from args_engine.params import ARGSParams

    split = next(i for i in range(len(smol_tokenizer)) if smol_tokenizer.decode([i]).startswith(" ")
                 and smol_tokenizer.decode([i]).endswith("\ufffd") and len(smol_tokenizer.decode([i])) == 2)
    ids = smol_tokenizer.encode("Answer: x", add_special_tokens=False) + [split]
    req = Request([1], ARGSParams(stop=["x "], max_new_tokens=len(ids)), max_len=1000)
    for t in ids:
        append_token(req, t, 0.0, smol_tokenizer, set())
    assert (req.finish_reason, req.text) == ("stop", "Answer: ")
