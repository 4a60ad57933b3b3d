"""kernels/add_rmsnorm.py against its torch reference and Hugging Face's Llama RMSNorm."""
import pytest
import torch
from kernel_util import device_dtype_params, devices
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from args_engine.kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref

# The statistics are float32 whatever the dtype (as HF's), summed in another order than torch: a float32 ulp.
F32_ULP_TOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-6}


def _rand(*shape, dtype, device, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("N,H", [(1, 16), (5, 48), (3, 300), (2, 2048)])
def test_matches_ref(device, dtype, N, H):
    x, res = _rand(N, H, dtype=dtype, device=device), _rand(N, H, dtype=dtype, device=device, seed=1)
    w = _rand(H, dtype=dtype, device=device, seed=2, scale=1.0)
    out, summed = add_rmsnorm(x, res, w, 1e-6)
    ref_out, ref_sum = add_rmsnorm_ref(x, res, w, 1e-6)
    assert torch.equal(summed, ref_sum)  # the add is in the input dtype, as HF's
    assert out.dtype == dtype and out.is_contiguous()
    tol = F32_ULP_TOL[dtype]
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    alone, same = add_rmsnorm(x, None, w, 1e-6)  # no residual: the plain norm
    assert same is x
    torch.testing.assert_close(alone, add_rmsnorm_ref(x, None, w, 1e-6)[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("device", devices())
def test_equals_hf_llama_rmsnorm(device):
    hf = LlamaRMSNorm(64, eps=1e-5).to(device)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(64))
    x, res = torch.randn(7, 64, device=device) * 4, torch.randn(7, 64, device=device)
    out, summed = add_rmsnorm(x, res, hf.weight.detach(), hf.variance_epsilon)
    torch.testing.assert_close(out, hf(res + x), rtol=1e-6, atol=1e-6)
    assert torch.equal(summed, res + x)


@pytest.mark.parametrize("device", devices())
def test_strided_heads(device):
    # Qwen3's per-head q norm reads q heads out of the fused qkv projection: [N, M, D] with strided rows.
    qkv = torch.randn(4, 6, 32, device=device)
    q = qkv[:, :4]
    w = torch.randn(32, device=device)
    out, _ = add_rmsnorm(q, None, w, 1e-6)
    torch.testing.assert_close(out, add_rmsnorm_ref(q, None, w, 1e-6)[0], rtol=1e-6, atol=1e-6)
    assert out.shape == (4, 4, 32) and out.is_contiguous()


def test_bad_inputs():
    x, w = torch.randn(3, 16), torch.randn(16)
    with pytest.raises(ValueError, match="residual"):
        add_rmsnorm(x, torch.randn(3, 8), w, 1e-6)
    with pytest.raises(ValueError, match="residual dtype"):
        add_rmsnorm(x, x.double(), w, 1e-6)
    with pytest.raises(ValueError, match="weight"):
        add_rmsnorm(x, None, w.double(), 1e-6)
    with pytest.raises(ValueError, match="weight"):
        add_rmsnorm(x, None, w[:8], 1e-6)
    with pytest.raises(ValueError, match="contiguous last dim"):
        add_rmsnorm(torch.randn(16, 3).t(), None, torch.randn(3), 1e-6)
    with pytest.raises(ValueError, match="x must be"):
        add_rmsnorm(torch.randn(16), None, w, 1e-6)
    with pytest.raises(ValueError, match="device"):  # a meta tensor stands in for another device
        add_rmsnorm(x, None, w.to("meta"), 1e-6)
