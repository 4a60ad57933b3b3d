"""kernels/topk_logprobs.py against its torch reference (interpreter on CPU; compiled on CUDA)."""
import pytest
import torch
from kernel_util import device_dtype_params, devices

from args_engine.kernels.topk_logprobs import topk_logprobs, topk_logprobs_ref


def _check(logits, k, split=None):
    v, i = topk_logprobs(logits, k, split=split)
    rv, ri = topk_logprobs_ref(logits, k)
    assert v.dtype == rv.dtype and i.dtype == torch.int64 and v.shape == i.shape == (logits.shape[0], k)
    torch.testing.assert_close(v, rv, atol=1e-12 if logits.dtype == torch.float64 else 1e-4, rtol=0)  # fp32 math
    if logits.dtype in (torch.float32, torch.float64):
        assert torch.equal(i, ri)
    else:  # half types: equal logits may tie differently after rounding; the chosen logits must agree
        assert torch.equal(logits.gather(1, i), logits.gather(1, ri))


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("B,V,k,split", [(3, 99, 1, None), (2, 1000, 10, None), (2, 4099, 7, 3), (1, 100, 64, None),
                                         (2, 70, 64, 2), (1, 20, 20, None)])
def test_matches_ref(device, dtype, B, V, k, split):
    g = torch.Generator().manual_seed(V + k)
    logits = (3 * torch.randn(B, V, generator=g, dtype=torch.float64)).to(dtype).to(device)
    _check(logits, k, split)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("split", [None, 4])
def test_ties_and_neg_inf(device, split):
    logits = torch.zeros(3, 64, device=device)
    logits[0, 40:] = 1.0  # 24 equal maxima: the lowest ids come first
    logits[1, :] = float("-inf")
    logits[1, [5, 50]] = 2.0  # two finite entries, then -inf ones by id
    logits[2, ::2] = float("-inf")
    v, i = topk_logprobs(logits, 8, split=split)
    assert i[0].tolist() == list(range(40, 48))
    assert i[1].tolist() == [5, 50, 0, 1, 2, 3, 4, 6]
    assert torch.isneginf(v[1, 2:]).all() and torch.allclose(v[1, :2], torch.full((2,), -0.6931472, device=device))
    assert i[2].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    _check(logits, 8, split)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("split", [None, 3])
def test_many_tiles(device, dtype, split):
    """V around 20k: several blocks per program (and several programs per row)."""
    g = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(2, 20011, generator=g, dtype=torch.float64)).to(dtype).to(device)
    _check(logits, 10, split)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("split", [None, 4])
def test_nan_counts_as_neg_inf(device, split):
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(2)).to(device)
    logits[0, ::3] = float("nan")
    logits[1, :] = float("nan")
    logits[1, 7] = 1.0
    v, i = topk_logprobs(logits, 5, split=split)
    assert not v.isnan().any() and not logits.gather(1, i[:1]).isnan().any()
    assert i[1, 0] == 7 and v[1, 0] == 0.0 and torch.isneginf(v[1, 1:]).all()
    _check(logits, 5, split)
    # the torch path (CPU engine, and k > 64 on any device) agrees
    from args_engine.decoding.common import topk_logprobs as torch_topk
    tv, ti = torch_topk(logits, 5)
    assert torch.equal(ti[0], i[0]) and ti[1, 0] == 7
    torch.testing.assert_close(tv, v)


@pytest.mark.parametrize("device", devices())
def test_non_contiguous_rows(device):
    base = torch.randn(4, 300, generator=torch.Generator().manual_seed(1)).to(device)
    _check(base[::2, :257], 5)


@pytest.mark.parametrize("bad", [0, 65, 101, 2.0, True])
def test_bad_k(bad):
    with pytest.raises(ValueError, match="k"):
        topk_logprobs(torch.randn(2, 100), bad)


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        topk_logprobs(torch.randn(100), 5)
    with pytest.raises(ValueError, match="float"):
        topk_logprobs(torch.randint(0, 5, (2, 100)), 5)
    with pytest.raises(ValueError, match="contiguous"):
        topk_logprobs(torch.randn(100, 2).t(), 5)
    with pytest.raises(ValueError, match="V"):
        topk_logprobs(torch.randn(2, 5), 6)
