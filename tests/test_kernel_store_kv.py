"""kernels/store_kv.py against its torch reference."""
import pytest
import torch
from kernel_util import device_dtype_params, devices

from args_engine.kernels.store_kv import store_kv, store_kv_ref


def _caches(NB, BS, H, D, dtype, device):
    g = torch.Generator().manual_seed(0)
    kc = torch.randn(NB, BS, H, D, generator=g, dtype=torch.float64).to(dtype).to(device)
    return kc, (kc * 2).contiguous()


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("H,D", [(1, 16), (2, 64), (3, 24)])
def test_matches_ref(device, dtype, H, D):
    NB, BS, N = 4, 4, 5
    g = torch.Generator().manual_seed(H * D)
    key = torch.randn(N, H, D, generator=g, dtype=torch.float64).to(dtype).to(device)
    value = torch.randn(N, H, D, generator=g, dtype=torch.float64).to(dtype).to(device)
    slots = torch.tensor([3, -1, 15, 0, 9], device=device)
    kc, vc = _caches(NB, BS, H, D, dtype, device)
    rk, rv = kc.clone(), vc.clone()
    store_kv(key, value, kc, vc, slots)
    store_kv_ref(key, value, rk, rv, slots)
    assert torch.equal(kc, rk) and torch.equal(vc, rv)


@pytest.mark.parametrize("device", devices())
def test_strided_rows(device):
    # K and V sliced out of a fused projection: rows strided, heads contiguous.
    qkv = torch.randn(3, 4, 2, 16, device=device)
    key, value = qkv[:, 1], qkv[:, 2]
    slots = torch.tensor([7, 0, -1], device=device)
    kc, vc = _caches(2, 4, 2, 16, torch.float32, device)
    rk, rv = kc.clone(), vc.clone()
    store_kv(key, value, kc, vc, slots)
    store_kv_ref(key, value, rk, rv, slots)
    assert torch.equal(kc, rk) and torch.equal(vc, rv)


def test_bad_inputs():
    k = torch.randn(2, 2, 16)
    kc, vc = _caches(2, 4, 2, 16, torch.float32, "cpu")
    s = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv(k, k, kc, vc, s.int())
    with pytest.raises(ValueError, match="value"):
        store_kv(k, k.double(), kc, vc, s)
    with pytest.raises(ValueError, match="key_cache"):
        store_kv(k, k, kc[:, :, :1], vc, s)
    with pytest.raises(ValueError, match="key_cache"):
        store_kv(k, k, kc.transpose(0, 1), vc, s)
    with pytest.raises(ValueError, match="key"):
        store_kv(torch.randn(2, 16, 2).transpose(1, 2), k, kc, vc, s)
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv(k, k, kc, vc, s[:1])
    with pytest.raises(ValueError, match="device"):  # a meta tensor stands in for another device
        store_kv(k, k, kc, vc, s.to("meta"))
