"""The only part of the native engine that builds tensors: paged caches for the LM and the RM, the step's
inputs (one host-to-device copy, `prepare`), prefill chunks, LM decode, and the ARGS step (engine/args_step.py:
controls -> top-k -> gate -> RM candidate forward -> select + commit, every mode and option on the one path),
whose chosen tokens come back in one device-to-host read (`run`).

Shared trunk: when the RM is a scalar head on the LM's own trunk (the default RM is), the two models compute
the same K/V and hidden states for the same tokens. Then one cache serves both, and the chosen candidate's
hidden state from the RM forward is exactly what the LM would compute for that token at the next step: its
logits come from lm_head directly (kept on the Sequence), and the LM decode forward disappears (one trunk
forward per step).

An RM that reads text (another tokenizer, or an encoder; decoding/bridge.py): the LM runs here as always and the
same ARGS step scores the candidates through engine/bridged_rm.py, whose tokenizer reads the candidates back in
one extra read. A native-family decoder RM then scores every row's candidates on a paged cache of its own, in
RM-token positions (paged_bridge.py, rm_block_manager.py); any other RM scores each row on its own HF cache
(BridgeScorer), an encoder RM the k texts in one batch. Eager steps, on the host's schedule.

LM and RM on two devices (two trunks): the RM trunk, its cache and the candidate forward + select live on the
RM's device. The step's arrays go to each device in one transfer; only the LM's top-k (log p and ids, [B, k])
cross from the LM's device to the RM's; the chosen tokens come back from the RM's device in the one read.

Step modes: "dynamic" runs each step at its own shapes; "static" runs it at fixed shapes, (batch bucket, greedy or
sampled) alone (static_shapes.py): the CUDA-graph code, runnable and tested on CPU; "graph" (CUDA) captures
every such shape at start-up (`capture_graphs`, largest first) and replays them. A step that does not fit (a row's
k above graph_k, more rows than the largest bucket) runs dynamically. The logits a step reads and writes stay
on the device in one table (next_logits.py), gathered inside the step."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..decoding.bridge import BridgeScorer
from ..decoding.common import logprob_columns, logprob_lists, selection_arrays
from ..decoding.logit_controls import apply_controls, control_arrays, reads_tokens
from ..models.hf import RewardModel, shares_trunk
from ..models.llama import PagedLlama, native_unsupported_reason
from ..models.paged_ops import PagedOps, PrefillChunks
from .args_step import ArgsStep, PagedRM, on_device, scored_cells
from .bridged_rm import BridgedRM
from .control_history import ControlHistory
from .cuda_graphs import CaptureContext, StepGraphs, batch_bucket
from .next_logits import NextLogits
from .paged_bridge import PagedBridge
from .sequence import Sequence
from .static_shapes import ARGS_INPUTS, DECODE_INPUTS, StaticShapes
from .step_inputs import HostRead, StepTransfer

STEP_MODES = ("dynamic", "static", "graph")
_SELECT = ("k", "w", "temp", "gumbel", "gate")  # the pick's arrays, for every RM


def cache_bytes_per_block(models: list[PagedLlama], block_size: int) -> int:
    return sum(2 * m.num_layers * block_size * m.num_kv_heads * m.head_dim * m.dtype.itemsize for m in models)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled cache. On CPU it comes from calloc (numpy), so the OS commits a page only when a block is
    first written: resident memory follows the blocks in use, not the cache's size."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = dtype.itemsize * math.prod(shape)
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)


@dataclass
class StepBatch:
    """One step, prepared: its sequences (host) and its tensors (device views of one transfer).

    `ready`: the sequences that take an ARGS step (those whose prompt this step completes, then the decode
    rows), padded to `rows` rows in static modes. Tensor names: prefill `pf_ids pf_pos pf_slots pf_tables`;
    the pick `k w temp [gumbel] [gate]`; a paged RM `tables pos rm_slots [rm_w] [scored]`; controls `ctl_*`;
    two-trunk LM decode `lm_ids lm_pos lm_slots lm_tables`; copy-on-write `copies`."""

    prefill: list[tuple[Sequence, int]]
    decode: list[Sequence]
    ready: list[Sequence]
    t: dict[str, torch.Tensor]  # on the LM's device
    rt: dict[str, torch.Tensor]  # the same arrays on the RM's device (t itself when both share one)
    rows: int  # ARGS rows incl. padding
    lm_rows: int  # LM decode rows incl. padding (two trunks)
    kmax: int  # the candidate grid's width
    static: bool = False  # fixed shapes: padded to `rows`, kmax = graph_k (a captured graph in graph mode)
    scored_only: list[Sequence] = field(default_factory=list)  # prompts complete, nothing to decode (scoring)
    prompt_lp: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, prompt positions scored here)
    prompt_lp_width: int = 0  # top-N columns of this step's prompt log-probs (the largest N asked)
    # controls that read the tokens: (controlled rows, their lengths) on the host, and the history's width
    ctl: tuple[np.ndarray, np.ndarray, int] | None = None


@dataclass
class StepResult:
    """Per ready sequence: its chosen token, that token's reward, and (params.logprobs) (log p, top N)."""

    tokens: list[int]
    rewards: list[float]
    logprobs: list | None
    prompt_logprobs: dict[int, tuple[list, list]] = field(default_factory=dict)  # seq_id -> (log p, tops)
    rm_commits: list = field(default_factory=list)  # a bridged RM's pool: (seq, RM ids, cached) to record


