"""Static-shape decode steps: inputs padded to a batch-size bucket, and on CUDA one captured graph per bucket.

A decode step launches hundreds of small kernels; at small batch the host's launch time, not the GPU, sets the
step time. Capturing the step once per shape (torch.cuda.CUDAGraph, as nano-vllm and vLLM do) and replaying it
costs one launch. Hand capture rather than torch.compile(mode="reduce-overhead"): the step already calls our
Triton kernels directly and needs no tracing; capture takes milliseconds, not a compile per shape; and the
same padded code runs on CPU, where the tests hold it token-identical to the unpadded step.

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


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


class StepGraphs:
    """fn(*args, **tensors) -> dict of tensors, run through static buffers. capture=False (CPU, or eager on CUDA): fn
    runs directly on the padded inputs. capture=True: the first call for a key captures fn into a CUDA graph
    (after two warm-up runs that compile the Triton kernels); later calls copy the inputs into the graph's
    buffers and replay. fn must be idempotent on the caches (every step here is: it writes only the slots of
    the positions it computes, with the values it computes) and free of host synchronization.

    The returned tensors are graph memory: every bucket's graph draws on ONE memory pool, so any later replay,
    of this key or another, may overwrite them. Read or copy them before the next call, whatever its key."""

    def __init__(self, fn: Callable[..., dict[str, torch.Tensor]], capture: bool, max_graphs: int = 32):
        self.fn, self.capture, self.max_graphs = fn, capture, max_graphs
        self.graphs: dict[tuple, _Graph] = {}
        self.eager_keys: set[tuple] = set()  # shapes past max_graphs: run eagerly (logged once each)
        self._pool = None

    def __call__(self, key: tuple, *args, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """args: fn's non-tensor arguments (part of `key`); inputs: its tensors. key None: run eagerly."""
        if not self.capture or key is None or key in self.eager_keys:
            return self.fn(*args, **inputs)
        g = self.graphs.get(key)
        if g is None:
            if len(self.graphs) >= self.max_graphs:
                logger.warning("%d CUDA graphs captured: the step shape %s runs eagerly", self.max_graphs, key)
                self.eager_keys.add(key)
                return self.fn(*args, **inputs)
            try:
                g = self.graphs[key] = self._capture(args, inputs)
            except RuntimeError as e:  # e.g. out of memory: an error that says so, never a silent slow path
                raise RuntimeError(
                    f"CUDA graph capture failed for the step shape {key}: {e}. Leave the graphs more memory (a "
                    "lower gpu_memory_utilization or max_num_seqs), or run step_mode='static' (the same padded "
                    "step, not captured)") from e
        else:
            for name, x in inputs.items():
                g.inputs[name].copy_(x, non_blocking=True)
        g.graph.replay()
        return g.outputs

    def _capture(self, args: tuple, inputs: dict[str, torch.Tensor]) -> _Graph:
        static = {name: x.clone() for name, x in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(*args, **static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.fn(*args, **static)
        self._pool = graph.pool()  # every bucket's graph draws on one memory pool
        return _Graph(graph, static, outputs)
