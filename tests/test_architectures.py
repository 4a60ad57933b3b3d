"""Well-known reward-model architectures and the path each takes (docs/architectures.md): tiny random models built
from each architecture's own transformers config class, with the settings and head layout of a public checkpoint
of it (scaled down: 2 layers, hidden 32, the character vocabulary of tiny_models), checked for the path the engine
picks (native paged, native with the RM behind the text bridge, reference) and for token-for-token agreement with
the reference backend. Custom heads (ArmoRM-style) through RewardAdapter, on a tiny stand-in of ArmoRM's code.
Float64 throughout; Gemma 2's HF attention takes its softmax in float32, so its rewards agree to 1e-5."""
from dataclasses import dataclass

import pytest
import torch
from tokenizers import processors
from transformers import (DebertaV2Config, DebertaV2ForSequenceClassification, Gemma2Config, Gemma2ForCausalLM,
                          Gemma2ForSequenceClassification, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel,
                          LlamaPreTrainedModel, MistralConfig, MistralForCausalLM, MistralForSequenceClassification,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen3Config, Qwen3ForCausalLM,
                          Qwen3ForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)
from transformers.utils import ModelOutput

from args_engine import ARGSEngine, ARGSParams
from args_engine.models.hf import RewardModel
from args_engine.models.rm_adapter import RewardAdapter
from tiny_models import BOS, EOS, PAD, char_tokenizer

PROMPTS = ["Hello there", [{"role": "user", "content": "How do I cook rice?"}]]
N = 6
PARAMS = ARGSParams(k=4, w=3.0, max_new_tokens=N)
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from intra-op threads, and on a busy 2-core machine the threads' spinning
    made this file 4-7x slower (9 s alone, 40-66 s beside another test run). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- decoder RMs: *ForSequenceClassification, a `score` Linear on the last token ----------------------------------

def decoder_config(arch: str, vocab: int, pad: int, num_labels: int = 1):
    """The public checkpoint's settings that decide the path, scaled down."""
    ids = dict(vocab_size=vocab, pad_token_id=pad, bos_token_id=BOS, eos_token_id=EOS, num_labels=num_labels)
    if arch == "llama3.1":  # Skywork/Skywork-Reward-Llama-3.1-8B: GQA, llama3 RoPE scaling, rope_theta 5e5, untied
        return LlamaConfig(**SMALL, num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                           tie_word_embeddings=False, **ids)
    if arch == "qwen2.5":  # Qwen2.5 (model_type qwen2): q/k/v bias, tied embeddings (0.5B-3B), no sliding window
        return Qwen2Config(**SMALL, num_key_value_heads=1, max_position_embeddings=256, rope_theta=1e6,
                           tie_word_embeddings=True, use_sliding_window=False, **ids)
    if arch == "qwen3":  # Skywork/Skywork-Reward-V2-Qwen3-*: per-head q/k RMSNorm, explicit head_dim, tied
        return Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=1e6,
                           tie_word_embeddings=True, **ids)
    if arch == "gemma2":  # Skywork/Skywork-Reward-Gemma-2-27B: soft caps 50 / 30, sliding window, GeLU-tanh
        return Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                            sliding_window=128, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                            query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh", **ids)
    if arch == "mistral":  # weqweasdas/RM-Mistral-7B: GQA, rope_theta 1e6, sliding_window null
        return MistralConfig(**SMALL, num_key_value_heads=1, max_position_embeddings=256, rope_theta=1e6,
                             sliding_window=None, **ids)
    if arch == "gpt2":  # Ray2333/gpt2-large-helpful-reward_model: GPT2ForSequenceClassification
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2, **ids)
    raise ValueError(arch)


CLASSES = {"llama3.1": (LlamaForCausalLM, LlamaForSequenceClassification),
           "qwen2.5": (Qwen2ForCausalLM, Qwen2ForSequenceClassification),
           "qwen3": (Qwen3ForCausalLM, Qwen3ForSequenceClassification),
           "gemma2": (Gemma2ForCausalLM, Gemma2ForSequenceClassification),
           "mistral": (MistralForCausalLM, MistralForSequenceClassification),
           "gpt2": (GPT2LMHeadModel, GPT2ForSequenceClassification)}


def pad_added_tokenizer():
    """The LM's tokenizer plus a [PAD] token at the end, as Skywork-Reward-Llama-3.1-8B (vocab_size 128257 against
    Llama 3.1's 128256) and RM-Mistral-7B (32001 against Mistral's 32000) ship theirs."""
    tok = char_tokenizer()
    tok.add_special_tokens({"pad_token": "[PAD]"})
    return tok


