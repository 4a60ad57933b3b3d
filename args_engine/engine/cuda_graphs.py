"""Static-shape decode steps: inputs padded to a batch-size bucket, and on CUDA one graph per step shape,
every one captured at start-up.

A decode step launches hundreds of small kernels; at small batch the host's launch time, not the GPU, sets the
step time. Capturing the step once per shape (torch.cuda.CUDAGraph, as nano-vllm and vLLM do) and replaying it
costs one launch. Hand capture rather than torch.compile(mode="reduce-overhead"): the step already calls our
Triton kernels directly and needs no tracing; capture takes milliseconds, not a compile per shape; and the
same padded code runs on CPU, where the tests hold it token-identical to the unpadded step.

The shapes are few by construction (static_shapes.py): a static step's key is (batch bucket, greedy or sampled);
the candidate grid (graph_k), the block-table width (the context's) and the gate's array are fixed. So every
graph is captured when the engine starts, largest bucket first (its memory is the pool's high-water mark, which
the smaller ones then reuse), and serving never captures: no latency spike for whoever sends a new shape first.

Padding rows point at a spare cache block no sequence owns (see ModelRunner.allocate_caches): their writes
land there and nothing reads them."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def batch_bucket(n: int) -> int | None:
    """The smallest bucket >= n, or None past the largest (that step runs unpadded, eagerly)."""
    return next((b for b in BATCH_BUCKETS if b >= n), None)


def buckets_upto(n: int) -> list[int]:
    """The buckets a batch of at most n rows can use, largest first (the capture order)."""
    top = batch_bucket(n) or BATCH_BUCKETS[-1]
    return [b for b in reversed(BATCH_BUCKETS) if b <= top]


@dataclass
class _Graph:
    replay: Callable[[], None]
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


class CaptureContext:
    """What all of an engine's graphs share: ONE memory pool (the graphs never run at once, so they may reuse each
    other's intermediates) and one side stream for the warm-up runs (the caching allocator reuses a freed block
    only on the stream that allocated it)."""

    def __init__(self):
        self.pool = None
        self.stream = None


class StepGraphs:
    """fn(*args, **tensors) -> dict of tensors, run through static buffers.

    capture=False (CPU, or step_mode "static"): every call runs fn directly on the padded inputs.
    capture=True: `record(key, args, inputs)` records fn for a key (at start-up, for every key); a call then
    copies into that graph's buffers the inputs that are not there already, and replays. An input may be
    narrower than its buffer along its last dimension (the block tables, captured at the context's width, come
    with the columns in use). A call with a key never captured is an error (the engine's shapes are enumerable;
    a missing one is a bug, not a reason to capture while serving); key None runs eagerly (a step that does not
    fit the static shapes). fn must be idempotent on the caches (every step here is: it writes only the slots of
    the positions it computes, with the values it computes) and free of host synchronization.

    Every graph of `context` draws on its one memory pool, so a replay of any key, of this StepGraphs or another
    sharing the context, may overwrite the tensors another returned: read or copy them before the next call.
    `capture_with` records one graph: (fn, args, static inputs, context) -> (replay, outputs); CUDA's by
    default, a test may pass another."""

    def __init__(self, fn: Callable[..., dict[str, torch.Tensor]], capture: bool,
                 context: CaptureContext | None = None, capture_with=None):
        self.fn, self.capture = fn, capture
        self.context = context or CaptureContext()
        self.capture_with = capture_with or _cuda_capture
        self.graphs: dict[tuple, _Graph] = {}
        self.input_copies = 0  # inputs copied into a graph's buffers (the rest came straight there)

    def __call__(self, key: tuple | None, *args, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """args: fn's non-tensor arguments (fixed for a key); inputs: its tensors. key None: run eagerly."""
        if not self.capture or key is None:
            return self.fn(*args, **inputs)
        g = self.graphs.get(key)
        if g is None:
            raise RuntimeError(f"no CUDA graph was captured for the step shape {key} (captured at start-up: "
                               f"{sorted(self.graphs)})")
        if inputs.keys() != g.inputs.keys():  # a buffer left unwritten would replay the last step's values
            raise RuntimeError(f"the step shape {key} was captured with the inputs {sorted(g.inputs)}, not "
                               f"{sorted(inputs)}")
        for name, x in inputs.items():
            buf = g.inputs[name]
            if x.data_ptr() == buf.data_ptr() and x.shape == buf.shape and x.dtype == buf.dtype:
                continue  # the step's one transfer wrote it there
            self.input_copies += 1
            if x.dtype != buf.dtype:  # copy_ would cast
                raise RuntimeError(f"step shape {key}: {name} is {x.dtype}, its graph's buffer {buf.dtype}")
            if x.shape != buf.shape:  # the block tables come with the columns in use: into the leading ones (the
                # rest hold an earlier step's entries, past every row's length: never read)
                if x.shape[:-1] != buf.shape[:-1] or x.shape[-1] > buf.shape[-1]:
                    raise RuntimeError(f"step shape {key}: {name} is {tuple(x.shape)}, its graph's buffer "
                                       f"{tuple(buf.shape)}")
                buf = buf[..., :x.shape[-1]]
            buf.copy_(x, non_blocking=True)
        g.replay()
        return g.outputs

    def record(self, key: tuple, args: tuple, inputs: dict[str, torch.Tensor], resident=()) -> None:
        """Capture fn for `key` on these inputs (their shapes and dtypes are the key's; their values need only
        be valid: padding rows). The inputs named in `resident` are used as the graph's buffers (they live where
        each step's transfer writes them); the others are copied into buffers of its own. A failure is an error
        that says why, never a silent eager fallback."""
        static = {name: x if name in resident else x.clone() for name, x in inputs.items()}
        try:
            replay, outputs = self.capture_with(self.fn, args, static, self.context)
        except RuntimeError as e:  # e.g. out of memory
            raise RuntimeError(
                f"CUDA graph capture failed for the step shape {key}: {e}. Leave the graphs more memory (a lower "
                "cache_memory_gb or num_blocks, a lower max_num_seqs or graph_k), or run step_mode='static' (the "
                "same padded step, not captured)") from e
        self.graphs[key] = _Graph(replay, static, outputs)


def _cuda_capture(fn, args: tuple, static: dict[str, torch.Tensor], context: CaptureContext):
    """Two warm-up runs on the context's side stream (Triton compiles, the allocator settles), then the capture
    into its pool. -> (replay, the outputs' static tensors)."""
    if context.stream is None:
        context.stream = torch.cuda.Stream()
    side = context.stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*args, **static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=context.pool):
        outputs = fn(*args, **static)
    context.pool = graph.pool()
    return graph.replay, outputs
