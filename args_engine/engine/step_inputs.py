"""A step's metadata, moved to the device in one copy.

Every per-step array (token ids, positions, slots, block tables, k, w, temperature, Gumbel noise) is written
into one pinned host buffer and copied with a single non-blocking transfer; the device tensors are views of the
copied bytes. A `torch.tensor(list, device="cuda")` per array would block the host once each.

With CUDA graphs the copy lands in a resident device buffer whose leading regions are the captured steps' input
buffers: a graphed step's arrays are laid out there at the offsets its graph reads, so the one copy writes
them straight into the graph's buffers."""
from __future__ import annotations

import numpy as np
import torch

_ALIGN = 16  # every array starts on a 16-byte boundary, so each view is aligned for its dtype


def layout_of(arrays: dict[str, np.ndarray], base: int = 0) -> tuple[dict, int]:
    """Each array's place in one packed buffer, from byte `base` on: name -> (offset, dtype, shape, nbytes),
    16-byte aligned; and where the last one ends (the buffer's size, from base 0)."""
    layout, size = {}, base
    for name, a in arrays.items():
        layout[name] = (size, a.dtype, a.shape, a.nbytes)
        size += -(-a.nbytes // _ALIGN) * _ALIGN
    return layout, size


def pack_into(buf: torch.Tensor, arrays: dict[str, np.ndarray], layout: dict) -> None:
    """Write the arrays into a uint8 host buffer at their layout offsets."""
    flat = buf.numpy()
    for name, a in arrays.items():
        off, _, _, nbytes = layout[name]
        flat[off:off + nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def unpack(buf: torch.Tensor, layout: dict) -> dict[str, torch.Tensor]:
    """Views of a packed buffer (host or device) with each array's dtype and shape."""
    return {name: buf[off:off + nbytes].view(_TORCH[dtype.type]).view(shape)
            for name, (off, dtype, shape, nbytes) in layout.items()}


_TORCH = {np.int32: torch.int32, np.int64: torch.int64, np.float32: torch.float32, np.float64: torch.float64}


class StepTransfer:
    """Moves one step's arrays to the device in one copy (none on CPU: the arrays are used in place). Counts
    transfers: a test checks one per step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.num_transfers = 0
        self.resident: torch.Tensor | None = None  # graph mode: the buffer the graphs' inputs live in
        self._tail = 0  # where the arrays outside the regions start in it

    def make_resident(self, region_sizes: list[int], tail: int) -> list[int]:
        """Graph mode: a persistent device buffer of regions (bytes each, in order) that hold the captured steps'
        inputs at fixed offsets, then `tail` bytes for the rest of a step's arrays. -> each region's offset."""
        offsets, end = [], 0
        for n in region_sizes:
            offsets.append(end)
            end += -(-n // _ALIGN) * _ALIGN
        self._tail = end
        self.resident = torch.empty(end + tail, dtype=torch.uint8, device=self.device)
        return offsets

    def pack(self, arrays: dict[str, np.ndarray],
             regions: list[tuple[list[str], int]] = ()) -> dict[str, torch.Tensor]:
        """name -> host array (any shape, any numeric dtype) => name -> device tensor of the same shape/dtype.
        regions (with a resident buffer): (names, offset): those arrays laid out in order from that offset of
        the resident buffer, where a captured graph reads them; the others after the regions. A step that
        outgrows the resident buffer gets a fresh one (the graph then copies its inputs in)."""
        self.num_transfers += 1
        if self.resident is None:
            if self.device.type == "cpu":
                return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
            layout, size = layout_of(arrays)
        else:
            layout = {}
            for names, offset in regions:
                layout.update(layout_of({n: arrays[n] for n in names}, offset)[0])
            rest, size = layout_of({n: a for n, a in arrays.items() if n not in layout}, self._tail)
            layout.update(rest)
        dev = self.resident if self.resident is not None and size <= len(self.resident) else \
            torch.empty(size, dtype=torch.uint8, device=self.device)
        if self.device.type == "cpu":
            pack_into(dev, arrays, layout)
            return unpack(dev, layout)
        # A fresh pinned block from torch's caching host allocator: it records the copy's event and hands the
        # block out again only once the copy is done (a step without a read, e.g. prefill alone, may still be
        # copying when the next one packs).
        host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        pack_into(host, arrays, layout)
        dev[:size].copy_(host, non_blocking=True)
        return unpack(dev, layout)


class HostRead:
    """The step's one blocking device-to-host read. Counts reads (a test checks one per step); on CUDA it is the
    only synchronization `torch.cuda.set_sync_debug_mode("error")` lets through."""

    def __init__(self):
        self.num_reads = 0

    def __call__(self, x: torch.Tensor) -> list:
        self.num_reads += 1
        if not x.is_cuda:
            return x.tolist()
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return x.cpu().tolist()
        finally:
            torch.cuda.set_sync_debug_mode(mode)
