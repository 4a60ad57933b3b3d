"""args_engine._C cache ops against their torch references; bad inputs fail with a message, not a crash."""
import pytest
import torch

from args_engine import ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_store_kv_matches_ref(dtype):
    g = torch.Generator().manual_seed(0)
    kc, vc = torch.zeros(5, 4, 3, 8, dtype=dtype), torch.zeros(5, 4, 3, 8, dtype=dtype)
    key, value = torch.randn(7, 3, 8, generator=g).to(dtype), torch.randn(7, 3, 8, generator=g).to(dtype)
    slots = torch.tensor([0, 3, 4, -1, 19, 7, 12])
    kr, vr = kc.clone(), vc.clone()
    ops.store_kv(key, value, kc, vc, slots)
    ops.store_kv_ref(key, value, kr, vr, slots)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    assert kc.abs().sum() > 0


def test_copy_blocks_matches_ref():
    kc, vc = torch.randn(6, 4, 2, 8), torch.randn(6, 4, 2, 8)
    kr, vr = kc.clone(), vc.clone()
    mapping = torch.tensor([[0, 5], [2, 3]])
    ops.copy_blocks(kc, vc, mapping)
    ops.copy_blocks_ref(kr, vr, mapping)
    assert torch.equal(kc, kr) and torch.equal(vc, vr) and torch.equal(kc[5], kc[0])


def test_bad_inputs_raise():
    kc, vc = torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 3, 8)
    key = torch.randn(2, 3, 8)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.store_kv(key, key, kc, vc, torch.tensor([0, 8]))
    with pytest.raises(RuntimeError, match="int64"):
        ops.store_kv(key, key, kc, vc, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="dtype"):
        ops.store_kv(key.double(), key.double(), kc, vc, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="do not match"):
        ops.store_kv(torch.randn(2, 2, 8), torch.randn(2, 2, 8), kc, vc, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="out of range"):
        ops.copy_blocks(kc, vc, torch.tensor([[0, 2]]))
