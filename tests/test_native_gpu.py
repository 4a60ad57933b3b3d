"""The native engine on CUDA with the compiled Triton kernels equals the reference decoder (skips without a GPU)."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

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


def test_bridged_rm_reads_past_its_context_length_on_cuda():
    """A decoder RM on another tokenizer reads prompt + response in its own tokens, which may run past its
    max_position_embeddings (HF's RoPE extrapolates, and so the naive oracle does). On CUDA the paged RM's RoPE
    table covers the whole context up front; past it, it must grow to the positions the host knows instead of
    being read past its end. Tokens equal the naive oracle's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(PROMPTS * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    rm_tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    context = 16
    torch.manual_seed(1)
    rm = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(rm_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=context, initializer_range=0.5, num_labels=1,
        pad_token_id=0)).double().eval().cuda()
    lm, tok = tiny_lm(dtype=torch.float64).cuda(), char_tokenizer()
    prompts = PROMPTS[2:]
    params = ARGSParams(k=4, w=3.0, max_new_tokens=8)
    nat = ARGSEngine(lm, rm, tokenizer=tok, rm_tokenizer=rm_tok, backend="native", block_size=4, num_blocks=64)
    assert nat.decoder.runner.paged_bridge is not None
    assert len(nat.bridge.ids(nat.bridge.prefix(prompts[0], False), [])) > context  # the RM reads past its context
    naive = ARGSEngine(lm, rm, tokenizer=tok, rm_tokenizer=rm_tok, backend="naive")
    want = [o.token_ids for o in naive.generate(prompts, params, progress=False)]
    assert [o.token_ids for o in nat.generate(prompts, params, progress=False)] == want
