"""The engine's core request types: a request's state while it decodes (Request), how a chosen token is recorded
and a stop detected (append_token), and what the caller gets back (GenerationOutput). Every decoder, the native
engine and the reference ones alike, works on these."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..decoding.detokenize import IncrementalText
from ..params import ARGSParams


@dataclass
class GenerationOutput:
    """One prompt's result. `rewards[i]` is the RM score of the sequence after step i's chosen token.

    When a stop string ends the response, `text` stops before it while `token_ids` and `rewards` run through
    the token that completed it (as in vLLM); an EOS token is kept in `token_ids` but not in `text`."""

    prompt: object
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    rewards: list[float]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    tokens_per_s: float = 0.0  # throughput of the batch this output was decoded in
    rm_tokens: int = 0  # tokens the RM read to choose this response's tokens (k per ARGS step, 1 per gated step)
    logprobs: list[float] | None = None  # with params.logprobs: the LM's log p of each token
    top_logprobs: list[list[tuple[int, float]]] | None = None  # and the params.logprobs likeliest at each step
    # with params.prompt_logprobs: the LM's log p of each prompt token (None for the first), and its alternatives
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None

    @property
    def reward(self) -> float | None:
        return self.rewards[-1] if self.rewards else None


@dataclass
class Request:
    prompt_ids: list[int]
    params: ARGSParams
    max_len: int  # context limit: prompt + response never exceed it
    out_ids: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None  # set when a stop string ended the response: the text before it
    noise_seed: int | None = None  # stochastic rows: the seed their Gumbel noise is derived from (noise_generator)
    detok: IncrementalText | None = None  # the response's text so far (with a tokenizer)
    rm_tokens: int = 0  # k per ARGS step, 1 per gated step
    rm_prefix: str | None = None  # bridged RMs: the prompt as the RM reads it (decoding/bridge.py)
    # a bridged RM on a paged pool: its tokens of rm_prefix + the response so far (the engine keeps them)
    rm_text_ids: list[int] | None = None
    logprobs: list[float] = field(default_factory=list)  # with params.logprobs (native backend)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None  # with params.prompt_logprobs, once the prompt is read
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None

    def __post_init__(self):
        if self.params.mode == "stochastic" and self.noise_seed is None:
            self.noise_seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def append_token(req: Request, token: int, reward: float, tokenizer, eos_ids: set[int]) -> None:
    """Record a chosen token and set finish_reason when a stop condition is met."""
    req.out_ids.append(token)
    req.rewards.append(reward)
    seen = 0
    if tokenizer is not None:
        if req.detok is None:
            req.detok = IncrementalText(tokenizer)
        seen = len(req.detok.text)
        req.detok.append(token)
    stop = req.params.stop
    if not req.params.ignore_eos and token in eos_ids:
        req.finish_reason = "stop"
    elif stop and tokenizer is not None:
        # The text before `seen` held no stop string, so a new one ends in the new text: search only the tail,
        # including text held back with an incomplete character (a stop string may end just before it).
        text, start = req.detok.text + req.detok.pending, max(0, seen - max(map(len, stop)) + 1)
        hits = [i for i in (text.find(s, start) for s in stop) if i >= 0]
        if hits:
            req.finish_reason, req.text = "stop", text[:min(hits)]
    if not req.finished and (len(req.out_ids) >= req.params.max_new_tokens
                             or len(req.prompt_ids) + len(req.out_ids) >= req.max_len):
        req.finish_reason = "length"


def finish_output(req: Request, prompt, tokenizer) -> GenerationOutput:
    text = req.text
    if text is None:
        text = tokenizer.decode(req.out_ids, skip_special_tokens=True) if tokenizer is not None else ""
    out = GenerationOutput(prompt, req.prompt_ids, list(req.out_ids), text, list(req.rewards), req.finish_reason,
                           rm_tokens=req.rm_tokens)
    if req.params.logprobs is not None:
        out.logprobs, out.top_logprobs = list(req.logprobs), list(req.top_logprobs)
    out.prompt_logprobs, out.prompt_top_logprobs = req.prompt_logprobs, req.prompt_top_logprobs
    return out
