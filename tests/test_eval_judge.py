"""The judge: independent of the decoding RM, trained on the RM's train split, its asset self-describing."""
import json

import pytest
import torch
from safetensors import safe_open

from args_engine.eval.judge import JUDGE_ASSET, Judge, check_independent, train_judge
from args_engine.reward.data import REFERENCE_DATA, file_sha256, load_pairs, split_pairs
from eval_helpers import HashEncoder, tiny_judge
from tiny_models import tiny_rm


def test_judge_and_decoding_rm_are_distinct():
    judge, rm = tiny_judge(), tiny_rm("llama")
    check_independent(judge, rm)  # different family, no shared weights

    class SameFamily(HashEncoder):
        family = "llama"
    with pytest.raises(ValueError, match="family"):
        check_independent(Judge(torch.zeros(64), SameFamily()), rm)

    class SharesWeights(HashEncoder):
        def parameters(self):
            return rm.parameters()
    with pytest.raises(ValueError, match="shares weights"):
        check_independent(Judge(torch.zeros(64), SharesWeights()), rm)


def test_committed_judge_asset_is_minilm_with_its_report():
    with safe_open(str(JUDGE_ASSET), framework="pt") as f:
        meta = json.loads(f.metadata()["report"])
        weight = f.get_tensor("weight")
    assert weight.shape == (768,) and torch.isfinite(weight).all()
    assert meta["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    # made from the reference file (2,012 pairs): 300 evaluation, 300 validation, the rest train
    assert meta["data"]["sha256"] == REFERENCE_DATA["sha256"] and meta["data"]["pairs"] == REFERENCE_DATA["pairs"]
    assert meta["n_train_pairs"] == REFERENCE_DATA["pairs"] - 600 and meta["n_validation_pairs"] == 300
    assert 0.5 < meta["validation_accuracy"] <= 1 and meta["command"].startswith("args-engine train-judge")
    judge = Judge.load(encoder=HashEncoder())  # no MiniLM needed to read the head
    assert judge.validation_accuracy == meta["validation_accuracy"]


def test_train_judge_on_the_train_split(tmp_path, monkeypatch, hh_data):
    monkeypatch.setenv("ARGS_ENGINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "judge.safetensors"
    report = train_judge(out=out, limit=40, l2=0.1, encoder=HashEncoder())
    assert report["n_train_pairs"] == 40 and report["n_validation_pairs"] == 300 and report["l2"] == 0.1
    assert report["command"] == f"args-engine train-judge --seed 0 --limit 40 --l2 0.1 --out {out}"
    judge = Judge.load(out, encoder=HashEncoder())
    assert judge.validation_accuracy == report["validation_accuracy"]
    assert report["data"]["sha256"] == file_sha256(hh_data)
    val = split_pairs(load_pairs(hh_data))["validation"][:5]
    from args_engine.reward.data import split_last_reply
    prompts, replies = zip(*(split_last_reply(p.chosen) for p in val))
    assert len(judge.score(list(prompts), list(replies))) == 5


@pytest.mark.slow
def test_real_minilm_judge_reproduces_its_validation_accuracy(hh_data):
    """Loads all-MiniLM-L6-v2 and re-scores the 300 validation pairs (about a minute on 2 CPU cores)."""
    from args_engine.reward.data import split_last_reply
    from args_engine.reward.train import pairwise_accuracy

    if file_sha256(hh_data) != REFERENCE_DATA["sha256"]:
        pytest.skip(f"{hh_data} is not the reference file the judge's validation accuracy was measured on")
    judge = Judge.load()
    assert judge.family == "bert"
    check_independent(judge, tiny_rm("llama"))
    val = split_pairs(load_pairs(hh_data))["validation"]
    chosen = [split_last_reply(p.chosen) for p in val]
    rejected = [split_last_reply(p.rejected) for p in val]
    rc = torch.tensor(judge.score([m for m, _ in chosen], [r for _, r in chosen]))
    rr = torch.tensor(judge.score([m for m, _ in rejected], [r for _, r in rejected]))
    assert pairwise_accuracy(rc, rr) == pytest.approx(judge.validation_accuracy, abs=0.01)
