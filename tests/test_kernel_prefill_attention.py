"""kernels/prefill_attention.py against the per-chunk torch path (paged_ops.chunk_attention): several chunks of
different lengths and start positions in one launch, GQA, multi-tile contexts, float16 under the interpreter."""
import pytest
import torch
from kernel_util import device_dtype_params, tol

from args_engine.kernels.prefill_attention import prefill_attention
from args_engine.models.paged_ops import chunk_attention


def _case(chunks, Hq, Hkv, D, BS, dtype, device, seed=0):
    """chunks: (start, length) per sequence; the cache holds every position up to each chunk's end."""
    g = torch.Generator().manual_seed(seed)
    MB = max((s + n + BS - 1) // BS for s, n in chunks)
    NB = len(chunks) * MB + 2
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)  # noqa: E731
    kc, vc = rnd(NB, BS, Hkv, D), rnd(NB, BS, Hkv, D)
    tables = torch.randperm(NB, generator=g)[:len(chunks) * MB].view(len(chunks), MB).to(torch.int32).to(device)
    N = sum(n for _, n in chunks)
    q = rnd(N, Hq, D)
    cu = torch.tensor([0] + [sum(n for _, n in chunks[:i + 1]) for i in range(len(chunks))], dtype=torch.int32,
                      device=device)
    starts = torch.tensor([s for s, _ in chunks], dtype=torch.int32, device=device)
    return q, kc, vc, tables, cu, starts


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("chunks,Hq,Hkv,D,BS", [
    ([(0, 5)], 4, 4, 16, 4),                       # one prompt, one chunk
    ([(0, 7), (12, 3), (3, 1)], 8, 2, 16, 4),      # continuing chunks after a prefix, a 1-token chunk; GQA 4
    ([(0, 40), (250, 37)], 4, 2, 24, 16),          # several query tiles; ~290 keys over several key tiles; D 24
])
def test_matches_the_per_chunk_path(device, dtype, chunks, Hq, Hkv, D, BS):
    q, kc, vc, tables, cu, starts = _case(chunks, Hq, Hkv, D, BS, dtype, device)
    scale = D ** -0.5
    out = prefill_attention(q, kc, vc, tables, cu, starts, max(n for _, n in chunks), scale)
    ref = torch.cat([chunk_attention(q[cu[i]:cu[i + 1]].double(), kc.double(), vc.double(), tables[i], s, scale)
                     for i, (s, _) in enumerate(chunks)]).to(dtype)
    t = tol(dtype)
    torch.testing.assert_close(out, ref, atol=t, rtol=t)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_soft_cap(device, dtype):
    chunks = [(0, 9), (20, 4)]
    q, kc, vc, tables, cu, starts = _case(chunks, 4, 2, 16, 4, dtype, device, seed=3)
    q = q * 4
    out = prefill_attention(q, kc, vc, tables, cu, starts, 9, 0.25, softcap=2.0)
    ref = torch.cat([chunk_attention(q[cu[i]:cu[i + 1]].double(), kc.double(), vc.double(), tables[i], s, 0.25,
                                     softcap=2.0) for i, (s, _) in enumerate(chunks)]).to(dtype)
    t = max(tol(dtype), 1e-6)  # the torch path takes a capped softmax in float32, as HF's Gemma 2 does
    torch.testing.assert_close(out, ref, atol=t, rtol=t)


def test_bad_inputs():
    q, kc, vc, tables, cu, starts = _case([(0, 4)], 4, 2, 16, 4, torch.float32, "cpu")
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        prefill_attention(q, kc, vc, tables, cu.long(), starts, 4, 0.25)
    with pytest.raises(ValueError, match="whole GQA group"):
        prefill_attention(q[:, :3], kc, vc, tables, cu, starts, 4, 0.25)


def test_index_tensors_must_be_contiguous():
    # a block table read at + i with stride(1) = 2 would use other entries as block ids: wrong output, no error
    q, kc, vc, tables, cu, starts = _case([(0, 4), (3, 5)], 4, 2, 16, 4, torch.float32, "cpu")
    wide = torch.stack([tables, tables], dim=-1).flatten(1)[:, ::2]  # same values, stride(1) = 2
    assert torch.equal(wide, tables) and wide.stride(1) == 2
    with pytest.raises(ValueError, match="block_tables must be contiguous along its last dim"):
        prefill_attention(q, kc, vc, wide, cu, starts, 5, 0.25)
    for bad_cu, bad_starts in ((cu.repeat_interleave(2)[::2], starts), (cu, starts.repeat_interleave(2)[::2])):
        with pytest.raises(ValueError, match="cu_seqlens and starts must be contiguous"):
            prefill_attention(q, kc, vc, tables, bad_cu, bad_starts, 5, 0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_tiles_for_fp32_and_fp64_are_small(dtype):
    # fp32 / fp64 dots are FMA loops over register operands: [64, 64] tiles spill kilobytes per thread on sm_90
    # (test_kernel_compile_sm90 compiles these choices); the interpreter keeps its big tiles
    from args_engine.kernels.prefill_attention import prefill_tiles
    for D in (64, 128, 256):
        bm, bn, _ = prefill_tiles(dtype, D, 512, sms=132)
        assert bm * bn <= 16 * 32, (D, bm, bn)
    assert prefill_tiles(torch.bfloat16, 128, 512, sms=132)[:2] == (64, 64)
    assert prefill_tiles(torch.bfloat16, 256, 512, sms=132)[:2] == (64, 32)  # D = 256 spills at [64, 64]
    assert prefill_tiles(dtype, 128, 512, sms=None)[:2] == (32, 128)
