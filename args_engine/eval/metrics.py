"""The paper's response metrics: cleaning, diversity and coherence.

- clean_response: the paper cuts a generation at the next "Human:" turn (the LM starting to write the user's
  part); we cut at the first "Human:" and strip whitespace.
- diversity (Su et al.'s contrastive-search metric as the ARGS code computes it, per response):
  prod_{n=2..4} |unique n-grams| / (|n-grams| + 1) over whitespace word tokens; a fraction in [0, 1).
  The paper's tables print it multiplied by 100 (e.g. 24.97), so results.md shows it as a percentage;
  results.json keeps the fraction. A response of fewer than 4 words has diversity 0.
- coherence: cosine similarity of the sentence embeddings of prompt and response (paper: SimCSE; here
  all-MiniLM-L6-v2), per response.
"""
from __future__ import annotations

from typing import Sequence

import torch

CUT_MARKERS = ("Human:",)


def clean_response(text: str, markers: Sequence[str] = CUT_MARKERS) -> str:
    """Cut at the first marker (default "Human:", the start of a next turn) and strip surrounding whitespace."""
    cut = min((i for i in (text.find(m) for m in markers) if i >= 0), default=len(text))
    return text[:cut].strip()


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def diversity(text: str, orders: Sequence[int] = (2, 3, 4)) -> float:
    """prod over n of |unique n-grams| / (|n-grams| + 1), on whitespace word tokens."""
    words = text.split()
    out = 1.0
    for n in orders:
        grams = ngrams(words, n)
        out *= len(set(grams)) / (len(grams) + 1)
    return out


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def coherence(encoder, prompt_texts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Cosine similarity of encoder embeddings of each prompt and its response. `encoder.encode(texts)` -> [N, D]."""
    if len(prompt_texts) != len(responses):
        raise ValueError(f"{len(prompt_texts)} prompts but {len(responses)} responses")
    if not responses:
        return []
    return cosine_rows(encoder.encode(list(prompt_texts)), encoder.encode(list(responses))).tolist()