def make_lm(arch: str, tok, seed: int = 0):
    torch.manual_seed(seed)
    return CLASSES[arch][0](decoder_config(arch, len(tok), PAD)).double().eval()


def make_rm(arch: str, rm_tok, seed: int = 1, num_labels: int = 1):
    torch.manual_seed(seed)
    rm = CLASSES[arch][1](decoder_config(arch, len(rm_tok), rm_tok.pad_token_id, num_labels)).double().eval()
    with torch.no_grad():  # rewards on the scale of log-prob gaps, so w matters
        rm.score.weight.mul_(5.0 / rm.score.weight.norm())
    return rm


def engine(lm, rm, tok, rm_tok, backend="auto", **kw):
    return ARGSEngine(lm, rm, tokenizer=tok, rm_tokenizer=rm_tok, backend=backend, eos_ids=set(), **kw)


def generate(eng, params=PARAMS, prompts=PROMPTS):
    return eng.generate(prompts, params, progress=False)


def assert_same(a, b, tol=1e-9):
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids and x.text == y.text
        torch.testing.assert_close(torch.tensor(y.rewards), torch.tensor(x.rewards), rtol=tol, atol=tol)


def tol(arch: str) -> float:
    return 1e-5 if arch == "gemma2" else 1e-9


@pytest.mark.parametrize("arch", ["llama3.1", "qwen2.5", "qwen3", "gemma2", "mistral"])
@pytest.mark.parametrize("rm_vocab", ["same", "pad-added"])
def test_decoder_rm_takes_the_native_path(arch, rm_vocab):
    """An LM and a decoder RM of the same native family. Same tokenizer: native, the RM's candidates against its
    paged prefix cache. The RM's tokenizer with a [PAD] added (Skywork's Llama 3.1 RM, RM-Mistral-7B): the
    vocabularies differ, so the RM reads text through the bridge, on its own paged pool. Either way the tokens
    are the reference backend's, and the last reward is the RM as shipped (HF forward, pooled at the last token)
    on the text it read."""
    tok = char_tokenizer()
    rm_tok = tok if rm_vocab == "same" else pad_added_tokenizer()
    lm, rm = make_lm(arch, tok), make_rm(arch, rm_tok)
    auto = engine(lm, rm, tok, rm_tok, block_size=4)
    assert auto.backend == "native"
    assert (auto.bridge is None) == (rm_vocab == "same")
    assert (auto.decoder.rm_bm is not None) == (rm_vocab == "pad-added")  # the RM's own paged pool
    if arch == "gemma2":  # capped at the sliding window: the decoders pass full-attention masks
        assert auto.context_length == 128
    native = generate(auto)
    assert_same(generate(engine(lm, rm, tok, rm_tok, "reference")), native, tol(arch))
    for prompt, out in zip(PROMPTS, native):
        if auto.bridge is None:
            ids = out.prompt_token_ids + out.token_ids
        else:
            ids = auto.bridge.text_ids([auto.bridge.prefix(prompt, raw=False) + out.text])[0]
        with torch.no_grad():
            shipped = rm(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert out.rewards[-1] == pytest.approx(shipped, rel=tol(arch), abs=tol(arch))


def test_multi_output_decoder_head():
    """A *ForSequenceClassification with num_labels = 3 (one Linear, three outputs): reward = weights . outputs,
    engine-wide or per request; native, and the reference's tokens."""
    tok = char_tokenizer()
    lm, rm = make_lm("llama3.1", tok), make_rm("llama3.1", tok, num_labels=3)
    params = [PARAMS, ARGSParams(k=4, w=3.0, max_new_tokens=N, rm_weights=[0.0, 0.0, 1.0])]
    auto = engine(lm, rm, tok, tok, rm_weights=[1.0, -0.5, 0.25], block_size=4)
    assert auto.backend == "native" and auto.rm.num_objectives == 3
    native = generate(auto, params)
    assert_same(generate(engine(lm, rm, tok, tok, "reference", rm_weights=[1.0, -0.5, 0.25]), params), native)
    with torch.no_grad():
        outputs = rm(input_ids=torch.tensor([native[1].prompt_token_ids + native[1].token_ids])).logits[0]
    assert native[1].rewards[-1] == pytest.approx(outputs[2].item(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("lm_arch", ["llama3.1", "gpt2"])
def test_gpt2_rm_takes_the_reference_path(lm_arch):
    """A GPT-2 RM (no native runner) on the LM's tokenizer: reference, with either LM; the naive oracle's tokens."""
    tok = char_tokenizer()
    lm, rm = make_lm(lm_arch, tok), make_rm("gpt2", tok)
    auto = engine(lm, rm, tok, tok)
    assert auto.backend == "reference" and auto.bridge is None
    assert_same(generate(engine(lm, rm, tok, tok, "naive")), generate(auto))
    with pytest.raises(ValueError, match="model family 'gpt2' is not one of the native families"):
        engine(lm, rm, tok, tok, "native")


# --- encoder RMs: a classifier on the pooled first token; the RM reads each candidate's text ----------------------

def encoder_tokenizer(template: str | None = None):
    """The character tokenizer with an encoder's special tokens: <bos> text <eos> as [CLS] text [SEP] (DeBERTa-v3)
    or <s> text </s> (RoBERTa); pairs as [CLS] a [SEP] b [SEP]."""
    tok = char_tokenizer(chat=False)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B:1 <eos>:1", special_tokens=[("<bos>", BOS), ("<eos>", EOS)])
    if template:
        tok.chat_template = template
    return tok


# Question and answer as OpenAssistant's reward-model cards pair them (tokenizer(question, answer)): a chat template
# on the RM's tokenizer that closes each message with the separator gives the bridge exactly that input.
OA_PAIR_TEMPLATE = "{% for m in messages %}{{ m['content'] }}<eos>{% endfor %}"


def deberta_v3_rm(vocab: int):
    """OpenAssistant/reward-model-deberta-v3-large-v2: DebertaV2ForSequenceClassification, relative attention with
    position buckets, no absolute positions, no token types, one output."""
    torch.manual_seed(2)
    cfg = DebertaV2Config(vocab_size=vocab, **SMALL, max_position_embeddings=24, relative_attention=True,
                          position_buckets=16, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                          position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
                          type_vocab_size=0, pooler_hidden_size=32, pad_token_id=PAD, num_labels=1)
    return DebertaV2ForSequenceClassification(cfg).double().eval()


def roberta_rm(vocab: int):
    """facebook/roberta-hate-speech-dynabench-r4-target: RobertaForSequenceClassification with two outputs
    (nothate, hate); position ids start past the padding index, so max_position_embeddings - pad - 1 tokens fit
    (514 -> 512 in the checkpoint; 36 -> 35 here)."""
    torch.manual_seed(3)
    cfg = RobertaConfig(vocab_size=vocab, **SMALL, max_position_embeddings=36, type_vocab_size=1, pad_token_id=PAD,
                        num_labels=2)
    return RobertaForSequenceClassification(cfg).double().eval()


def truncated(ids: list[int], limit: int) -> list[int]:
    """An encoder's input cut from the left to `limit` tokens, the first special token kept."""
    return ids if len(ids) <= limit else ids[:1] + ids[-(limit - 1):]


@pytest.mark.parametrize("arch", ["deberta-v3", "roberta"])
def test_encoder_rm_takes_the_reference_path(arch):
    """Encoders read each candidate's whole text through the bridge: auto picks reference; backend="native"
    batches the LM side and gives the same tokens. The last reward is the classifier, as shipped, on the text,
    truncated from the left to the encoder's length (RoBERTa: 35 of its 36 positions)."""
    tok = char_tokenizer()
    if arch == "deberta-v3":
        rm_tok, kw = encoder_tokenizer(OA_PAIR_TEMPLATE), {}
        rm = deberta_v3_rm(len(rm_tok))
    else:
        rm_tok, kw = encoder_tokenizer(), {"rm_weights": [1.0, -1.0]}  # nothate - hate
        rm = roberta_rm(len(rm_tok))
    lm = make_lm("llama3.1", tok)
    auto = engine(lm, rm, tok, rm_tok, **kw)
    assert auto.backend == "reference" and auto.rm.is_encoder and auto.bridge is not None
    ref = generate(auto)
    assert_same(ref, generate(engine(lm, rm, tok, rm_tok, "native", **kw)))
    limit = 24 if arch == "deberta-v3" else 35
    assert auto.bridge.max_length == limit
    weights = torch.tensor(kw.get("rm_weights", [1.0]), dtype=torch.float64)
    texts = [auto.bridge.prefix(p, raw=False) + o.text for p, o in zip(PROMPTS, ref)]
    full = [rm_tok(t)["input_ids"] for t in texts]
    assert max(len(ids) for ids in full) > limit  # the truncation ran
    for out, ids in zip(ref, full):
        with torch.no_grad():
            logits = rm(input_ids=torch.tensor([truncated(ids, limit)])).logits[0]
        assert out.rewards[-1] == pytest.approx((logits @ weights).item(), rel=1e-9, abs=1e-9)
    if arch == "deberta-v3":  # the pair template: [CLS] question [SEP] answer [SEP], as the model card scores
        question = PROMPTS[1][0]["content"]
        assert rm_tok(texts[1])["input_ids"] == rm_tok(question, ref[1].text)["input_ids"]


# --- custom heads: RewardAdapter ----------------------------------------------------------------------------------

@dataclass
class ArmoOutput(ModelOutput):
    rewards: torch.Tensor | None = None
    score: torch.Tensor | None = None
    logits: torch.Tensor | None = None


GATE_AFTER = "[assistant] "  # the stand-in's gating token ends the last assistant header, as ArmoRM's does


class TinyArmoRM(LlamaPreTrainedModel):
    """A scaled-down stand-in for RLHFlow/ArmoRM-Llama3-8B-v0.1's own code (LlamaForRewardModelWithGating): a Llama
    trunk; a regression layer to N objectives at each row's last token (the token before the first pad, as ArmoRM
    finds it); a gating network on the hidden state of the token that ends the last assistant header; an output
    with `rewards` [B, N] and `score` [B] = softmax(gate) . rewards (also `logits`, as ArmoRM's)."""

    def __init__(self, config, header_ids: list[int]):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression_layer = torch.nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.gating = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, 16), torch.nn.ReLU(),
                                          torch.nn.Linear(16, config.num_objectives))
        self.header = header_ids
        self.post_init()

    def _gate_position(self, ids: list[int]) -> int:
        n = len(self.header)
        for end in range(len(ids), n - 1, -1):
            if ids[end - n:end] == self.header:
                return end - 1
        raise ValueError("no assistant header to gate on")

    def forward(self, input_ids, attention_mask=None, **kw):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        B, T = input_ids.shape
        rows = torch.arange(B)
        last = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % T
        rewards = self.regression_layer(hidden[rows, last])  # [B, N]
        gate = torch.softmax(self.gating(hidden[rows, [self._gate_position(r.tolist()) for r in input_ids]]), -1)
        score = (gate * rewards).sum(-1)  # [B]
        return ArmoOutput(rewards=rewards, score=score, logits=score)


ARMO_TEMPLATE = "<bos>" + char_tokenizer().chat_template  # a template that writes BOS itself, as Llama 3's does


def armo_tokenizer(pad: bool = True):
    """The RM's tokenizer: BOS added by the tokenizer and written by the chat template (Llama 3's double-BOS
    trap); without a pad token when pad=False (Llama 3's tokenizer has none)."""
    tok = char_tokenizer()
    tok.chat_template = ARMO_TEMPLATE
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                                         special_tokens=[("<bos>", BOS)])
    if not pad:
        tok.pad_token = None
    return tok


