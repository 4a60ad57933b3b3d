"""Static-shape steps (step modes "static" and "graph"): which steps take the fixed shapes, the padding step each
shape is captured on, where a captured step's inputs sit in the transfer's resident buffer, and the capture of
every shape when the engine starts. The step itself is the model runner's; this is what fixes its shapes.

A static step's rows are padded to a batch-size bucket, every row's candidates sit in one grid of graph_k
columns (the RM reads all of it: cells past a row's k are computed, never chosen), the gate's array is always
there (+inf: no gate) and the block tables have a buffer as wide as the context (a step sends the columns in
use; the kernels split each row's own context, however wide the table). Its shape is then (batch bucket,
greedy or sampled) alone, few enough to capture them all at start-up, largest bucket first. A step that does
not fit (a row's k above graph_k, more rows than the largest bucket) runs dynamically. Padding rows touch only
the spare cache block and the spare logits row."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from .cuda_graphs import batch_bucket, buckets_upto
from .step_inputs import layout_of

logger = logging.getLogger(__name__)

# A captured step's inputs, in the order its region of the resident transfer buffer lays them out (those a step
# has; the block tables, narrower than their buffer, are copied in): the ARGS step, and the two-trunk LM decode
# (graph argument <- step array).
ARGS_INPUTS = ("k", "w", "temp", "gumbel", "gate", "pos", "rm_slots", "rm_w", "slot")
DECODE_INPUTS = {"ids": "lm_ids", "pos": "lm_pos", "slots": "lm_slots", "slot": "lm_slot"}
DEFAULT_CONTEXT = 4096  # positions a static step's block tables cover when the models state no context length


def args_region(a: dict) -> list[str]:
    """The ARGS graph's inputs a step has, in region order."""
    return [n for n in ARGS_INPUTS if n in a]


