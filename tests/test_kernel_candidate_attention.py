"""kernels/candidate_attention.py against its torch reference: paged prefix + each query's own key."""
import pytest
import torch
from kernel_util import device_dtype_params, devices, tol

from args_engine.kernels.candidate_attention import candidate_attention, candidate_attention_ref


def _inputs(B, K, Hq, Hkv, D, BS, ctxs, dtype, device, NB=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    MB = max(1, max((c + BS - 1) // BS for c in ctxs))
    NB = NB or B * MB + 3

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)

    q, kn, vn = rnd(B, K, Hq, D), rnd(B, K, Hkv, D), rnd(B, K, Hkv, D)
    kc, vc = rnd(NB, BS, Hkv, D), rnd(NB, BS, Hkv, D)
    bt = torch.randperm(NB, generator=g)[:B * MB].view(B, MB).to(torch.int32).to(device)  # shuffled blocks
    cl = torch.tensor(ctxs, dtype=torch.int32, device=device)
    return q, kn, vn, kc, vc, bt, cl


def _check(args, split=None, softcap=None, segments=None):
    D = args[0].shape[-1]
    out = candidate_attention(*args, D ** -0.5, split=split, softcap=softcap, segments=segments)
    ref = candidate_attention_ref(*args, D ** -0.5, softcap=softcap, segments=segments)
    assert out.dtype == args[0].dtype and out.shape == args[0].shape
    t = tol(args[0].dtype)
    torch.testing.assert_close(out, ref, atol=t, rtol=t)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("B,K,Hq,Hkv,D,BS,ctxs", [
    (3, 3, 4, 4, 16, 4, [0, 1, 3]),          # no prefix (output = v_new), one token, BS - 1
    (3, 10, 8, 4, 64, 16, [16, 17, 49]),      # BS, BS + 1, several blocks; GQA group 2
    (2, 1, 8, 2, 16, 8, [40, 7]),             # K = 1 (LM decode); group 4
    (1, 5, 4, 1, 24, 16, [33]),               # D = 24 padded to a 32-wide tile; group 4
])
def test_matches_ref(device, dtype, B, K, Hq, Hkv, D, BS, ctxs):
    _check(_inputs(B, K, Hq, Hkv, D, BS, ctxs, dtype, device))


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("split", [2, 5])
def test_split_matches_ref(device, dtype, split):
    # Splits past a row's context are empty; context 0 leaves every split empty.
    _check(_inputs(3, 4, 4, 2, 16, 4, [37, 0, 5], dtype, device, seed=split), split=split)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_a_row_in_a_wide_table_splits_its_own_context(device, dtype, monkeypatch):
    """A captured graph's block tables are as wide as the model's context, whatever a row's length. The split
    divides each row's own context among the programs (at least two key tiles each), not the table's width: a
    1000-token row in a table of 4096 positions, split 4, keeps the 4 programs busy, not one; a 40-token row
    keeps one, and its idle programs store nothing. (The output: the ref's.)"""
    import args_engine.kernels.candidate_attention as mod
    args = list(_inputs(2, 3, 4, 2, 16, 16, [1000, 40], dtype, device, NB=300))
    wide = torch.full((2, 256), 299, dtype=torch.int32, device=device)  # 256 blocks of 16: 4096 positions
    wide[:, :args[5].shape[1]] = args[5]
    args[5] = wide
    partials = []

    class Torch:  # the module's torch, recording the partial sums' buffers (zeroed: what is not stored stays 0)
        def __getattr__(self, name):
            return getattr(torch, name)

        def empty_like(self, x, *a, **kw):
            out = torch.zeros_like(x, *a, **kw)
            partials.append(out)  # part_l [B, Hkv * RT, split, M]: each program's softmax mass
            return out
    monkeypatch.setattr(mod, "torch", Torch())
    _check(args, split=4)
    mass = partials[0]  # the kernel's (the ref's own buffer comes after)
    assert mass.shape[2] == 4
    busy = (mass[:, 0, :, 0] > 0).tolist()  # per row, first kv head: which programs saw keys
    assert busy == [[True, True, True, True], [True, False, False, False]], busy


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("B,K,Hq,Hkv,D,BS,ctxs,split", [
    (2, 3, 4, 2, 16, 16, [300, 287], None),    # several BLOCK_N tiles of the prefix
    (2, 3, 4, 2, 16, 16, [300, 5], 3),         # ... split over programs
    (1, 64, 16, 2, 16, 4, [9], None),          # K x group = 512 query rows: 8 row tiles of 64
    (2, 20, 8, 2, 16, 4, [13, 0], 2),          # 80 rows: a partial second tile, split
])
def test_multi_tile(device, dtype, B, K, Hq, Hkv, D, BS, ctxs, split):
    _check(_inputs(B, K, Hq, Hkv, D, BS, ctxs, dtype, device, seed=K), split=split)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("split", [None, 3])
def test_soft_cap(device, dtype, split):
    """Gemma 2's cap * tanh(score / cap), the own key's score included."""
    args = list(_inputs(2, 4, 4, 2, 16, 4, [21, 0], dtype, device, seed=9))
    args[0] = args[0] * 4  # large scores, so the cap bends them
    _check(args, split=split, softcap=2.0)


@pytest.mark.parametrize("device", devices())
def test_own_key_only(device):
    # With no prefix each candidate attends only to itself: output = its own value, whatever the others hold.
    q, kn, vn, kc, vc, bt, cl = _inputs(1, 4, 2, 1, 16, 4, [0], torch.float32, device)
    out = candidate_attention(q, kn, vn, kc, vc, bt, cl, 0.25)
    torch.testing.assert_close(out, vn.expand(-1, -1, 2, -1), atol=0, rtol=0)


@pytest.mark.parametrize("device", devices())
def test_strided_queries(device):
    q, kn, vn, kc, vc, bt, cl = _inputs(2, 3, 4, 2, 16, 4, [6, 9], torch.float32, device)
    qkv = torch.cat([q, kn, vn], dim=2)  # a fused projection: q, k, v are strided views
    _check((qkv[:, :, :4], qkv[:, :, 4:6], qkv[:, :, 6:], kc, vc, bt, cl))


def _segments(lens_per_row, device):
    """Ragged tails as segment ids [B, K]: row b holds tails of the given lengths, then padding (own segments)."""
    K = max(sum(lens) for lens in lens_per_row)
    rows = []
    for lens in lens_per_row:
        seg = [i for i, n in enumerate(lens) for _ in range(n)]
        rows.append(seg + list(range(len(lens), len(lens) + K - len(seg))))
    return torch.tensor(rows, dtype=torch.int32, device=device)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("lens,ctxs,split,softcap", [
    ([[1, 2, 3], [2, 2]], [5, 0], None, None),     # ragged tails; a row with no prefix
    ([[4], [1, 1, 1, 1]], [17, 33], 3, None),     # one long tail; all-ones (the plain case); split prefix
    ([[2, 1, 3, 1], [3, 3, 1]], [9, 12], None, 2.0),  # soft cap on the tree's scores too
])
def test_tree_segments_match_ref(device, dtype, lens, ctxs, split, softcap):
    """A bridged RM's ragged candidate tails: each new token sees the prefix and its segment's earlier tokens."""
    seg = _segments(lens, device)
    B, K = seg.shape
    args = _inputs(B, K, 4, 2, 16, 4, ctxs, dtype, device, seed=K)
    _check(args, split=split, softcap=softcap, segments=seg)


@pytest.mark.parametrize("device", devices())
def test_tree_matches_the_torch_path_and_distinct_segments_are_the_plain_case(device):
    from args_engine.models.paged_ops import candidate_attention_torch
    seg = _segments([[2, 3], [1, 1, 2]], device)
    args = _inputs(2, 5, 4, 2, 16, 4, [7, 3], torch.float64, device, seed=3)
    out = candidate_attention(*args, 0.25, segments=seg)
    torch.testing.assert_close(out, candidate_attention_torch(*args, 0.25, segments=seg.cpu().to(device)),
                               atol=1e-12, rtol=1e-12)
    plain = torch.arange(5, dtype=torch.int32, device=device).repeat(2, 1)  # every token its own segment
    torch.testing.assert_close(candidate_attention(*args, 0.25, segments=plain), candidate_attention(*args, 0.25),
                               atol=1e-12, rtol=1e-12)
    # the tree matters: a token that sees its segment's earlier key differs from one that does not
    assert not torch.allclose(out[0, 1], candidate_attention(*args, 0.25)[0, 1])


def test_bad_inputs():
    q, kn, vn, kc, vc, bt, cl = _inputs(2, 3, 4, 2, 16, 4, [6, 9], torch.float32, "cpu")
    with pytest.raises(ValueError, match="block_tables"):
        candidate_attention(q, kn, vn, kc, vc, bt.long(), cl, 1.0)
    with pytest.raises(ValueError, match="context_lens"):
        candidate_attention(q, kn, vn, kc, vc, bt, cl.long(), 1.0)
    with pytest.raises(ValueError, match="k_new"):
        candidate_attention(q, kn[:, :2], vn, kc, vc, bt, cl, 1.0)
    with pytest.raises(ValueError, match="v_new"):
        candidate_attention(q, kn, vn.double(), kc, vc, bt, cl, 1.0)
    with pytest.raises(ValueError, match="multiple"):
        candidate_attention(q[:, :, :3], kn, vn, kc, vc, bt, cl, 1.0)
    with pytest.raises(ValueError, match="key_cache"):
        candidate_attention(q, kn, vn, kc.transpose(0, 1), vc.transpose(0, 1), bt, cl, 1.0)
    with pytest.raises(ValueError, match="q"):
        candidate_attention(q[0], kn, vn, kc, vc, bt, cl, 1.0)
    with pytest.raises(ValueError, match="device"):  # a meta tensor stands in for another device
        candidate_attention(q, kn, vn, kc, vc, bt.to("meta"), cl, 1.0)
    with pytest.raises(ValueError, match="segments must be a contiguous int32"):
        candidate_attention(q, kn, vn, kc, vc, bt, cl, 1.0, segments=torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_tiles_for_fp32_and_fp64_are_small(dtype):
    # fp32 / fp64 dots are FMA loops over register operands: [64, 64] tiles spill kilobytes per thread on sm_90
    # and fp64's need more shared memory than a block has (test_kernel_compile_sm90 compiles these choices)
    from args_engine.kernels.candidate_attention import candidate_tiles
    for D in (64, 128, 256):
        for rows in (1, 10, 40, 80):
            m, bn, _ = candidate_tiles(dtype, D, rows, sms=132)
            assert m * bn <= 16 * 32, (D, rows, m, bn)
    assert candidate_tiles(torch.bfloat16, 128, 40, sms=132)[:2] == (64, 64)
    assert candidate_tiles(dtype, 128, 40, sms=None)[:2] == (64, 128)