class ModelRunner:
    def __init__(self, lm, rm: RewardModel, block_size: int, use_triton: bool, share_trunk: bool | None = None,
                 step_mode: str | None = None, bridge: BridgeScorer | None = None, graph_k: int = 10):
        self.ops = PagedOps(use_triton)
        self.bridge = bridge
        self.shared = bridge is None and (shares_trunk(lm, rm.model) if share_trunk is None else share_trunk)
        self.lm = PagedLlama(lm, self.ops)
        self.rm = self.lm if self.shared or bridge is not None else PagedLlama(rm.model, self.ops)
        # a bridged decoder RM of a native family runs paged (its own pool); any other runs its HF model as loaded
        self.paged_bridge = None
        if bridge is not None and not rm.is_encoder and native_unsupported_reason(rm.model) is None:
            self.paged_bridge = PagedBridge(rm, bridge.view, self.ops)
        self.reward_model = rm
        self._lm_head, self.vocab_size = lm.get_output_embeddings(), lm.config.vocab_size
        # the logit controls' settings in the dtype they are applied in (apply_controls): no cast on the device
        self._control_dtype = np.float64 if self.lm.dtype == torch.float64 else np.float32
        self._logit_cap = getattr(lm.config, "final_logit_softcapping", None)  # Gemma 2
        self.device, self.rm_device = self.lm.device, self.rm.device
        # Capture needs a step free of host syncs: the Triton kernels (the torch attention reads its context length)
        # and RoPE from a table (HF's dynamic rope types read the longest position).
        no_graph = ("it needs a CUDA device" if self.device.type != "cuda" else
                    "the RM reads text through the tokenizer bridge" if bridge is not None else
                    "the LM and the RM are on different devices" if self.split else
                    "it needs the Triton kernels (use_triton)" if not use_triton else
                    "a model's RoPE type depends on the sequence length" if not all(m.static_rope for m in self.models)
                    else None)
        step_mode = step_mode or ("graph" if no_graph is None else "dynamic")
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
        if step_mode == "graph" and no_graph:
            raise ValueError(f"step_mode 'graph' (CUDA graphs) is not possible here: {no_graph}; 'static' runs the "
                             "same padded step without capture")
        self.step_mode = step_mode
        self.block_size = block_size
        self.shapes = StaticShapes(graph_k, self.vocab_size)  # the static steps' fixed shapes and their capture
        self.lm_kv = self.rm_kv = None
        self.next_logits: NextLogits | None = None  # set by allocate_caches
        self.spare_block = -1  # the cache block padding rows write to (static modes)
        self.transfer, self.read = StepTransfer(self.device), HostRead()
        self.controls = ControlHistory(self.device, self.vocab_size)  # the controlled rows' tokens, on the device
        self.rm_transfer = StepTransfer(self.rm_device) if self.split else None
        capture = step_mode == "graph"
        scorer = PagedRM(self.rm, rm.head) if bridge is None else \
            BridgedRM(bridge, rm, self.paged_bridge, self.device, self.read)
        # a CPU RM in eager steps skips the gated rows' candidates (reading a CPU tensor costs no transfer)
        self.args_step = ArgsStep(self.ops, scorer, self.lm_head if self.shared else None,
                                  compact_gate=bridge is None and self.rm_device.type == "cpu" and not self.static)
        graphs = CaptureContext()  # one memory pool and one warm-up stream for all of them
        self.args_graphs = StepGraphs(self.args_core, capture, graphs)
        self.decode_graphs = StepGraphs(self.lm_decode_core, capture, graphs)

    def release(self, seq: Sequence) -> None:
        """The sequence is finished: what the runner keeps for it on the device goes back."""
        self.controls.release(seq.seq_id)
        self.next_logits.release(seq.seq_id)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> the LM's logits [..., V] (Gemma 2: soft-capped, as its HF forward does)."""
        logits = self._lm_head(hidden)
        if self._logit_cap:
            logits = torch.tanh(logits / self._logit_cap) * self._logit_cap
        return logits

    @property
    def logits_dtype(self) -> torch.dtype:
        return self._lm_head.weight.dtype

    @property
    def split(self) -> bool:
        """LM and RM on different devices."""
        return self.rm_device != self.device

    @property
    def models(self) -> list[PagedLlama]:
        """The paged models: one with a shared trunk or an HF-run bridged RM (whose cache is its own), else two."""
        if self.paged_bridge is not None:
            return [self.lm, self.paged_bridge.model]
        return [self.lm] if self.rm is self.lm else [self.lm, self.rm]

    @property
    def static(self) -> bool:
        return self.step_mode != "dynamic"

    def allocate_caches(self, num_blocks: int, rm_num_blocks: int | None = None, max_num_seqs: int = 16,
                        max_context: int | None = None) -> None:
        """k, v [L, num_blocks (+1 spare in static modes), block_size, Hkv, D] for each model (one for both with a
        shared trunk), and the next-token logits of max_num_seqs sequences. The block allocator hands out blocks
        0..num_blocks-1 only. rm_num_blocks: a bridged RM's own pool, in RM-token positions (default: as many).
        max_context: the longest sequence (positions); static steps' block tables are that wide."""
        self.spare_block = num_blocks if self.static else -1
        self.shapes.size(num_blocks, self.block_size, max_context)
        self.next_logits = NextLogits(max_num_seqs, self.vocab_size, self.logits_dtype, self.device)

        def alloc(m: PagedLlama, blocks: int):
            shape = (m.num_layers, blocks + (1 if self.static else 0), self.block_size, m.num_kv_heads, m.head_dim)
            return tuple(_zeros(shape, m.dtype, m.device) for _ in range(2))
        self.lm_kv = alloc(self.lm, num_blocks)
        self.rm_kv = self.lm_kv if self.rm is self.lm else alloc(self.rm, num_blocks)
        if self.bridge is None:
            self.args_step.scorer.kv = self.rm_kv
        if self.paged_bridge is not None:
            self.paged_bridge.kv = alloc(self.paged_bridge.model, rm_num_blocks or num_blocks)

    # --- static shapes, captured at start-up (static_shapes.py) --------------------------------------------
    def capture_graphs(self, max_num_seqs: int) -> int:
        """Graph mode: capture every static step shape (largest batch bucket first). -> the number of graphs."""
        return self.shapes.capture(self, max_num_seqs)

    def step_peak_bytes(self, max_num_seqs: int, max_context: int | None) -> int:
        """CUDA: the memory the largest static step takes beyond the weights and caches (measured)."""
        return self.shapes.peak_bytes(self, max_num_seqs, max_context)

    def free_caches(self) -> None:
        self.lm_kv = self.rm_kv = self.next_logits = None
        if self.bridge is None:
            self.args_step.scorer.kv = None

    # --- preparing a step ---------------------------------------------------------------------------------
    def prepare(self, prefill: list[tuple[Sequence, int]], decode: list[Sequence], bm) -> StepBatch:
        """Every tensor of the step, from the scheduler's choice and the block manager's tables and slots, in
        one transfer."""
        a: dict[str, np.ndarray] = {}
        copies = bm.take_copies()
        if copies:
            a["copies"] = np.array(copies, dtype=np.int64).reshape(-1, 2)
        if prefill:
            seqs = [s for s, n in prefill for _ in range(n)]
            pos = [p for s, n in prefill for p in range(s.lm_cached, s.lm_cached + n)]
            a["pf_ids"] = np.array([s.token_ids[p] for s, p in zip(seqs, pos)], dtype=np.int64)
            a["pf_pos"] = np.array(pos, dtype=np.int64)
            a["pf_slots"] = bm.slots(seqs, pos).numpy()
            a["pf_tables"] = bm.block_tables([s for s, _ in prefill]).numpy()
            a["pf_cu"] = np.cumsum([0] + [n for _, n in prefill], dtype=np.int32)
            a["pf_starts"] = np.array([s.lm_cached for s, _ in prefill], dtype=np.int32)
            ends = np.cumsum([n for _, n in prefill]) - 1
            a["pf_last"] = ends[[_completes(s, n) and s.params.max_new_tokens > 0 for s, n in prefill]].astype(np.int64)
        completed = [s for s, n in prefill if _completes(s, n)]
        ready = [s for s in completed if s.params.max_new_tokens > 0] + decode
        scored_only = [s for s in completed if s.params.max_new_tokens == 0]
        prompt_lp, width = self._prompt_lp_arrays(prefill, a)
        B, rows, lm_rows, kmax, ctl, static = len(ready), 0, 0, 0, None, False
        if ready:
            tables = bm.block_tables(ready).numpy()  # [B, the longest table]: a static step's graph keeps it in
            # the leading columns of its fixed-width buffer (the kernels read a row's table only up to its length)
            static = self.static and self.shapes.fits([s.params.k for s in ready], tables.shape[1])
            if static and not self.shapes.captured:  # the width the graphs see: the kernels split alike
                tables = np.pad(tables, ((0, 0), (0, self.shapes.table_width - tables.shape[1])))
            rows = batch_bucket(B) if static else B
            kmax = self.shapes.graph_k if static else max(s.params.k for s in ready)
            pos = np.array([s.num_tokens for s in ready], dtype=np.int32)
            slot = self.next_logits.slots(ready)  # where each row's logits are (prefilled rows: written this step)
            a["slot"] = self._pad(slot, rows, self.next_logits.spare)
            if len(ready) > len(decode):
                a["pf_slot"] = slot[:len(ready) - len(decode)]
            a["tables"] = self._pad(tables, rows, self.spare_block)
            a["pos"] = self._pad(pos, rows, 0)
            a.update(control_arrays([s.params for s in ready], [s.token_ids for s in ready],
                                    [len(s.req.prompt_ids) for s in ready], self.vocab_size, self._control_dtype,
                                    history=False))
            if reads_tokens(a):  # the tokens are on the device already, or come once in this copy
                hist, ctl_width = self.controls.arrays(ready, a["ctl_rows"], a["ctl_len"])
                a.update(hist)
                ctl = (a["ctl_rows"], a["ctl_len"], ctl_width)
            a.update(self._select_arrays(ready, rows, kmax, static))
            if self.bridge is None:  # a bridged RM reads text: its step needs none of the RM's cache arrays
                a.update(self._rm_arrays(ready, pos, rows, kmax, bm, a["k"], static))
            if decode and not self.shared:
                D = len(decode)
                lm_rows = batch_bucket(D) if static else D
                a["lm_slot"] = self._pad(slot[B - D:], lm_rows, self.next_logits.spare)
                a["lm_ids"] = self._pad(np.array([s.token_ids[-1] for s in decode], dtype=np.int64), lm_rows, 0)
                lm_pos = np.array([s.num_tokens - 1 for s in decode], dtype=np.int32)
                a["lm_pos"] = self._pad(lm_pos, lm_rows, 0)
                a["lm_slots"] = self._pad(bm.slots(decode, lm_pos.tolist()).numpy(), lm_rows, self.spare_slot)
                a["lm_tables"] = self._pad(tables[B - D:], lm_rows, self.spare_block)
        regions = self.shapes.regions(a) if static else ()  # graphs captured: their inputs' place
        t = self.transfer.pack(a, regions) if a else {}
        rt = self.rm_transfer.pack(a) if a and self.rm_transfer is not None else t
        return StepBatch(prefill, decode, ready, t, rt, rows, lm_rows, kmax, static, scored_only, prompt_lp, width,
                         ctl)

    @staticmethod
    def _prompt_lp_arrays(prefill: list[tuple[Sequence, int]], a: dict) -> tuple[list[tuple[Sequence, int]], int]:
        """The prefill rows whose next token is a prompt token of a sequence that wants its prompt scored:
        `pl_rows` (into the chunks' tokens) and `pl_next` (that next token)."""
        rows, nxt, scored, off = [], [], [], 0
        for s, n in prefill:
            if s.scores_prompt:
                P = len(s.req.prompt_ids)
                pos = range(s.lm_cached, min(s.lm_cached + n, P - 1))  # position p scores prompt token p + 1
                rows += [off + p - s.lm_cached for p in pos]
                nxt += [s.req.prompt_ids[p + 1] for p in pos]
                scored.append((s, len(pos)))
            off += n
        if not rows:
            return [], 0
        a["pl_rows"], a["pl_next"] = np.array(rows, dtype=np.int64), np.array(nxt, dtype=np.int64)
        return scored, max(s.params.prompt_logprobs for s, _ in scored)

    def _select_arrays(self, ready: list[Sequence], rows: int, kmax: int, static: bool) -> dict[str, np.ndarray]:
        """The pick's arrays: k, w, temperature, [Gumbel noise], [the gate's log tau: always in static steps]."""
        sel = selection_arrays([s.params for s in ready], [s.req for s in ready], kmax)
        a = {name: self._pad(x, rows, 1 if name == "k" else 0) for name, x in sel.items()}
        if static or any(s.params.gate is not None for s in ready):  # log tau per row, +inf: no gate
            a["gate"] = self._pad(np.array([math.log(s.params.gate) if s.params.gate is not None else math.inf
                                            for s in ready], dtype=np.float64), rows, math.inf)
        return a

    def _rm_arrays(self, ready: list[Sequence], pos: np.ndarray, rows: int, kmax: int, bm,
                   k: np.ndarray, static: bool) -> dict[str, np.ndarray]:
        """A paged RM's arrays: each row's slot for the chosen candidate, the scored cells, objective weights."""
        a = {"rm_slots": self._pad(bm.slots(ready, pos.tolist()).numpy(), rows, self.spare_slot)}
        # ragged k: the grid cells the RM reads (a gate on a CPU RM re-lists them in the step when it takes a row);
        # a static step reads its whole grid, rows x graph_k (one shape per batch bucket)
        cells = None if static else scored_cells(k, kmax)
        if cells is not None:
            a["scored"] = cells
        rm_w = self.reward_model.row_weights([s.params.rm_weights for s in ready], "cpu")
        if rm_w is not None:  # multi-objective: each row's weights [B, N]
            a["rm_w"] = self._pad(rm_w.numpy(), rows, 0.0)
        return a

    @property
    def spare_slot(self) -> int:
        """The padding rows' cache slot (static modes)."""
        return self.spare_block * self.block_size

    @staticmethod
    def _pad(x: np.ndarray, rows: int, fill) -> np.ndarray:
        if len(x) == rows:
            return x
        out = np.full((rows, *x.shape[1:]), fill, dtype=x.dtype)
        out[:len(x)] = x
        return out

    # --- running it -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, batch: StepBatch) -> StepResult | None:
        """Prefill chunks, LM decode and the ARGS step of the ready rows -> their tokens, and the log p of the
        prompts completed this step that asked for them (None: nothing to report)."""
        t = batch.t
        if "copies" in t:
            self._copy_blocks(t["copies"], batch.rt["copies"])
        if batch.prefill:
            self._prefill(batch)
        if batch.decode and not self.shared:  # (shared trunk: the last step's candidate forward wrote them)
            self._decode(batch)
        scored = [s for s, n in batch.prefill if _completes(s, n) and s.scores_prompt]
        if not batch.ready and not scored:
            return None
        rows = None
        if batch.ready:
            rows, gate, n_top = self._choose(batch)
        # the step's one read: the ARGS rows [B, C], then each scored prompt's log-prob rows, flattened
        dev = rows.device if rows is not None else self.device
        flat = ([rows.flatten()] if rows is not None else []) + \
            [p.flatten().to(dev) for s in scored for p, _ in s.prompt_lp_parts]
        host = self.read(torch.cat(flat) if len(flat) > 1 else flat[0]) if flat else []  # none: 1-token prompts
        result, at = StepResult([], [], None), 0  # at: where the next rows start in `host`

        def take(m: int, C: int) -> list[list[float]]:
            nonlocal at
            out, at = [host[at + i * C:at + (i + 1) * C] for i in range(m)], at + m * C
            return out
        if rows is not None:
            self._unpack_rows(batch.ready, take(*rows.shape), gate, n_top, result)
        if batch.ctl is not None:
            self.controls.stepped(batch.ready, *batch.ctl[:2])
        for s in scored:
            lps, tops = [None], [None]  # the first prompt token has no log p
            for part, width in s.prompt_lp_parts:
                lp, top = logprob_lists(take(*part.shape), s.params.prompt_logprobs, width)
                lps += lp
                tops += top
            s.prompt_lp_parts = []
            result.prompt_logprobs[s.seq_id] = (lps, tops)
        return result

    def _choose(self, batch: StepBatch):
        """The ARGS step of the ready rows (their logits in next_logits) -> (their read-out rows [B, C] float64:
        token, reward, [gate's k], [log p, top ids, top log p]; the gate's k [B] or None; the log-prob width or
        None)."""
        t, seqs, B = batch.t, batch.ready, len(batch.ready)
        n_top = max((s.params.logprobs for s in seqs if s.params.logprobs is not None), default=None)
        table = self.next_logits.rows  # [S + 1, V]
        # the LM's own logits for the log-probs: read before the controls and before the step writes the next ones
        lm_logits = table.index_select(0, t["slot"][:B]) if n_top is not None else None  # [B, V]
        controls = None
        if "ctl_rows" in t:  # the control arrays came in the step's one copy
            hist = self.controls.history(t, batch.ctl[2]) if batch.ctl is not None else None  # [C, L]
            controls = (t, hist)
            if batch.static:  # the controls' shapes change every step: applied in place before the fixed-shape part
                slot = t["slot"][:B]
                table.index_copy_(0, slot, apply_controls(table.index_select(0, slot), t, hist))
                controls = None
        out = self._args_step(batch, controls)
        tokens, chosen = out["tokens"], out["rewards"]
        gate = out["k"] if "gate" in batch.rt else None  # which rows the gate took comes back in the one read
        if batch.ctl is not None:  # the step appends its own tokens to the history
            self.controls.append(t, tokens)
        parts = [tokens[:B].to(torch.float64), chosen[:B].to(torch.float64)]  # exact: ids < 2**53
        if gate is not None:
            parts.append(gate[:B].to(parts[0].device, torch.float64))
        if n_top is not None:
            parts += [c.to(tokens.device) for c in logprob_columns(lm_logits, tokens[:B].to(lm_logits.device), n_top)]
        rows = torch.cat([p.view(B, -1) for p in parts], 1)  # [B, C], on the RM's device with two
        return rows, gate, n_top

    def _unpack_rows(self, seqs: list[Sequence], host: list[list[float]], gate, n_top, result: StepResult) -> None:
        """The ready rows' part of the read (rows as _choose laid them out) -> result's tokens, rewards, log-probs."""
        result.tokens = [int(r[0]) for r in host]
        result.rewards = [r[1] for r in host]
        for s, r in zip(seqs, host):  # the RM tokens each row's choice needed: k, or 1 where the gate took the top one
            s.req.rm_tokens += int(r[2]) if gate is not None else s.params.k
        if self.bridge is not None:  # the RM's cache keeps each row's choice; its pool records it after the step
            result.rm_commits = self.args_step.scorer.commit(result.tokens)
        if n_top is not None:
            c = 3 if gate is not None else 2  # the first log-prob column
            lp, top = logprob_lists([r[c:] for r in host], n_top, n_top)
            result.logprobs = [None if s.params.logprobs is None else (lp[i], top[i][:s.params.logprobs])
                               for i, s in enumerate(seqs)]

    def _copy_blocks(self, lm_pairs: torch.Tensor, rm_pairs: torch.Tensor) -> None:
        """Copy-on-write of shared prefix blocks, pairs [M, 2] (src, dst) on each cache's device."""
        for kv, pairs in {id(kv): (kv, p) for kv, p in ((self.lm_kv, lm_pairs), (self.rm_kv, rm_pairs))}.values():
            self.ops.copy_blocks(*kv, pairs)

    def _prefill(self, batch: StepBatch) -> None:
        """Run the chunks through both trunks (same tokens, same slots); the LM logits of the sequences whose
        prompt is now complete (and that decode) go to their next_logits rows."""
        spans, off = [], 0
        for seq, n in batch.prefill:
            spans.append((off, n, seq.lm_cached))
            off += n

        def chunk_inputs(t):
            return t["pf_ids"], t["pf_pos"], t["pf_slots"], PrefillChunks(spans, t["pf_tables"], t["pf_cu"],
                                                                        t["pf_starts"])
        h_lm = self.lm.forward_chunks(*chunk_inputs(batch.t), self.lm_kv)  # [N, H]
        if self.rm is not self.lm:
            with on_device(self.rm_device):
                self.rm.forward_chunks(*chunk_inputs(batch.rt), self.rm_kv)
        if batch.prompt_lp:  # the prompt tokens' log p, for the rows that asked only
            cols = torch.cat(logprob_columns(self.lm_head(h_lm[batch.t["pl_rows"]]), batch.t["pl_next"],
                                             batch.prompt_lp_width), 1)  # [M, 1 + 2 width] float64
            for (s, m), part in zip(batch.prompt_lp, cols.split([m for _, m in batch.prompt_lp])):
                s.prompt_lp_parts.append((part, batch.prompt_lp_width))
        if "pf_slot" in batch.t:  # the last token of each completed prompt to decode
            self.next_logits.rows.index_copy_(0, batch.t["pf_slot"], self.lm_head(h_lm[batch.t["pf_last"]]))

    def _decode(self, batch: StepBatch) -> None:
        """Two trunks: the LM reads each decode row's last committed token; its logits go to the row's slot."""
        t = batch.t
        self.decode_graphs(("decode", batch.lm_rows) if batch.static else None, tables=t["lm_tables"],
                            **{n: t[m] for n, m in DECODE_INPUTS.items()})

    def lm_decode_core(self, ids, pos, tables, slots, slot) -> dict[str, torch.Tensor]:
        h, _, _ = self.lm.forward_candidates(ids[:, None], pos, tables, pos, self.lm_kv, store_slots=slots)
        self.next_logits.rows.index_copy_(0, slot, self.lm_head(h[:, 0]))  # [D, V] into their rows
        return {}

    def _args_step(self, batch: StepBatch, controls) -> dict[str, torch.Tensor]:
        """controls: (the LM-device arrays, the history [C, L]) for the step's logit controls, or None."""
        t = batch.rt  # every input but the logits' slots and the controls is the RM's
        if self.bridge is not None:  # eager, on the host's schedule: the RM reads the step's sequences' text
            return self.args_core(batch.kmax, batch.ready, controls, batch.t["slot"],
                                   **{n: t[n] for n in _SELECT if n in t})
        key = ("args", batch.rows, "gumbel" in t) if batch.static else None
        inputs = {n: t[n] for n in ARGS_INPUTS + ("tables", "scored") if n in t}
        inputs["slot"] = batch.t["slot"]  # the logits' rows are on the LM's device
        return self.args_graphs(key, batch.kmax, None, controls, **inputs)

    def args_core(self, kmax: int, seqs, controls, slot: torch.Tensor, **inputs) -> dict[str, torch.Tensor]:
        """The ARGS step on the rows' logits, read from next_logits by slot [R]; with a shared trunk the chosen
        candidates' logits for the next step are written back there (padding rows: the spare row)."""
        out = self.args_step(kmax, seqs, controls, self.next_logits.rows.index_select(0, slot), **inputs)
        if "next_logits" in out:
            self.next_logits.rows.index_copy_(0, slot, out.pop("next_logits"))  # [R, V]
        return out


def _completes(seq: Sequence, n: int) -> bool:
    """Does a prefill chunk of n tokens complete seq's prompt?"""
    return seq.lm_cached + n == seq.num_tokens
