"""The native decoder: continuous batching over paged caches. Requests join between steps, leave as soon as
they finish, and stream their tokens as they are chosen.

    engine = LLMEngine(lm, rm, tokenizer, eos_ids)
    rid = engine.add_request(request)
    while engine.has_unfinished():
        for event in engine.step(): ...
"""
from __future__ import annotations

import math

import logging

import torch

from ..models.hf import RewardModel
from ..models.paged_ops import triton_available
from .block_manager import BlockManager
from .model_runner import ModelRunner, cache_bytes_per_block
from .next_logits import NextLogits
from .output_processor import OutputProcessor, TokenEvent  # noqa: F401  (TokenEvent: part of this module's API)
from .request import Request
from .rm_block_manager import RMBlockManager
from .scheduler import Scheduler
from .sequence import Sequence, Status

logger = logging.getLogger(__name__)


class LLMEngine:
    scores_prompts = True  # params.prompt_logprobs, from the prefill

    def __init__(self, lm, rm: RewardModel, tokenizer, eos_ids: set[int], *, max_num_seqs: int = 16,
                 num_blocks: int | None = None, block_size: int = 16, max_num_batched_tokens: int = 2048,
                 cache_memory_gb: float | None = None, use_triton: bool | None = None,
                 max_context: int | None = None, share_trunk: bool | None = None, enable_prefix_caching: bool = True,
                 step_mode: str | None = None, bridge=None, rm_num_blocks: int | None = None, graph_k: int = 10):
        sizes = dict(block_size=block_size, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                     num_blocks=1 if num_blocks is None else num_blocks,
                     rm_num_blocks=1 if rm_num_blocks is None else rm_num_blocks)
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        device = next(lm.parameters()).device
        if use_triton is None:
            use_triton = device.type == "cuda"
        if use_triton and not triton_available(device):
            raise ValueError("use_triton on CPU needs TRITON_INTERPRET=1 set before args_engine.kernels is imported")
        self.runner = ModelRunner(lm, rm, block_size, use_triton, share_trunk, step_mode, bridge, graph_k)
        graphs = self.runner.step_mode == "graph"
        paged_bridge = self.runner.paged_bridge
        # A bridged RM's pool is in RM-token positions: as many times the LM's blocks as its tokenizer spends tokens
        # on a text per LM token (or rm_num_blocks); the memory budget pays for both.
        ratio = 1.0 if paged_bridge is None else bridge.view.token_ratio()
        per_block = cache_bytes_per_block(self.runner.models, block_size)
        if paged_bridge is not None:  # `ratio` RM blocks per LM block
            per_block += (ratio - 1) * cache_bytes_per_block([paged_bridge.model], block_size)
        if num_blocks is None:
            # what the engine can use: max_num_seqs full contexts, within the memory budget
            want = max_num_seqs * -(-(max_context or 4096) // block_size)
            budget = cache_memory_gb * 2**30 if cache_memory_gb else _default_cache_budget(device)
            if not cache_memory_gb and device.type == "cuda":  # the share of free memory: what the engine keeps
                # beside the cache comes out of it, the next-token logits and the CUDA graphs' memory pool (the
                # largest step's activations, measured)
                logits = NextLogits.bytes_for(max_num_seqs, self.runner.vocab_size, self.runner.logits_dtype)
                reserve = self.runner.step_peak_bytes(max_num_seqs, max_context) if graphs else 0
                if graphs:
                    logger.info("CUDA graphs: %.0f MiB kept out of the cache budget for the largest step",
                                reserve / 2**20)
                if budget - logits - reserve < per_block:
                    raise ValueError(
                        f"no memory left for the KV cache: of {budget / 2**20:.0f} MiB, the next-token logits take "
                        f"{logits / 2**20:.0f} MiB and the CUDA graphs' largest step {reserve / 2**20:.0f} MiB; "
                        "lower batch_size (max_num_seqs) or graph_k, or set cache_memory_gb / num_blocks")
                budget -= logits + reserve
            num_blocks = max(1, min(want, int(budget // per_block)))
        if paged_bridge is not None and rm_num_blocks is None:
            rm_num_blocks = max(1, math.floor(num_blocks * ratio))  # floor: within the budget
        self.runner.allocate_caches(num_blocks, rm_num_blocks, max_num_seqs, max_context)
        logger.info("KV cache: %d blocks x %d tokens = %d tokens, %.0f MiB on %s (%s)", num_blocks, block_size,
                    num_blocks * block_size, num_blocks * per_block / 2**20, device,
                    "one cache for LM and RM: shared trunk" if self.runner.shared else
                    f"LM + RM, the RM's pool {rm_num_blocks} blocks in RM tokens" if paged_bridge else "LM + RM")
        if graphs:
            self.runner.capture_graphs(max_num_seqs)
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.rm_bm = None  # a bridged RM's own pool, in RM-token positions
        token_budget = max(max_num_batched_tokens, block_size)
        if paged_bridge is not None:
            self.rm_bm = RMBlockManager(rm_num_blocks, block_size, enable_prefix_caching)
            paged_bridge.blocks, paged_bridge.max_tokens = self.rm_bm, token_budget
        self._rm_view = bridge.view if paged_bridge is not None else None  # the RM tokens of a new request
        self.scheduler = Scheduler(self.bm, max_num_seqs, token_budget, self.rm_bm)
        self.tokenizer = tokenizer
        self.outputs = OutputProcessor(tokenizer, eos_ids)
        self.cache_bytes_per_block = per_block
        self.seqs: dict[int, Sequence] = {}
        self.failed_request_ids: list[int] = []  # the requests in the last step that raised

    @property
    def eos_ids(self) -> set[int]:
        """The tokens that end a response (the output processor's; settable)."""
        return self.outputs.eos_ids

    @eos_ids.setter
    def eos_ids(self, ids: set[int]) -> None:
        self.outputs.eos_ids = ids

    @property
    def num_blocks(self) -> int:
        return self.bm.num_blocks

    def add_request(self, req: Request, request_id: int | None = None) -> int:
        need = self.bm.blocks_needed(req.max_len if req.max_len else len(req.prompt_ids) + req.params.max_new_tokens)
        need = min(need, self.bm.blocks_needed(len(req.prompt_ids) + req.params.max_new_tokens + 1))
        if need > self.bm.num_blocks:
            raise ValueError(f"the request needs up to {need} cache blocks but the cache has {self.bm.num_blocks}; "
                             "raise num_blocks / cache memory or lower max_new_tokens")
        seq = Sequence(req, request_id)
        if seq.seq_id in self.seqs:
            raise ValueError(f"request id {seq.seq_id} is already in use")
        if self._rm_view is not None:  # the RM pool admits by them; each step's commit brings them up to date
            req.rm_text_ids = self._rm_view.ids(req.rm_prefix, req.out_ids)
        self.seqs[seq.seq_id] = seq
        self.outputs.add(seq.seq_id)
        self.scheduler.add(seq)
        return seq.seq_id

    def add_requests(self, reqs: list[Request]) -> list[int]:
        """Admit several requests, all or none: if one is refused, those added before it are aborted."""
        ids: list[int] = []
        try:
            for r in reqs:
                ids.append(self.add_request(r))
        except BaseException:
            for rid in ids:
                self.abort(rid)
            raise
        return ids

    def abort(self, request_id: int) -> None:
        """Drop a request (finished or not) and free its blocks at once."""
        seq = self.seqs.pop(request_id, None)
        self.outputs.drop(request_id)
        if seq is not None and seq.status is not Status.FINISHED:
            seq.req.finish_reason = seq.req.finish_reason or "abort"
            self.scheduler.finish(seq)
            self.runner.release(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_used_blocks(self) -> int:
        return self.bm.num_blocks - self.bm.num_free_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Share of admitted prompt tokens (recomputed ones included) whose K/V came from the prefix cache."""
        return self.bm.num_hit_tokens / max(1, self.bm.num_admitted_tokens)

    def step(self) -> list[TokenEvent]:
        """Schedule and run one step -> the tokens it chose. If it raises, the step's own sequences start over
        (their blocks freed, recomputed when admitted again) and the prefix-cache entries its prefill had marked
        are taken back; every other entry and every sequence outside the step stay. The requests stay queued;
        the caller may step again or abort them: `failed_request_ids` names the ones that were in the failed
        step (a server fails those and lets the others go on)."""
        scheduled: list[Sequence] | None = None
        try:
            prefill, decode = self.scheduler.schedule()
            scheduled = [s for s, _ in prefill] + decode
            return self._run(prefill, decode)
        except BaseException:
            if scheduled is None:  # scheduling itself failed: every sequence it may have touched
                self.failed_request_ids = [s.seq_id for s in [*self.scheduler.running, *self.scheduler.waiting]]
                self.scheduler.fail_all()
            else:
                self.failed_request_ids = [s.seq_id for s in scheduled]
                self.scheduler.fail_step(scheduled)
            for pool in self.scheduler.pools:
                pool.take_copies()  # copies into blocks just freed must not land on their next owner
            raise

    def _run(self, prefill: list[tuple[Sequence, int]], decode: list[Sequence]) -> list[TokenEvent]:
        batch = self.runner.prepare(prefill, decode, self.bm)
        result = self.runner.run(batch)
        return self._postprocess(batch, result)

    def _postprocess(self, batch, result) -> list[TokenEvent]:
        """Advance the caches' counts, commit the chosen tokens, finish what stopped -> the step's events."""
        for s, n in batch.prefill:
            s.lm_cached += n
            s.rm_cached += n
        for s in batch.decode:
            s.lm_cached = s.num_tokens
            self.bm.mark_computed(s, s.lm_cached)  # only now: this step's admissions were scheduled before it
        if result is None:
            return []
        for seq, rm_ids, cached in result.rm_commits:  # a bridged RM's pool: what its cache now holds
            self.rm_bm.commit(seq, rm_ids, cached)
            seq.req.rm_text_ids = rm_ids  # the RM tokens of the text with this step's token
        for seq in batch.ready + batch.scored_only:
            if seq.seq_id in result.prompt_logprobs:
                seq.req.prompt_logprobs, seq.req.prompt_top_logprobs = result.prompt_logprobs[seq.seq_id]
        events = []
        for seq in batch.scored_only:  # max_new_tokens 0: the prompt is scored, nothing is decoded
            events.append(self.outputs.scored(seq))
            self._finish(seq)
        for i, (seq, tok, r) in enumerate(zip(batch.ready, result.tokens, result.rewards)):
            seq.rm_cached += 1
            seq.token_ids.append(tok)
            self.bm.commit(seq, [tok])
            events.append(self.outputs.token(seq, tok, r, result.logprobs[i] if result.logprobs is not None
                                             else None))
            if seq.req.finished:
                self._finish(seq)
        return events

    def _finish(self, seq: Sequence) -> None:
        """Its response is complete: its blocks go back at once."""
        self.scheduler.finish(seq)
        self.runner.release(seq)
        self.seqs.pop(seq.seq_id, None)

    def run(self, reqs: list[Request], on_step=None) -> None:
        """Decode `reqs` to completion (the batch interface the other decoders share)."""
        ids = []
        try:
            ids = self.add_requests(reqs)
            while self.has_unfinished():
                events = self.step()
                if on_step and events:
                    on_step(len(events))
        finally:  # on an error (or Ctrl-C) nothing stays queued or holds blocks
            for rid in ids:
                self.abort(rid)


CPU_CACHE_BUDGET_GB = 1.0  # default cap on CPU: host memory is shared with everything else on the machine


def _default_cache_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.8 * free
    return CPU_CACHE_BUDGET_GB * 2**30