@pytest.fixture(scope="module")
def armo():
    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), **SMALL, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    cfg.num_objectives = 3
    torch.manual_seed(5)
    model = TinyArmoRM(cfg, tok(GATE_AFTER, add_special_tokens=False)["input_ids"]).double().eval()
    with torch.no_grad():
        model.regression_layer.weight.mul_(5.0 / model.regression_layer.weight.norm())
    return model


def armo_oracle(armo, rm_tok, text: str) -> ArmoOutput:
    ids = rm_tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == BOS and ids[1] != BOS  # one BOS, the template's
    with torch.no_grad():
        return armo(input_ids=torch.tensor([ids]))


def test_custom_head_is_refused_with_the_adapter_named(armo):
    tok = char_tokenizer()
    with pytest.raises(ValueError, match="no `score` head .*RewardAdapter"):
        RewardModel.wrap(armo)
    with pytest.raises(ValueError, match="RewardAdapter"):
        engine(make_lm("llama3.1", tok), armo, tok, armo_tokenizer())


@pytest.mark.parametrize("output", ["score", "rewards"])
def test_adapter_runs_an_armorm_style_head(armo, output):
    """RewardAdapter(model, output=...): the gated score, or the objectives combined by rm_weights. The RM reads
    each candidate's text (its own chat template, one BOS); auto picks reference; native gives the same tokens;
    each step's reward is the stand-in's own forward on that step's text (the definition)."""
    tok, rm_tok = char_tokenizer(), armo_tokenizer()
    lm = make_lm("llama3.1", tok)
    kw = {} if output == "score" else {"rm_weights": [0.5, 1.0, -1.0]}
    rm = RewardAdapter(armo, output=output, num_outputs=1 if output == "score" else 3)
    auto = engine(lm, rm, tok, rm_tok, **kw)
    assert auto.backend == "reference" and auto.rm.is_adapter and auto.bridge.max_length == 256
    ref = generate(auto)
    assert_same(ref, generate(engine(lm, rm, tok, rm_tok, "native", **kw)))
    for prompt, out in zip(PROMPTS, ref):
        prefix = auto.bridge.prefix(prompt, raw=False)
        for step, reward in enumerate(out.rewards):
            text = prefix + tok.decode(out.token_ids[:step + 1], skip_special_tokens=True)  # as the bridge reads it
            got = armo_oracle(armo, rm_tok, text)
            want = got.score[0] if output == "score" else got.rewards[0] @ torch.tensor(kw["rm_weights"]).double()
            assert reward == pytest.approx(want.item(), rel=1e-9, abs=1e-9)


