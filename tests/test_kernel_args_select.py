"""kernels/args_select.py against its torch reference and against select_candidates' semantics."""
import pytest
import torch
from kernel_util import device_dtype_params, devices

from args_engine.kernels.args_select import args_select, args_select_ref


def _inputs(B, K, L, Hkv, D, dtype, device, seed=0, NB=3, BS=4):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt).to(device)

    score_dt = torch.float64 if dtype == torch.float64 else torch.float32
    logp = -rnd(B, K, dt=score_dt).abs()
    rewards = rnd(B, K, dt=score_dt)
    cand_ids = torch.randint(0, 1000, (B, K), generator=g).to(device)
    k = torch.randint(1, K + 1, (B,), generator=g).to(torch.int32).to(device)
    w = rnd(B, dt=torch.float64).abs()
    temperature = torch.zeros(B, dtype=torch.float64, device=device)
    ck, cv = rnd(L, B, K, Hkv, D), rnd(L, B, K, Hkv, D)
    kc, vc = rnd(L, NB, BS, Hkv, D), rnd(L, NB, BS, Hkv, D)
    slots = torch.randperm(NB * BS, generator=g)[:B].to(device)
    return [logp, rewards, cand_ids, k, w, temperature, None, ck, cv, kc, vc, slots]


def _check(args):
    ref_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = args_select(*args)
    ref = args_select_ref(*ref_args)
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype
        torch.testing.assert_close(o, r, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(args[9], ref_args[9]) and torch.equal(args[10], ref_args[10])  # caches
    return out


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("B,K,L,Hkv,D", [(4, 10, 2, 2, 16), (3, 1, 1, 1, 16), (2, 64, 3, 4, 64), (3, 5, 2, 3, 24)])
def test_greedy_matches_ref(device, dtype, B, K, L, Hkv, D):
    args = _inputs(B, K, L, Hkv, D, dtype, device, seed=K)
    args[11][0] = -1  # row 0 chooses without committing
    _check(args)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_stochastic_matches_ref(device, dtype):
    B, K = 6, 8
    args = _inputs(B, K, 2, 2, 16, dtype, device, seed=3)
    g = torch.Generator().manual_seed(7)
    u = torch.rand(B, K, generator=g, dtype=torch.float64)
    args[6] = (-torch.log(-torch.log(u))).to(device)
    args[5] = torch.tensor([0.0, 0.5, 1.0, 2.0, 0.0, 0.7], dtype=torch.float64, device=device)  # mixed modes
    choice, _, _ = _check(args)
    # Stochastic rows really use the noise: the same rows without it may choose differently, never beyond k.
    assert (choice < args[3].long()).all()


@pytest.mark.parametrize("device", devices())
def test_ties_lowest_index_and_k_mask(device):
    args = _inputs(3, 6, 1, 1, 16, torch.float32, device)
    args[0] = torch.zeros(3, 6, device=device)  # equal scores everywhere
    args[1] = torch.zeros(3, 6, device=device)
    args[1][1, 4] = 5.0  # beyond k: ignored
    args[1][2, 3] = float("-inf")
    args[3] = torch.tensor([6, 3, 6], dtype=torch.int32, device=device)
    choice, token, reward = _check(args)
    assert choice.tolist() == [0, 0, 0]
    args[0][:, 0] = float("-inf")
    assert _check(args)[0].tolist() == [1, 1, 1]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("stochastic", [False, True])
def test_nan_scores_count_as_neg_inf(device, stochastic):
    """A NaN reward (or log p) is never chosen while a finite score exists, on the kernel and the reference."""
    B, K = 3, 6
    args = _inputs(B, K, 1, 1, 16, torch.float32, device, seed=11)
    args[3] = torch.full((B,), K, dtype=torch.int32, device=device)
    args[1][0, :] = 100.0
    args[1][0, [0, 2, 4]] = float("nan")  # the best would be one of these if NaN were a number
    args[0][1, 3] = float("nan")
    args[1][2, :] = float("nan")  # every score NaN: the first candidate, no crash
    if stochastic:
        args[5] = torch.full((B,), 0.7, dtype=torch.float64, device=device)
        args[6] = torch.rand(B, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    choice, _, _ = _check(args)
    assert choice[0].item() in (1, 3, 5) and choice[1].item() != 3 and choice[2].item() == 0


@pytest.mark.parametrize("device", devices())
def test_matches_select_candidates(device):
    # The semantics the engine's torch path (decoding/common.py) uses, with per-request generators.
    from args_engine.decoding.common import select_candidates
    from args_engine.engine.request import Request
    from args_engine.params import ARGSParams

    B, K = 4, 6
    args = _inputs(B, K, 1, 1, 16, torch.float32, device, seed=11)
    params = [ARGSParams(k=6, w=1.5, mode="greedy"), ARGSParams(k=3, w=0.5, mode="stochastic", temperature=0.8, seed=1),
              ARGSParams(k=1, w=2.0, mode="greedy"), ARGSParams(k=5, w=1.0, mode="stochastic", temperature=1.3, seed=2)]
    reqs = [Request([1], p, max_len=100) for p in params]
    expected = select_candidates(args[0], args[1], reqs)
    gumbel = torch.zeros(B, K, dtype=torch.float64)
    for b, p in enumerate(params):  # the same draws select_candidates made, from fresh generators
        if p.mode == "stochastic":
            u = torch.rand(p.k, generator=torch.Generator().manual_seed(p.seed), dtype=torch.float64)
            gumbel[b, :p.k] = -torch.log(-torch.log(u.clamp_min(1e-300)))
    args[3] = torch.tensor([p.k for p in params], dtype=torch.int32, device=device)
    args[4] = torch.tensor([p.w for p in params], dtype=torch.float64, device=device)
    args[5] = torch.tensor([p.temperature if p.mode == "stochastic" else 0.0 for p in params],
                           dtype=torch.float64, device=device)
    args[6] = gumbel.to(device)
    choice, _, _ = _check(args)
    assert torch.equal(choice, expected)


def test_bad_inputs():
    args = _inputs(2, 4, 1, 1, 16, torch.float32, "cpu")
    for i, bad, name in [(2, args[2].int(), "cand_ids"), (3, args[3].long(), "k"), (11, args[11].int(), "slots"),
                         (1, args[1][:, :3], "rewards"), (6, torch.zeros(2, 3), "gumbel"),
                         (7, args[7][:, :1], "cand_key"), (9, args[9].transpose(1, 2), "key_cache"),
                         (10, args[10].double(), "value_cache"), (4, torch.ones(2, dtype=torch.int64), "w"),
                         (5, args[5].to("meta"), "device")]:
        a = list(args)
        a[i] = bad
        with pytest.raises(ValueError, match=name):
            args_select(*a)


@pytest.mark.parametrize("device", devices())
def test_near_tie_picks_as_torch_rounds(device):
    # lp + w * r rounded twice (torch) ties candidate 0 exactly; one rounding (a fused FMA, the GPU's default)
    # makes candidate 1 larger by an ulp. The interpreter never fuses: on CPU this holds either way, and
    # test_kernel_compile_sm90 checks that the compiled kernel has no FMA; compiled on a GPU this is the real test.
    f32 = dict(dtype=torch.float32, device=device)
    logp = torch.tensor([[0.6247629, -0.385604]], **f32)  # [B=1, K=2]
    rewards = torch.tensor([[0.0, 1.0425134]], **f32)
    w = torch.tensor([0.9691645], **f32)
    assert (logp[0, 1] + w[0] * rewards[0, 1]).item() == logp[0, 0].item()  # torch: an exact tie
    fused = (logp[0, 1].double() + w[0].double() * rewards[0, 1].double()).float()
    assert fused.item() > logp[0, 0].item()  # one rounding: candidate 1 wins
    args = _inputs(1, 2, 1, 1, 16, torch.float32, device)
    args[0], args[1], args[4] = logp, rewards, w
    args[3] = torch.full((1,), 2, dtype=torch.int32, device=device)
    choice = _check(args)[0]
    assert choice.item() == 0
