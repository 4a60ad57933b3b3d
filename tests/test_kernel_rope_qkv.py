"""kernels/rope_qkv.py against its torch reference and the engine's torch rotation (bit for bit on CPU)."""
import pytest
import torch
from kernel_util import device_dtype_params, devices, tol

from args_engine.kernels.rope_qkv import rope_qkv, rope_qkv_ref
from args_engine.models.llama import rope_tables, rotate


def _tables(P, D, dtype, device):
    """HF-style cos/sin for positions 0..P-1 -> rope_tables' (cos, signed sin) [P, 1, D]."""
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = torch.arange(P, dtype=torch.float64)[:, None] * inv[None]
    emb = torch.cat([ang, ang], -1)
    return tuple(t.to(dtype).to(device) for t in rope_tables(emb.cos(), emb.sin()))


def _qkv(N, Hq, Hkv, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(N, Hq + 2 * Hkv, D, generator=g, dtype=torch.float64).to(dtype).to(device)
    return qkv[:, :Hq], qkv[:, Hq:Hq + Hkv], qkv[:, Hq + Hkv:]  # strided views, as the projection leaves them


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("Hq,Hkv,D", [(4, 2, 16), (3, 3, 24), (8, 1, 64)])
def test_matches_ref_with_store(device, dtype, Hq, Hkv, D):
    N, P = 6, 40
    q, k, v = _qkv(N, Hq, Hkv, D, dtype, device, seed=D)
    cos, sin = _tables(P, D, dtype, device)
    rows = torch.tensor([0, 3, 39, 5, 5, 1], device=device)
    slots = torch.tensor([0, 5, -1, 15, 2, 3], device=device)
    kc = torch.randn(4, 4, Hkv, D, dtype=torch.float64).to(dtype).to(device)
    vc = kc * 2
    rk, rv = kc.clone(), vc.clone()
    got = rope_qkv(q, k, v, cos, sin, rows, kc, vc, slots)
    want = rope_qkv_ref(q, k, v, cos, sin, rows, rk, rv, slots)
    for a, b in zip(got, want):
        assert a.is_contiguous()
        if device == "cpu":  # the same formula, no FMA contraction under the interpreter
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=tol(dtype), atol=tol(dtype))
    torch.testing.assert_close(kc, rk, rtol=tol(dtype), atol=tol(dtype))
    assert torch.equal(vc, rv)


@pytest.mark.parametrize("device", devices())
def test_equals_engine_rotation_and_writes_outputs_in_place(device):
    N, Hq, Hkv, D = 5, 4, 2, 32
    q, k, v = _qkv(N, Hq, Hkv, D, torch.float32, device)
    cos, sin = _tables(64, D, torch.float32, device)
    pos = torch.tensor([7, 0, 63, 2, 2], dtype=torch.int32, device=device)
    k_out, v_out = torch.empty(N, Hkv, D, device=device), torch.empty(N, Hkv, D, device=device)
    rq, rk, rv = rope_qkv(q, k, v, cos, sin, pos, k_out=k_out, v_out=v_out)
    assert rk is k_out and rv is v_out
    c, s = cos[pos.long()], sin[pos.long()]
    exact = torch.equal if device == "cpu" else torch.testing.assert_close
    exact(rq, rotate(q, c, s))
    exact(rk, rotate(k, c, s))
    assert torch.equal(rv, v)


@pytest.mark.parametrize("device", devices())
def test_per_token_tables(device):
    # dynamic rope types: tables made per forward, one row per token
    q, k, v = _qkv(3, 2, 1, 16, torch.float64, device)
    cos, sin = _tables(3, 16, torch.float64, device)
    got = rope_qkv(q, k, v, cos, sin, torch.arange(3, device=device))
    want = rope_qkv_ref(q, k, v, cos, sin, torch.arange(3, device=device))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(got, want))


def test_bad_inputs():
    q, k, v = _qkv(2, 2, 1, 16, torch.float32, "cpu")
    cos, sin = _tables(8, 16, torch.float32, "cpu")
    rows = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="rows"):
        rope_qkv(q, k, v, cos, sin, rows.float())
    with pytest.raises(ValueError, match="rows"):
        rope_qkv(q, k, v, cos, sin, rows[:1])
    with pytest.raises(ValueError, match="cos"):
        rope_qkv(q, k, v, cos[..., :8], sin, rows)
    with pytest.raises(ValueError, match="cos/sin dtype"):
        rope_qkv(q, k, v, cos.double(), sin.double(), rows)
    with pytest.raises(ValueError, match="k and v"):
        rope_qkv(q, k[:, :, :8], v, cos, sin, rows)
    with pytest.raises(ValueError, match="even"):
        qo, ko, vo = _qkv(2, 2, 1, 15, torch.float32, "cpu")
        rope_qkv(qo, ko, vo, cos[..., :15], sin[..., :15], rows)
    with pytest.raises(ValueError, match="v dtype"):
        rope_qkv(q, k, v.double(), cos, sin, rows)
    kc = torch.zeros(2, 4, 1, 16)
    with pytest.raises(ValueError, match="slots"):
        rope_qkv(q, k, v, cos, sin, rows, kc, kc.clone(), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="key_cache"):
        rope_qkv(q, k, v, cos, sin, rows, kc[:, :, :, :8], kc.clone(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="k_out"):
        rope_qkv(q, k, v, cos, sin, rows, k_out=torch.empty(2, 1, 8))
    with pytest.raises(ValueError, match="device"):
        rope_qkv(q, k, v, cos, sin, rows.to("meta"))
