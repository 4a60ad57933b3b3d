"""What one engine asks Ray for: a GPU per CUDA device it uses (the LM's, and the RM's when it has its own).
Inside the actor Ray exposes exactly those GPUs, numbered from 0, so `cuda` and `cuda:1` name them."""
from __future__ import annotations


def gpus_per_engine(device: str = "cpu", rm_device: str | None = None) -> int:
    cuda = {_index(d) for d in (device, rm_device) if d is not None and str(d).startswith("cuda")}
    return len(cuda)


def _index(device) -> int:
    name = str(device)
    return int(name.split(":", 1)[1]) if ":" in name else 0
