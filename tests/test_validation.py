"""Bad input gets a clear error that names the problem, before any decoding starts."""
import math

import pytest

from args_engine import ARGSEngine, ARGSParams
from tiny_models import char_tokenizer, tiny_lm, tiny_rm


@pytest.fixture(scope="module")
def engine():
    return ARGSEngine(tiny_lm(), tiny_rm(), tokenizer=char_tokenizer())


@pytest.mark.parametrize("kw, msg", [
    (dict(k=0), "k must be an integer >= 1"),
    (dict(k=2.5), "k must be an integer >= 1"),
    (dict(w=math.nan), "w must be a finite number"),
    (dict(w=math.inf), "w must be a finite number"),
    (dict(mode="beam"), "mode must be"),
    (dict(mode="stochastic", temperature=0.0), "temperature must be"),
    (dict(mode="stochastic", temperature=-1.0), "temperature must be"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(stop=[""]), "stop must be"),
])
def test_bad_params(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ARGSParams(**kw)


def test_k_larger_than_vocab(engine):
    with pytest.raises(ValueError, match="exceeds the vocabulary size"):
        engine.generate("hi", ARGSParams(k=engine.vocab_size + 1), progress=False)


@pytest.mark.parametrize("prompt", ["", "   ", []])
def test_empty_prompt(engine, prompt):
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([prompt], ARGSParams(), progress=False)


def test_prompt_longer_than_context(engine):
    with pytest.raises(ValueError, match="the context holds 256"):
        engine.generate([[5] * 300], ARGSParams(), progress=False)


def test_token_ids_outside_vocab(engine):
    with pytest.raises(ValueError, match="token ids must lie in"):
        engine.generate([[5, 10_000]], ARGSParams(), progress=False)


def test_rm_vocab_differs():
    from transformers import LlamaConfig, LlamaForSequenceClassification
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=1))
    with pytest.raises(ValueError, match="vocabularies differ"):
        ARGSEngine(tiny_lm(), rm, tokenizer=char_tokenizer())


def test_rm_with_several_labels_needs_weights():
    with pytest.raises(ValueError, match="2 outputs .multi-objective.: choose one with rm_objective"):
        ARGSEngine(tiny_lm(), tiny_rm(num_labels=2), tokenizer=char_tokenizer())


def test_rm_that_is_a_causal_lm():
    with pytest.raises(ValueError, match="no `score` head"):
        ARGSEngine(tiny_lm(), tiny_lm(), tokenizer=char_tokenizer())


def test_unknown_backend_and_param_count(engine):
    with pytest.raises(ValueError, match="backend must be"):
        ARGSEngine(tiny_lm(), tiny_rm(), tokenizer=char_tokenizer(), backend="vllm")
    with pytest.raises(ValueError, match="2 ARGSParams for 1 prompts"):
        engine.generate(["hi"], [ARGSParams(), ARGSParams()], progress=False)


def test_missing_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="LM directory not found"):
        ARGSEngine.from_pretrained(lm=str(tmp_path / "nope"), rm=str(tmp_path / "nope"))


def test_flash_attention_rm_rejected_by_reference_backend():
    rm = tiny_rm()
    rm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="custom 4D masks"):
        ARGSEngine(tiny_lm(), rm, tokenizer=char_tokenizer(), backend="reference")


def test_text_prompt_without_tokenizer():
    eng = ARGSEngine(tiny_lm(), tiny_rm())
    with pytest.raises(ValueError, match="needs a tokenizer"):
        eng.generate("hello", ARGSParams(), progress=False)
    out = eng.generate([[5, 6, 7]], ARGSParams(k=2, max_new_tokens=3), progress=False)[0]
    assert len(out.token_ids) <= 3 and out.text == ""


def test_encoder_rm_needs_its_tokenizer():
    from transformers import BertConfig, BertForSequenceClassification
    rm = BertForSequenceClassification(BertConfig(vocab_size=tiny_lm().config.vocab_size, hidden_size=32,
                                                  num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                                  num_labels=1))
    with pytest.raises(ValueError, match="the RM is an encoder .bert.: the RM must read the text, so pass both"):
        ARGSEngine(tiny_lm(), rm, tokenizer=char_tokenizer())


def test_classifier_as_lm_rejected():
    with pytest.raises(ValueError, match="decoder-only causal LM"):
        ARGSEngine(tiny_rm(), tiny_rm(), tokenizer=char_tokenizer())


def test_bad_batch_size_and_seed():
    with pytest.raises(ValueError, match="batch_size must be"):
        ARGSEngine(tiny_lm(), tiny_rm(), tokenizer=char_tokenizer(), batch_size=0)
    for seed in (1.5, -1, 2 ** 64, True):
        with pytest.raises(ValueError, match="seed must be"):
            ARGSParams(mode="stochastic", seed=seed)


def test_stop_needs_tokenizer_and_string_stop_is_one_string():
    eng = ARGSEngine(tiny_lm(), tiny_rm())
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        eng.generate([[5, 6]], ARGSParams(stop=["x"]), progress=False)
    p = ARGSParams()
    p.stop = "ab"
    p.validate()
    assert p.stop == ["ab"]
    p.stop = 5
    with pytest.raises(ValueError, match="stop must be"):
        p.validate()
