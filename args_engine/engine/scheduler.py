"""Which sequences run this step: decode every prefilled sequence, then spend the rest of the token budget on
prefill chunks (continuing ones first, then new admissions while free blocks last). A sequence's ARGS step
counts 1 + k tokens against the budget: its LM token and the k candidates the RM reads. When a running sequence
cannot get the block for its next token, the newest running sequence is preempted: its blocks are freed and it
is recomputed later. An RM that reads text on its own paged cache has a block pool of its own (rm_block_manager):
a sequence is admitted, grown and preempted in both pools together. Never touches tensors."""
from __future__ import annotations

from collections import deque

from .block_manager import BlockManager
from .rm_block_manager import RMBlockManager
from .sequence import Sequence, Status


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 rm_block_manager: RMBlockManager | None = None):
        self.bm = block_manager
        self.rm_bm = rm_block_manager
        self.pools = [block_manager] + ([rm_block_manager] if rm_block_manager is not None else [])
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0
        # this step's prefill marks, (seq, positions computed before): taken back if the step fails
        self.step_marks: list[tuple[Sequence, int]] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[tuple[Sequence, int]], list[Sequence]]:
        """-> (prefill chunks [(seq, num_tokens)], decode seqs)."""
        self.step_marks = []
        budget = self.max_num_batched_tokens
        decode: list[Sequence] = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or not seq.prefilled:
                continue
            while not all(p.can_grow(seq) for p in self.pools):
                victim = next((s for s in reversed(self.running) if s is not seq and s not in decode), seq)
                self.preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                for p in self.pools:
                    p.grow(seq)
                decode.append(seq)
                budget -= 1 + seq.params.k  # its LM token and the k candidates the RM reads

        prefill: list[tuple[Sequence, int]] = []
        for seq in self.running:
            if budget <= 0:
                break
            if not seq.prefilled:
                budget -= self._add_chunk(prefill, seq, budget)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not all(p.can_admit(seq) for p in self.pools):
                break
            self.waiting.popleft()
            seq.lm_cached = seq.rm_cached = self.bm.admit(seq)  # prefix-cache hits are computed already
            if self.rm_bm is not None:
                self.rm_bm.admit(seq)  # its own pool: hits set the RM tokens it holds (cached_ids)
            seq.status = Status.RUNNING
            self.running.append(seq)
            budget -= self._add_chunk(prefill, seq, budget)
        return prefill, decode

    def _add_chunk(self, prefill: list[tuple[Sequence, int]], seq: Sequence, budget: int) -> int:
        """Schedule the next chunk of seq's prompt -> the budget it takes (its k candidates too, when the chunk
        completes the prompt: the ARGS step for its first token runs in this step, and an RM on its own pool
        reads the prompt's RM tokens then)."""
        n = min(seq.num_tokens - seq.lm_cached, budget)
        prefill.append((seq, n))
        # The prefill forward stores every chunk's K/V (layer by layer) before any chunk's attention reads the
        # cache, so a prompt admitted later in this same step may already reuse the blocks this chunk fills.
        # Marked now, taken back by fail_step if the step does not run.
        self.step_marks.append((seq, seq.lm_cached))
        self.bm.mark_computed(seq, seq.lm_cached + n)
        if seq.lm_cached + n < seq.num_tokens:
            return n
        k = seq.params.k if seq.params.max_new_tokens else 0  # a prompt only scored takes no ARGS step
        return n + k + (self.rm_bm.uncached(seq) if self.rm_bm is not None else 0)

    def fail_step(self, seqs: list[Sequence]) -> None:
        """The step that ran `seqs` failed: its prefill marks are taken back (those blocks may hold nothing; every
        other prefix-cache entry stays) and its sequences start over. Sequences outside the step keep running.
        The RM pool needs nothing taken back: it marks blocks only after writing them."""
        for seq, before in reversed(self.step_marks):
            self.bm.unmark(seq, before)
        self.step_marks = []
        for seq in seqs:
            if seq in self.running:
                self.preempt(seq)

    def fail_all(self) -> None:
        """Scheduling itself failed, so any sequence and mark may be half done: every running sequence starts
        over and the prefix caches are emptied."""
        for seq in list(self.running):
            self.preempt(seq)
        for pool in self.pools:
            pool.reset_prefix_cache()
        self.step_marks = []

    def preempt(self, seq: Sequence) -> None:
        for p in self.pools:
            p.free(seq)
        self.running.remove(seq)
        seq.reset()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Finished or aborted: free its blocks at once."""
        for p in self.pools:
            p.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
