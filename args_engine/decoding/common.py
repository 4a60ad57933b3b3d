"""What both decoders share: request state, candidate scoring and selection, stop conditions."""
from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch

from ..kernels.refs import args_choose, args_scores, log_probs_ref
from ..kernels.refs import topk_logprobs_ref as topk_logprobs  # noqa: F401  (the one torch top-k, re-exported)
from ..params import ARGSParams
from .detokenize import IncrementalText


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


def gated(params: list[ARGSParams], top_logp: list[float]) -> list[bool]:
    """Per row: does the gate take the LM's top token without RM scoring? top_logp: its log p (controlled)."""
    return [p.gate is not None and lp >= math.log(p.gate) for p, lp in zip(params, top_logp)]


def as_gated(params: ARGSParams) -> ARGSParams:
    """A gated step's settings: the top token alone, chosen greedily (no noise)."""
    return dataclasses.replace(params, k=1, mode="greedy")


_MASK64 = (1 << 64) - 1


def noise_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of a stochastic row's noise at response position `step`: seeded by a SplitMix64 mix of
    the request's seed and the position, so the noise is a pure function of the two. A retried step (after a
    failure), a preempted and recomputed row, or the same request in another batch or on another device draws
    exactly the same values; nothing is consumed ahead of a step that may not happen."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return torch.Generator().manual_seed(z ^ (z >> 31))


def gumbel_noise(params: list[ARGSParams], reqs: list[Request], kmax: int) -> torch.Tensor | None:
    """Gumbel noise [B, kmax] float64 for the stochastic rows (zeros elsewhere), or None when all rows are greedy.
    Row b draws its k values for its next response position from noise_generator, so a choice depends on neither
    the batch, the device, nor how often the step was tried."""
    if all(p.mode != "stochastic" for p in params):
        return None
    gumbel = torch.zeros(len(params), kmax, dtype=torch.float64)
    for b, (p, req) in enumerate(zip(params, reqs)):
        if p.mode == "stochastic":
            u = torch.rand(p.k, generator=noise_generator(req.noise_seed, len(req.out_ids)), dtype=torch.float64)
            gumbel[b, :p.k] = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return gumbel


def selection_arrays(params: list[ARGSParams], reqs: list[Request], kmax: int) -> dict[str, np.ndarray]:
    """The per-row host arrays of ARGS selection: k [B] int32, w and temperature [B] float64 (0: greedy), and
    gumbel [B, kmax] float64 when a row is stochastic. w stays float64: each path casts it to its accumulation
    dtype, so all paths score alike."""
    out = dict(k=np.array([p.k for p in params], dtype=np.int32),
               w=np.array([p.w for p in params], dtype=np.float64),
               temp=np.array([p.temperature if p.mode == "stochastic" else 0.0 for p in params], dtype=np.float64))
    gumbel = gumbel_noise(params, reqs, kmax)
    if gumbel is not None:
        out["gumbel"] = gumbel.numpy()
    return out


def selection_inputs(params: list[ARGSParams], reqs: list[Request], kmax: int, device):
    """selection_arrays as tensors on `device`: (k, w, temperature, gumbel or None)."""
    a = selection_arrays(params, reqs, kmax)
    k, w, temp = (torch.from_numpy(a[n]).to(device) for n in ("k", "w", "temp"))
    return k, w, temp, torch.from_numpy(a["gumbel"]).to(device) if "gumbel" in a else None


def select_candidates(logp: torch.Tensor, rewards: torch.Tensor, reqs: list[Request],
                      gate: list[bool] | None = None) -> torch.Tensor:
    """Pick one candidate per row. logp, rewards [B, kmax] (rows with k < kmax ignore the tail) -> [B]. Rows
    the gate took pick their top candidate (and count 1 RM token, the others k)."""
    gate = gate or [False] * len(reqs)
    params = [as_gated(r.params) if g else r.params for r, g in zip(reqs, gate)]
    for r, p in zip(reqs, params):
        r.rm_tokens += p.k
    k, w, temp, gumbel = selection_inputs(params, reqs, logp.shape[1], logp.device)
    return args_choose(args_scores(logp, rewards, k, w), temp, gumbel)


def logprob_columns(logits: torch.Tensor, tokens: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The LM's own (uncontrolled) log p of the chosen tokens [B, 1], and its n likeliest tokens' ids and log p
    [B, n] each, most likely first, as float64 columns for the step's one read. One log_softmax for both."""
    logp = log_probs_ref(logits)  # [B, V]
    chosen = logp.gather(1, tokens.view(-1, 1))  # [B, 1]
    top_lp, top_ids = topk_logprobs(logits, n, logp=logp)  # [B, n], ties by the lower id as the candidates
    return [chosen.double(), top_ids.double(), top_lp.double()]


def logprob_lists(rows: list[list[float]], n: int, width: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Host rows of logprob_columns (log p, `width` ids, `width` log p) -> (log p per row, its n likeliest as
    [(id, log p)] per row)."""
    return ([r[0] for r in rows],
            [list(zip(map(int, r[1:1 + n]), r[1 + width:1 + width + n])) for r in rows])


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
