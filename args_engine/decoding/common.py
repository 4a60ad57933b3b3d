"""What the decoders share: candidate scoring and selection, the gate, Gumbel noise, log-prob columns. The request
state they all work on (Request, append_token, GenerationOutput) is the engine's: engine/request.py."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..kernels.refs import args_choose, args_scores, log_probs_ref
from ..kernels.refs import topk_logprobs_ref as topk_logprobs  # noqa: F401  (the one torch top-k, re-exported)
from ..params import ARGSParams
from ..engine.request import Request


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
