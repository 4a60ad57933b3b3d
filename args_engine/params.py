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
    N most likely tokens at that step (the LM's own distribution, before the reward and the controls below).
    prompt_logprobs (native backend): None, or N in [0, 20]: the LM's log p of each prompt token given the tokens
    before it (None for the first) and its N likeliest alternatives there, from the prefill the engine runs
    anyway (such a prompt does not reuse the prefix cache: every position is computed). With max_new_tokens 0
    the prompt is scored and nothing is decoded (max_new_tokens 0 needs prompt_logprobs).

    Logit controls, applied to the LM's logits before the k candidates are taken (so log p is the controlled
    distribution's): repetition_penalty (Hugging Face: over prompt and response, a seen token's logit is
    divided by it when positive, multiplied when negative), presence_penalty and frequency_penalty (OpenAI:
    over the response, logit -= frequency * count + presence * (count > 0)), no_repeat_ngram_size (Hugging
    Face: a token that would repeat an n-gram of prompt + response is banned), logit_bias ({token id: bias}
    added to the logits), min_p (tokens below min_p x the top probability are dropped) and top_p (the
    smallest set of likeliest tokens holding top_p of the probability is kept); the last two may leave a step
    fewer than k candidates.

    rm_weights (multi-objective RMs): this request's weights over the RM's outputs (reward = weights . outputs);
    None takes the engine's (--rm-weights / --rm-objective).

    gate (uncertainty-gated ARGS): None, or tau in (0, 1]: at a step where the LM's top token has probability
    >= tau (after the controls), take it without scoring candidates with the RM; the RM only reads that token
    (its cache stays exact). Ungated steps run ARGS as usual.
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
    prompt_logprobs: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] | None = None
    min_p: float = 0.0
    top_p: float = 1.0
    gate: float | None = None
    rm_weights: list[float] | None = None

    @property
    def has_logit_controls(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.no_repeat_ngram_size > 0 or bool(self.logit_bias) or self.min_p > 0.0 or self.top_p < 1.0)

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
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) \
                or self.max_new_tokens < (0 if self.prompt_logprobs is not None else 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1 (0 only with prompt_logprobs: score the prompt, "
                             f"decode nothing), got {self.max_new_tokens!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 2 ** 63):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {self.seed!r}")
        for name in ("logprobs", "prompt_logprobs"):
            n = getattr(self, name)
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_LOGPROBS):
                raise ValueError(f"{name} must be None or an integer in [0, {MAX_LOGPROBS}], got {n!r}")
        self._validate_logit_controls(vocab_size)
        if self.gate is not None and (not isinstance(self.gate, (int, float)) or isinstance(self.gate, bool)
                                      or not 0.0 < self.gate <= 1.0):
            raise ValueError(f"gate must be None or a probability in (0, 1], got {self.gate!r}")
        if self.rm_weights is not None:
            self.rm_weights = check_rm_weights(self.rm_weights)
        if self.stop is not None and not (isinstance(self.stop, (list, tuple))
                                          and all(isinstance(s, str) and s for s in self.stop)):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")

    def _validate_logit_controls(self, vocab_size: int | None) -> None:
        def number(name: str, low: float, high: float, low_open: bool = False) -> None:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                    or not (low < v if low_open else low <= v) or v > high:
                raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low:g}, {high:g}], got {v!r}")

        number("repetition_penalty", 0.0, 100.0, low_open=True)
        number("presence_penalty", -2.0, 2.0)
        number("frequency_penalty", -2.0, 2.0)
        number("min_p", 0.0, 1.0)
        number("top_p", 0.0, 1.0, low_open=True)
        n = self.no_repeat_ngram_size
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"no_repeat_ngram_size must be an integer >= 0, got {n!r}")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(f"logit_bias must be a dict {{token id: bias}}, got {self.logit_bias!r:.80}")
            for t, b in self.logit_bias.items():
                if not isinstance(t, int) or isinstance(t, bool) or t < 0 or \
                        (vocab_size is not None and t >= vocab_size):
                    raise ValueError(f"logit_bias: token id {t!r} is not in [0, {vocab_size or 'vocabulary size'})")
                if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) or abs(b) > 100:
                    raise ValueError(f"logit_bias: bias {b!r} of token {t} must be a number in [-100, 100]")


def check_rm_weights(weights, n: int | None = None) -> list[float]:
    """A list of finite floats (of length n when given), or a ValueError naming the problem."""
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise ValueError(f"rm_weights must be a list of numbers, got {weights!r}")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"rm_weights must be finite numbers, got {w!r}")
        out.append(float(w))
    if not out:
        raise ValueError("rm_weights must not be empty")
    if n is not None and len(out) != n:
        raise ValueError(f"rm_weights has {len(out)} values but the reward model has {n} outputs")
    return out
