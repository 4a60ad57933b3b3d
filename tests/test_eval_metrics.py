"""The paper's response metrics on hand-made texts with known values."""
import math

import pytest
import torch

from args_engine.eval.metrics import clean_response, coherence, diversity, ngrams


def test_clean_response_cuts_at_next_human_turn():
    assert clean_response(" Sure, here it is.\n\nHuman: thanks\n\nAssistant: ok") == "Sure, here it is."
    assert clean_response("No next turn here.  ") == "No next turn here."
    assert clean_response("Human: straight away") == ""
    assert clean_response("a Human: b", markers=("b",)) == "a Human:"


def test_ngrams():
    assert ngrams("a b c".split(), 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []


def test_diversity_known_values():
    # 5 distinct words: 4 bigrams, 3 trigrams, 2 four-grams, all unique -> 4/5 * 3/4 * 2/3 = 2/5
    assert diversity("the cat sat on mats") == pytest.approx(0.4)
    # "a a a a a": 1 unique of 4 bigrams, 1 of 3 trigrams, 1 of 2 four-grams -> 1/5 * 1/4 * 1/3
    assert diversity("a a a a a") == pytest.approx(1 / 60)
    # "a b a b a b": bigrams ab ba (2 of 5), trigrams aba bab (2 of 4), four-grams abab baba (2 of 3)
    assert diversity("a b a b a b") == pytest.approx(2 / 6 * 2 / 5 * 2 / 4)
    # whitespace words only: punctuation stays attached, newlines split
    assert diversity("x y\nz w") == diversity("x y z w") == pytest.approx(3 / 4 * 2 / 3 * 1 / 2)
    # fewer than 4 words: no 4-gram, so 0 (the definition, not an error)
    assert diversity("too short") == 0.0 and diversity("") == 0.0


class _Fixed:
    def __init__(self, table):
        self.table = table

    def encode(self, texts):
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float32)


def test_coherence_is_cosine_of_embeddings():
    enc = _Fixed({"p": [1.0, 0.0], "same": [2.0, 0.0], "orth": [0.0, 3.0], "diag": [1.0, 1.0]})
    assert coherence(enc, ["p", "p", "p"], ["same", "orth", "diag"]) == pytest.approx([1.0, 0.0, 1 / math.sqrt(2)])
    assert coherence(enc, [], []) == []
    with pytest.raises(ValueError):
        coherence(enc, ["p"], [])