class StaticShapes:
    """graph_k: the candidate grid's width (rows with k up to it take the static shapes)."""

    def __init__(self, graph_k: int, vocab_size: int):
        if not isinstance(graph_k, int) or graph_k < 1:
            raise ValueError(f"graph_k must be an integer >= 1, got {graph_k!r}")
        self.graph_k = min(graph_k, vocab_size)
        self.table_width = 0  # the block tables' buffer width (set by `size`)
        self.stats: dict | None = None  # what `capture` took (count, seconds, memory)
        self._regions: list[int] = []  # the graphs' input regions in the resident transfer buffer, once captured
        self._eager_k: set[int] = set()  # the k above graph_k that made a step run dynamically (logged once)

    def size(self, num_blocks: int, block_size: int, max_context: int | None) -> None:
        """The block tables' width: the blocks of the longest sequence (max_context, else DEFAULT_CONTEXT: a
        longer one runs dynamically), within the cache."""
        self.table_width = min(num_blocks, -(-((max_context or DEFAULT_CONTEXT) + 1) // block_size))

    @property
    def captured(self) -> bool:
        return bool(self._regions)

    def fits(self, ks: list[int], table_width: int) -> bool:
        """Does a step whose rows have these k and whose longest block table is this wide take the static
        shapes?"""
        if batch_bucket(len(ks)) is None:
            return False
        k = max(ks)
        if k > self.graph_k:
            if k not in self._eager_k:
                self._eager_k.add(k)
                logger.warning("k=%d is above graph_k=%d: steps with such a row run dynamically (uncaptured); set "
                               "graph_k to the largest k you serve", k, self.graph_k)
            return False
        return table_width <= self.table_width

    def regions(self, a: dict) -> list[tuple[list[str], int]]:
        """A static step's arrays a -> where its graphs' inputs go in the resident transfer buffer (none before
        the graphs are captured)."""
        if not self._regions:
            return []
        regions = [(args_region(a), self._regions[0])]
        if "lm_slot" in a:
            regions.append((list(DECODE_INPUTS.values()), self._regions[1]))
        return regions

    def padding_step(self, runner, rows: int, sampled: bool) -> dict[str, np.ndarray]:
        """A static step of padding rows alone: the arrays (names, dtypes, shapes) the runner's prepare makes for a
        real step of that bucket (the block tables at their full width), with values that touch only the spare
        block and the spare logits row; with two trunks, the LM decode's too."""
        K, spare_slot = self.graph_k, runner.spare_slot
        a = {"k": np.full(rows, K, dtype=np.int32), "w": np.zeros(rows), "temp": np.full(rows, float(sampled))}
        if sampled:
            a["gumbel"] = np.zeros((rows, K))
        a["gate"] = np.full(rows, math.inf)
        a["pos"] = np.zeros(rows, dtype=np.int32)
        a["rm_slots"] = np.full(rows, spare_slot, dtype=np.int64)
        weights = runner.reward_model.weights
        if weights is not None:  # multi-objective: every row's weights
            a["rm_w"] = np.zeros((rows, len(weights)))
        a["slot"] = np.full(rows, runner.next_logits.spare, dtype=np.int64)
        a["tables"] = np.full((rows, self.table_width), runner.spare_block, dtype=np.int32)
        if not runner.shared:
            a |= {"lm_ids": np.zeros(rows, dtype=np.int64), "lm_pos": a["pos"], "lm_slots": a["rm_slots"],
                  "lm_slot": a["slot"], "lm_tables": a["tables"]}
        return a

    def capture(self, runner, max_num_seqs: int) -> int:
        """Capture every static shape of the runner's step, largest batch bucket first: the ARGS step for each
        bucket x {greedy, sampled} and, with two trunks, the LM decode for each bucket. Their inputs live in the
        transfer's resident buffer, where each step's one copy writes them. Logs the count, the time and (CUDA)
        the memory they took. -> the number of graphs."""
        t0 = time.perf_counter()
        cuda = runner.device.type == "cuda"
        free = torch.cuda.mem_get_info(runner.device)[0] if cuda else 0
        buckets = buckets_upto(max_num_seqs)
        largest = self.padding_step(runner, buckets[0], True)
        sizes = [layout_of({n: largest[n] for n in args_region(largest)})[1]]
        if not runner.shared:
            sizes.append(layout_of({n: largest[n] for n in DECODE_INPUTS.values()})[1])
        # the rest of a step's arrays: the tables (x2: the LM decode's), prefill and controls; more is rare and
        # takes a fresh buffer, its graph inputs then copied in
        self._regions = runner.transfer.make_resident(sizes, 2 * largest["tables"].nbytes + 2**20)
        # one block-table buffer for every graph (each bucket its leading rows; a step copies its tables in)
        tables = torch.from_numpy(largest["tables"]).to(runner.device)  # [largest bucket, table_width]
        for rows in buckets:
            for sampled in (True, False):
                a = self.padding_step(runner, rows, sampled)
                t = runner.transfer.pack(a, self.regions(a))
                runner.args_graphs.record(("args", rows, sampled), (self.graph_k, None, None),
                                          {n: t[n] for n in args_region(a)} | {"tables": tables[:rows]},
                                          resident=args_region(a) + ["tables"])
            if not runner.shared:  # the same padding step's LM decode arrays (t: the last pack's)
                runner.decode_graphs.record(("decode", rows), (), {n: t[m] for n, m in DECODE_INPUTS.items()} |
                                            {"tables": tables[:rows]}, resident=list(DECODE_INPUTS) + ["tables"])
        if cuda:  # the warm-up runs' blocks, cached outside the graphs' pool
            torch.cuda.empty_cache()
        n = len(runner.args_graphs.graphs) + len(runner.decode_graphs.graphs)
        used = free - torch.cuda.mem_get_info(runner.device)[0] if cuda else 0
        self.stats = {"graphs": n, "capture_s": time.perf_counter() - t0, "memory_bytes": used,
                      "batch_buckets": buckets[::-1], "graph_k": self.graph_k, "table_width": self.table_width}
        logger.info("CUDA graphs: %(graphs)d captured at start-up in %(capture_s).1f s (batch buckets %(batch_buckets)s"
                    " x greedy/sampled, candidate grid %(graph_k)d, block tables %(table_width)d wide), "
                    "%(memory_MiB).0f MiB", {**self.stats, "memory_MiB": used / 2**20})
        return n

    def peak_bytes(self, runner, max_num_seqs: int, max_context: int | None) -> int:
        """CUDA: the memory the largest static step takes beyond the weights and caches (its activations, what the
        graphs' pool will hold), measured by running it once on a one-block cache with block tables of the real
        width, before the real caches are sized (the engine takes it out of the cache budget). Resets the
        device's peak-memory statistics."""
        runner.allocate_caches(1, 1, max_num_seqs)
        self.size(2**62, runner.block_size, max_context)  # the real width (the cache's blocks not known yet)
        device = runner.device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t = runner.transfer.pack(self.padding_step(runner, buckets_upto(max_num_seqs)[0], True))
        runner.args_core(self.graph_k, None, None, **{n: t[n] for n in args_region(t) + ["tables"]})
        if not runner.shared:
            runner.lm_decode_core(**{n: t[m] for n, m in DECODE_INPUTS.items()}, tables=t["lm_tables"])
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        runner.free_caches()
        torch.cuda.empty_cache()
        return peak
