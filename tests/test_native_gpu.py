"""The native engine on CUDA with the compiled Triton kernels equals the reference decoder (skips without a GPU)."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from tiny import char_tokenizer, tiny_lm, tiny_rm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
PROMPTS = ["Hello there", "Hi", "What is the best way to learn to cook rice at home?", "x"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_triton_on_cuda_equals_reference(dtype):
    lm, rm = tiny_lm(dtype=dtype).cuda(), tiny_rm(dtype=dtype).cuda()
    tok = char_tokenizer()
    params = [ARGSParams(k=6, w=1.5, max_new_tokens=14),
              ARGSParams(k=5, w=1.0, mode="stochastic", temperature=0.8, max_new_tokens=10, seed=7)]
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    nat = ARGSEngine(lm, rm, tokenizer=tok, backend="native", block_size=4, num_blocks=40)
    assert nat.decoder.runner.ops.use_triton
    for p in params:
        expected = [o.token_ids for o in ref.generate(PROMPTS, p, progress=False)]
        got = [o.token_ids for o in nat.generate(PROMPTS, p, progress=False)]
        if dtype == torch.float64:
            assert got == expected
        else:  # float32 on random tiny models: near-ties may flip late; demand a long common prefix
            agree = [next((i for i, (a, b) in enumerate(zip(e, g)) if a != b), len(e)) for e, g in zip(expected, got)]
            assert min(agree) >= 4, (expected, got)
    bm = nat.decoder.bm
    assert bm.num_free_blocks == bm.num_blocks
