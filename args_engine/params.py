from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's chat API allows


@dataclass
class ARGSParams:
    """Decoding settings of one request.

    k: candidates per step (top-k of the LM). w: reward weight; a step picks argmax of log p + w * r
    (mode="greedy") or samples from softmax((log p + w * r) / temperature) over the k candidates
    (mode="stochastic"). k = 1 or w = 0 is plain greedy decoding. seed makes stochastic mode reproducible
    whatever else is in the batch. stop: strings that end the response (not included in the text).
    logprobs (native backend): None, or N in [0, 20]: record the LM's log p of each chosen token and of the
    N most likely tokens at that step (the LM's own distribution, before the reward).
    """

    k: int = 10
    w: float = 1.0
    mode: str = "greedy"
    temperature: float = 0.7
    max_new_tokens: int = 128
    seed: int | None = 0
    stop: list[str] | None = field(default=None)
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self, vocab_size: int | None = None) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if vocab_size is not None and self.k > vocab_size:
            raise ValueError(f"k={self.k} exceeds the vocabulary size {vocab_size}")
        if not isinstance(self.w, (int, float)) or not math.isfinite(self.w):
            raise ValueError(f"w must be a finite number, got {self.w!r}")
        if self.mode not in ("greedy", "stochastic"):
            raise ValueError(f"mode must be 'greedy' or 'stochastic', got {self.mode!r}")
        if self.mode == "stochastic" and not (isinstance(self.temperature, (int, float))
                                               and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 in stochastic mode, got {self.temperature!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 2 ** 63):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {self.seed!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if self.stop is not None and not (isinstance(self.stop, (list, tuple))
                                          and all(isinstance(s, str) and s for s in self.stop)):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