def test_adapter_per_row_for_a_scorer_that_ignores_the_mask(armo):
    """The stand-in finds each row's end at the first pad token, so it needs right padding. per_row=True hands it
    every text alone, unpadded: the same tokens and rewards on a left-padding RM tokenizer without a pad token
    (the batch padded by the bridge itself)."""
    tok = char_tokenizer()
    lm = make_lm("llama3.1", tok)
    right = generate(engine(lm, RewardAdapter(armo, output="score"), tok, armo_tokenizer()))
    rm_tok = armo_tokenizer(pad=False)
    rm_tok.padding_side = "left"
    assert_same(right, generate(engine(lm, RewardAdapter(armo, output="score", per_row=True), tok, rm_tok)))


def test_adapter_takes_a_plain_function():
    """A function of (input_ids, attention_mask) -> [B]: here the count of vowels in the text. No parameters: the
    adapter's device and dtype come from its arguments. Native and reference agree; the reward is the count."""
    tok = char_tokenizer()
    vowels = torch.tensor(tok.convert_tokens_to_ids(list("aeiou")))

    def vowel_count(input_ids, attention_mask):
        return (torch.isin(input_ids, vowels) & attention_mask.bool()).sum(-1)

    rm = RewardAdapter(vowel_count, dtype=torch.float64)
    lm = make_lm("llama3.1", tok)
    params = ARGSParams(k=6, w=2.0, max_new_tokens=N)
    ref = generate(engine(lm, rm, tok, tok), params)
    assert_same(ref, generate(engine(lm, rm, tok, tok, "native"), params))
    for prompt, out in zip(PROMPTS, ref):
        prefix = tok.apply_chat_template([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt,
                                         add_generation_prompt=True, tokenize=False)
        assert out.rewards[-1] == sum(c in "aeiou" for c in prefix + out.text)


def test_unsupported_reward_models_are_named():
    tok = char_tokenizer()
    lm = make_lm("llama3.1", tok)
    with pytest.raises(TypeError, match="a path or Hub id: load it with ARGSEngine.from_pretrained"):
        RewardModel.wrap("Skywork/Skywork-Reward-Llama-3.1-8B")
    with pytest.raises(TypeError, match="without a transformers config: wrap .* in args_engine.models.rm_adapter"):
        ARGSEngine(lm, lambda input_ids, attention_mask: input_ids.sum(-1), tokenizer=tok)
    with pytest.raises(TypeError, match="unsupported reward model object object"):
        RewardModel.wrap(object())
    with pytest.raises(TypeError, match="RewardAdapter takes a callable"):
        RewardAdapter(42)
    with pytest.raises(ValueError, match="RM must read the text, so pass both tokenizers"):
        ARGSEngine(lm, RewardAdapter(lambda input_ids, attention_mask: input_ids.sum(-1)), tokenizer=tok)
    shape = RewardAdapter(lambda input_ids, attention_mask: input_ids.double(), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"scores of shape \(4, \d+\) for 4 rows; expected \[4\] or \[4, 1\]"):
        generate(engine(lm, shape, tok, tok), prompts=PROMPTS[:1])
    missing = RewardAdapter(lambda input_ids, attention_mask: {"reward": input_ids.sum(-1)}, output="score")
    with pytest.raises(TypeError, match="returned dict and its 'score' is not a tensor"):
        generate(engine(lm, missing, tok, tok), prompts=PROMPTS[:1])
