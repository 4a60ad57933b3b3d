"""CUDA cache ops (csrc/cache_ops_cuda.cu) against the CPU ops; skipped without a GPU and a CUDA build.

On the lent H100 image (torch 2.11+cu130, extension built by /opt/gcc g++ 13.3) any C++ exception whose
message formats a number segfaulted unless run with LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
(a toolchain/load-order issue: the CPU-only test_cache_ops error test crashed the same way); with it, all pass."""
import pytest
import torch

import args_engine._C as _C
from args_engine import ops

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and _C.cuda_ops),
                                reason="needs a GPU and args_engine._C built with CUDA")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def caches(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slots_on_gpu", [True, False])
@pytest.mark.parametrize("shape", [(6, 4, 3, 8), (9, 16, 8, 128), (3, 1, 1, 3)])
def test_store_kv_matches_cpu(dtype, slots_on_gpu, shape):
    kc, vc = caches(shape, dtype)
    n_slots, heads, dim = shape[0] * shape[1], shape[2], shape[3]
    g = torch.Generator().manual_seed(1)
    n = min(n_slots, 7)
    slots = torch.randperm(n_slots, generator=g)[:n]
    slots[n // 2] = -1
    key = torch.randn(dim, heads, n, generator=g).to(dtype).permute(2, 1, 0)  # strided key
    value = torch.randn(n, heads, dim, generator=g).to(dtype)
    kc_gpu, vc_gpu = kc.cuda(), vc.cuda()
    ops.store_kv(key, value, kc, vc, slots)
    ops.store_kv(key.cuda(), value.cuda(), kc_gpu, vc_gpu, slots.cuda() if slots_on_gpu else slots)
    assert torch.equal(kc_gpu.cpu(), kc) and torch.equal(vc_gpu.cpu(), vc)


def test_store_kv_empty_and_errors(monkeypatch):
    kc, vc = (t.cuda() for t in caches((2, 4, 3, 8), torch.float32))
    key = torch.randn(2, 3, 8, device="cuda")
    ops.store_kv(key[:0], key[:0], kc, vc, torch.empty(0, dtype=torch.long, device="cuda"))
    with pytest.raises(RuntimeError, match="out of range"):  # host slots: checked like the CPU op
        ops.store_kv(key, key, kc, vc, torch.tensor([0, 8]))
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        ops.store_kv(key.cpu(), key, kc, vc, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="dtype"):
        ops.store_kv(key.half(), key.half(), kc, vc, torch.tensor([0, 1]))
    # Device slots out of range are skipped (no sync to check them) and never written out of bounds.
    before = kc.clone()
    ops.store_kv(key, key, kc, vc, torch.tensor([8, 1], device="cuda"))
    torch.cuda.synchronize()
    assert torch.equal(kc[0, 1], key[1]) and torch.equal(kc.view(8, 3, 8)[0], before.view(8, 3, 8)[0])
    monkeypatch.setenv("ARGS_ENGINE_DEBUG_CHECKS", "1")
    with pytest.raises(RuntimeError, match="out of range"):
        ops.store_kv(key, key, kc, vc, torch.tensor([8, 1], device="cuda"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("map_on_gpu", [True, False])
@pytest.mark.parametrize("shape", [(6, 4, 2, 8), (40, 16, 8, 128), (5, 1, 1, 3)])  # last: 3- or 6-byte rows
def test_copy_blocks_matches_cpu(dtype, map_on_gpu, shape):
    kc, vc = caches(shape, dtype)
    mapping = torch.tensor([[0, 3], [1, 4], [2, 2]])
    kc_gpu, vc_gpu = kc.cuda(), vc.cuda()
    ops.copy_blocks(kc, vc, mapping)
    ops.copy_blocks(kc_gpu, vc_gpu, mapping.cuda() if map_on_gpu else mapping)
    assert torch.equal(kc_gpu.cpu(), kc) and torch.equal(vc_gpu.cpu(), vc)


def test_copy_blocks_errors(monkeypatch):
    kc, vc = (t.cuda() for t in caches((4, 4, 2, 8), torch.float32))
    with pytest.raises(RuntimeError, match="out of range"):
        ops.copy_blocks(kc, vc, torch.tensor([[0, 4]]))
    with pytest.raises(RuntimeError, match="both a destination and a source"):
        ops.copy_blocks(kc, vc, torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(RuntimeError, match="destination twice"):
        ops.copy_blocks(kc, vc, torch.tensor([[0, 1], [2, 1]]))
    before = kc.clone()
    ops.copy_blocks(kc, vc, torch.tensor([[0, 9]], device="cuda"))  # skipped on the device
    torch.cuda.synchronize()
    assert torch.equal(kc, before)
    monkeypatch.setenv("ARGS_ENGINE_DEBUG_CHECKS", "1")
    with pytest.raises(RuntimeError, match="out of range"):
        ops.copy_blocks(kc, vc, torch.tensor([[0, 9]], device="cuda"))


def test_allocator_copy_on_write_pairs_on_gpu():
    a = _C.BlockAllocator(32, 16)
    a.allocate(0, list(range(40)), 40)
    for child in range(1, 5):
        a.fork(0, child)
    pairs = [p for child in range(1, 5) for p in a.ensure(child, 41)]
    assert len(pairs) == 4
    kc, vc = caches((32, 16, 4, 64), torch.bfloat16)
    kc_gpu, vc_gpu = kc.cuda(), vc.cuda()
    ops.copy_blocks(kc, vc, torch.tensor(pairs))
    ops.copy_blocks(kc_gpu, vc_gpu, torch.tensor(pairs, device="cuda"))
    assert torch.equal(kc_gpu.cpu(), kc) and torch.equal(vc_gpu.cpu(), vc)
    slots = a.slots(list(range(5)), [40] * 5)
    key = torch.randn(5, 4, 64).to(torch.bfloat16)
    ops.store_kv(key, key, kc, vc, slots)
    ops.store_kv(key.cuda(), key.cuda(), kc_gpu, vc_gpu, slots.cuda())
    assert torch.equal(kc_gpu.cpu(), kc)


@pytest.mark.parametrize("pairs", [[[0, 1], [1, 2]], [[0, 1], [2, 1]]], ids=["chain", "duplicate-destination"])
def test_copy_blocks_device_map_that_would_race_stops_the_launch(pairs):
    # a device-resident map is not checked on the host (a sync): the kernel checks it and a device assert stops
    # it. A device assert poisons the CUDA context, so the copy runs in a subprocess.
    import subprocess
    import sys
    code = ("import torch; from args_engine import ops; kc = torch.zeros(4, 4, 2, 8, device='cuda'); "
            f"ops.copy_blocks(kc, kc.clone(), torch.tensor({pairs}, device='cuda')); torch.cuda.synchronize()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    said = done.stdout + done.stderr  # the device's assert message is printed on stdout
    assert done.returncode != 0 and ("pairs run in parallel on CUDA" in said or "device-side assert" in said), said
    # the same pairs from the host are refused before any copy, with the host check's message
    kc, vc = (t.cuda() for t in caches((4, 4, 2, 8), torch.float32))
    with pytest.raises(RuntimeError, match="pairs run in parallel on CUDA"):
        ops.copy_blocks(kc, vc, torch.tensor(pairs))
