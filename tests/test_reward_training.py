"""Bradley-Terry training: the loss falls, a learnable preference is learned, LoRA merges exactly."""
import pytest
import torch

from args_engine.models.defaults import apply_reward_asset
from args_engine.reward.train import (bradley_terry_loss, extract_features, last_layers_rewards, pairwise_accuracy,
                                      train_last_layers, train_linear_head)
from tiny_models import tiny_rm


def test_bt_loss_values():
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == torch.log(torch.tensor(2.0)).item()
    assert bradley_terry_loss(torch.tensor([10.0]), torch.tensor([-10.0])).item() < 1e-8
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0])) == 2 / 3


def test_linear_head_learns_synthetic_preference():
    g = torch.Generator().manual_seed(0)
    true_w = torch.randn(16, generator=g)
    a, b = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    chosen = torch.where(((a - b) @ true_w > 0)[:, None], a, b)
    rejected = torch.where(((a - b) @ true_w > 0)[:, None], b, a)
    before = bradley_terry_loss(chosen @ torch.zeros(16), rejected @ torch.zeros(16))
    w = train_linear_head(chosen[:300], rejected[:300], l2=1e-4).float()
    assert bradley_terry_loss(chosen @ w, rejected @ w) < before - 0.4
    assert pairwise_accuracy(chosen[300:] @ w, rejected[300:] @ w) > 0.9


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_last_layers_lora_lowers_loss_and_merges_exactly(attn):
    rm = tiny_rm(dtype=torch.float32)
    rm.set_attn_implementation(attn)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(4, 99, (int(n),), generator=g).tolist() for n in torch.randint(5, 20, (32,), generator=g)]
    feats = extract_features(rm.model, seqs, tap_layer=0, batch_size=4)  # tune both layers
    chosen, rejected = feats.tap[0::2], feats.tap[1::2]
    # rewards from the tap states through the untouched layers match a plain forward (causal attention included)
    r_plain = torch.stack([rm(torch.tensor([s])).logits[0, 0] for s in seqs]).detach()
    torch.testing.assert_close(last_layers_rewards(rm, 2, feats.tap), r_plain, rtol=1e-4, atol=1e-4)
    loss_before = bradley_terry_loss(r_plain[0::2], r_plain[1::2])
    asset = train_last_layers(rm, 2, chosen, rejected, rank=4, epochs=8, lr=1e-2, batch_pairs=4)
    apply_reward_asset(rm, {k: v for k, v in asset.items() if k != "score.weight"})
    rm.score.weight.data.copy_(asset["score.weight"])
    r_after = torch.stack([rm(torch.tensor([s])).logits[0, 0] for s in seqs]).detach()
    torch.testing.assert_close(last_layers_rewards(rm, 2, feats.tap), r_after, rtol=1e-4, atol=1e-4)
    assert bradley_terry_loss(r_after[0::2], r_after[1::2]) < loss_before - 0.1


def test_train_rm_command_end_to_end(tmp_path, monkeypatch, capsys, hh_data):
    """`args-engine train-rm` on a tiny trunk and a few real HH pairs: writes a loadable asset and a report."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from args_engine.cli import main
    from tiny_models import char_tokenizer, tiny_lm

    monkeypatch.setenv("ARGS_ENGINE_CACHE", str(tmp_path / "cache"))
    tiny_lm(dtype=torch.float32).save_pretrained(tmp_path / "lm")
    char_tokenizer().save_pretrained(tmp_path / "lm")
    out = tmp_path / "head.safetensors"
    main(["train-rm", "--lm", str(tmp_path / "lm"), "--out", str(out), "--limit", "12", "--max-len", "120",
          "--tune-layers", "1", "--epochs", "1", "--rank", "2"])
    assert json.loads(capsys.readouterr().out)["n_train_pairs"] == 12
    with safe_open(str(out), "pt") as f:
        report = json.loads(f.metadata()["report"])
    assert report["n_train_pairs"] == 12 and report["n_validation_pairs"] == 300
    assert 0.0 <= report["validation_accuracy"] <= 1.0 and "lora_last_1" in report
    assert "--tune-layers 1" in report["command"] and "--limit 12" in report["command"]
    assert report["data"]["file"] == hh_data.name and len(report["data"]["sha256"]) == 64
    asset = load_file(str(out))
    assert asset["score.weight"].shape == (1, 64)
    assert any(k.endswith(".lora_A") for k in asset)
    rm = tiny_rm(dtype=torch.float32)
    apply_reward_asset(rm, asset)
    assert torch.equal(rm.score.weight, asset["score.weight"])


def test_asset_that_does_not_fit_is_rejected():
    with pytest.raises(ValueError, match="unknown tensors"):
        apply_reward_asset(tiny_rm(), {"score.bias": torch.zeros(1)})


@pytest.mark.parametrize("kw, msg", [(dict(limit=0), "limit >= 1"), (dict(max_len=0), "max_len >= 2"),
                                     (dict(tune_layers=-1), "tune_layers >= 0")])
def test_train_rm_bad_options(kw, msg):
    from args_engine.reward.fit import train_reward_model
    with pytest.raises(ValueError, match=msg):
        train_reward_model(out="/nonexistent/x.safetensors", **kw)
