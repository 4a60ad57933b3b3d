"""A request's life inside the native engine: its tokens, how many of them each cache holds, its status."""
from __future__ import annotations

import enum
import itertools

from .request import Request

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Token positions 0..num_tokens-1 are committed. `lm_cached` / `rm_cached` count the positions whose K/V
    each model's cache holds. Once prefilled, rm_cached == num_tokens (the chosen candidate's K/V was committed)
    and lm_cached == num_tokens - 1 (the LM reads the chosen token at the next step)."""

    def __init__(self, req: Request, seq_id: int | None = None):
        self.seq_id = next(_ids) if seq_id is None else seq_id
        self.req = req
        self.token_ids = list(req.prompt_ids) + list(req.out_ids)
        self.status = Status.WAITING
        self.lm_cached = self.rm_cached = 0
        self.num_preemptions = 0
        self.bridge_state = None  # an RM that reads text: its cache for this sequence (decoding/bridge.py)
        # params.prompt_logprobs: each prefill chunk's rows of log-prob columns on the device ([m, 1 + 2 width],
        # width), read with the step that completes the prompt
        self.prompt_lp_parts: list[tuple[object, int]] = []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def params(self):
        return self.req.params

    @property
    def scores_prompt(self) -> bool:
        """The prompt's log-probabilities are wanted and not yet delivered (a recomputation after preemption
        does not score it again)."""
        return self.params.prompt_logprobs is not None and self.req.prompt_logprobs is None

    @property
    def prefilled(self) -> bool:
        return self.rm_cached == self.num_tokens and self.lm_cached == self.num_tokens - 1

    def reset(self) -> None:
        """Preempted: the caches are gone; everything is recomputed on readmission."""
        self.lm_cached = self.rm_cached = 0
        self.bridge_state = None
        self.prompt_lp_parts = []
        self.status = Status.WAITING
        self.num_preemptions += 1
