"""Python handles to the C++ ops of args_engine._C (torch.ops.args_engine.*), with torch references."""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers torch.ops.args_engine)
from .kernels.refs import store_kv_ref  # noqa: F401  (re-exported: the ops' oracle)


def store_kv(key, value, key_cache, value_cache, slot_mapping) -> None:
    """Write key/value [N, H, D] into paged caches [blocks, block_size, H, D] at slot_mapping [N] (-1 skips).

    On CUDA, slot_mapping may be a host tensor (checked like on CPU) or a device tensor (no sync: out-of-range
    slots are skipped; ARGS_ENGINE_DEBUG_CHECKS=1 checks them on the host)."""
    torch.ops.args_engine.store_kv(key, value, key_cache, value_cache, slot_mapping)


def copy_blocks(key_cache, value_cache, block_mapping) -> None:
    """Copy whole blocks: block_mapping [M, 2] of (src, dst) (copy-on-write of shared prefix blocks).

    CPU applies the pairs in order; CUDA runs them in parallel, so a destination must not be another pair's
    source or destination (checked for a host mapping; a device mapping is range-guarded in the kernel)."""
    torch.ops.args_engine.copy_blocks(key_cache, value_cache, block_mapping)


def has_copy_blocks(device: torch.device) -> bool:
    """Whether the extension was built with copy_blocks for this device type (CUDA ops are optional)."""
    key = "CUDA" if device.type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key("args_engine::copy_blocks", key)


def copy_blocks_ref(key_cache, value_cache, block_mapping) -> None:
    for src, dst in block_mapping.tolist():
        key_cache[dst] = key_cache[src]
        value_cache[dst] = value_cache[src]
