"""What both decoders share: request state, candidate scoring and selection, stop conditions."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    text: str | None = None
    generator: torch.Generator | None = None

    def __post_init__(self):
        if self.params.mode == "stochastic":
            self.generator = torch.Generator()
            if self.params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.params.seed)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (log p of the top-k tokens [B, k], their ids [B, k]), highest first."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return torch.topk(logp, k, dim=-1)


def select_candidates(logp: torch.Tensor, rewards: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Pick one candidate per row. logp, rewards [B, kmax] (rows with k < kmax ignore the tail) -> [B]."""
    dtype, device = torch.promote_types(logp.dtype, rewards.dtype), logp.device
    w = torch.tensor([r.params.w for r in reqs], dtype=dtype, device=device)
    scores = logp.to(dtype) + w[:, None] * rewards.to(dtype)  # [B, kmax]
    k = torch.tensor([r.params.k for r in reqs], device=device)
    scores = scores.masked_fill(torch.arange(scores.shape[1], device=device)[None, :] >= k[:, None], float("-inf"))
    choice = scores.argmax(dim=-1)
    for b, req in enumerate(reqs):
        if req.params.mode == "stochastic":
            # Gumbel-max over the request's own k candidates, from its own CPU generator: independent of the
            # batch and of the device.
            u = torch.rand(req.params.k, generator=req.generator, dtype=torch.float64).to(device)
            gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
            noisy = scores[b, :req.params.k].double() / req.params.temperature + gumbel
            choice[b] = noisy.argmax()
    return choice


def append_token(req: Request, token: int, reward: float, tokenizer, eos_ids: set[int]) -> None:
    """Record a chosen token and set finish_reason when a stop condition is met."""
    req.out_ids.append(token)
    req.rewards.append(reward)
    stop = req.params.stop
    if not req.params.ignore_eos and token in eos_ids:
        req.finish_reason = "stop"
    elif stop and tokenizer is not None:
        text = tokenizer.decode(req.out_ids, skip_special_tokens=True)
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            req.finish_reason, req.text = "stop", text[:min(hits)]
    if not req.finished and (len(req.out_ids) >= req.params.max_new_tokens
                             or len(req.prompt_ids) + len(req.out_ids) >= req.max_len):
        req.finish_reason = "length"


def finish_output(req: Request, prompt, tokenizer) -> GenerationOutput:
    text = req.text
    if text is None:
        text = tokenizer.decode(req.out_ids, skip_special_tokens=True) if tokenizer is not None else ""
    return GenerationOutput(prompt, req.prompt_ids, list(req.out_ids), text, list(req.rewards), req.finish_reason)
