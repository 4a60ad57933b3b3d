"""A step's metadata, moved to the device in one copy.

Every per-step array (token ids, positions, slots, block tables, k, w, temperature, Gumbel noise) is written
into one host buffer, pinned on CUDA, and copied with a single non-blocking transfer; the device tensors are
views of the copied bytes. A `torch.tensor(list, device="cuda")` per array would block the host once each.

Reusing one pinned buffer is safe because every step ends with a blocking device-to-host read of its chosen
tokens, which waits for the previous step's copy too."""
from __future__ import annotations

import numpy as np
import torch

_ALIGN = 16  # every array starts on a 16-byte boundary, so each view is aligned for its dtype


class StepTransfer:
    """Builds one step's packed buffer: add() arrays, then to_device() once. Counts transfers (a test checks
    one per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pinned = torch.empty(0, dtype=torch.uint8)
        self.num_transfers = 0

    def pack(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """name -> host array (any shape, any numeric dtype) => name -> device tensor of the same shape/dtype."""
        layout, size = {}, 0
        for name, a in arrays.items():
            layout[name] = (size, a)
            size += -(-a.nbytes // _ALIGN) * _ALIGN
        host = self._host_buffer(size)
        flat = host.numpy()
        for off, a in layout.values():
            flat[off:off + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        if self.device.type == "cpu":
            dev = host
        else:
            dev = torch.empty(size, dtype=torch.uint8, device=self.device)
            dev.copy_(host, non_blocking=True)
        self.num_transfers += 1
        return {name: _view(dev, off, a) for name, (off, a) in layout.items()}

    def _host_buffer(self, size: int) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.empty(size, dtype=torch.uint8)  # fresh: the step's views point into it
        if self._pinned.numel() < size:
            self._pinned = torch.empty(max(size, 2 * self._pinned.numel()), dtype=torch.uint8).pin_memory()
        return self._pinned[:size]


def _view(buf: torch.Tensor, off: int, a: np.ndarray) -> torch.Tensor:
    dtype = _TORCH[a.dtype.type]
    return buf[off:off + a.nbytes].view(dtype).view(a.shape)


_TORCH = {np.int32: torch.int32, np.int64: torch.int64, np.float32: torch.float32, np.float64: torch.float64}


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
