"""A step's metadata, moved to the device in one copy.

Every per-step array (token ids, positions, slots, block tables, k, w, temperature, Gumbel noise) is written
into one pinned host buffer and copied with a single non-blocking transfer; the device tensors are views of the
copied bytes. A `torch.tensor(list, device="cuda")` per array would block the host once each."""
from __future__ import annotations

import numpy as np
import torch

_ALIGN = 16  # every array starts on a 16-byte boundary, so each view is aligned for its dtype


def layout_of(arrays: dict[str, np.ndarray]) -> tuple[dict, int]:
    """Each array's place in one packed buffer: name -> (offset, dtype, shape, nbytes), 16-byte aligned; and the
    buffer's size in bytes."""
    layout, size = {}, 0
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

    def pack(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """name -> host array (any shape, any numeric dtype) => name -> device tensor of the same shape/dtype."""
        self.num_transfers += 1
        if self.device.type == "cpu":
            return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
        layout, size = layout_of(arrays)
        # A fresh pinned block from torch's caching host allocator: it records the copy's event and hands the
        # block out again only once the copy is done (a step without a read, e.g. prefill alone, may still be
        # copying when the next one packs).
        host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        pack_into(host, arrays, layout)
        dev = torch.empty(size, dtype=torch.uint8, device=self.device)
        dev.copy_(host, non_blocking=True)
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
