"""Prefix-aware reward heads (reward/prefix.py): the states are what decoding's RM reads, the cache resumes, the
fit learns what only prefixes show, and a head file decodes on the LM's own trunk."""
import json

import pytest
import torch

from args_engine.reward import prefix as pf
from args_engine.reward.train import train_linear_head
from tiny_models import tiny_lm, tiny_rm


def _dialogues(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(4, 99, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        reply = torch.randint(4, 99, (int(torch.randint(0, 7, (1,), generator=g)),), generator=g).tolist()
        out.append((prompt + reply, len(reply)))
    return out + [([5, 6, 7], 0)]  # an empty reply


def test_reply_states_are_what_the_rm_reads_after_each_reply_token():
    """Row j of a dialogue's states = the trunk's last hidden state on the prompt + first j + 1 reply tokens alone
    (what the RM reads when decoding has written them); an empty reply keeps the prompt's last state."""
    rm = tiny_rm(dtype=torch.float32)
    dialogues = _dialogues()
    states = pf.reply_states(rm.model, dialogues, cache=None, batch_size=3)
    assert any(r == 0 for _, r in dialogues)
    for (ids, r), s in zip(dialogues, states):
        assert s.shape == (max(r, 1), 64) and s.dtype == torch.float16
        P = len(ids) - r
        for j in range(max(r, 1)):
            end = P + j + 1 if r else P
            alone = rm.model(input_ids=torch.tensor([ids[:end]])).last_hidden_state[0, -1]
            torch.testing.assert_close(s[j].float(), alone, rtol=2e-3, atol=2e-3)


def test_reply_states_cache_resumes_after_a_stop(tmp_path, monkeypatch):
    rm = tiny_rm(dtype=torch.float32)
    dialogues = _dialogues(n=6)
    monkeypatch.setattr(pf, "SHARD", 3)
    calls = []
    real = pf._shard_states

    def stops_on_second_shard(trunk, shard, batch_size, bar):
        calls.append(len(shard))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(trunk, shard, batch_size, bar)

    monkeypatch.setattr(pf, "_shard_states", stops_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        pf.reply_states(rm.model, dialogues, cache=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.pt"]  # whole shards only
    calls.clear()
    monkeypatch.setattr(pf, "_shard_states", real)
    resumed = pf.reply_states(rm.model, dialogues, cache=tmp_path)
    fresh = pf.reply_states(rm.model, dialogues, cache=None)
    assert len(resumed) == 7 and all(torch.equal(a, b) for a, b in zip(resumed, fresh))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]


def test_matched_lengths_and_fraction_rows():
    H = 4
    chosen, rejected = torch.arange(10 * H).reshape(10, H).half(), -torch.arange(4 * H).reshape(4, H).half()
    data = pf.pair_features([chosen, rejected], positions=8)
    assert pf.matched_length(0.25, 4) == 1 and pf.matched_length(0.5, 4) == 2 and pf.matched_length(0.1, 3) == 1
    assert torch.equal(data.at_fraction[0.5][0][0], chosen[1].double())  # L = 2: the state after 2 tokens
    assert torch.equal(data.at_fraction[0.5][1][0], rejected[1].double())
    assert torch.equal(data.at_fraction[1.0][0][0], chosen[-1].double())  # whole: unmatched lengths
    assert torch.equal(data.at_fraction[1.0][1][0], rejected[-1].double())
    assert len(data.prefix[0]) == 4  # L = 1..4: the shorter reply has 4 tokens
    # value rows: each reply's prefixes (not its whole) against its own end
    assert len(data.value) == 4 + 3 and torch.equal(data.value[0], (chosen[0] - chosen[-1]).double())


def _synthetic(n, seed, H=8):
    """Replies of 10 steps: dimension 0 separates chosen from rejected at every step (what a prefix shows);
    dimension 1 separates them only at the end, more strongly (what whole replies show); the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(n):
        for sign in (1.0, -1.0):
            s = torch.randn(10, H, generator=g)
            s[:, 0] += 0.6 * sign
            s[:, 1] -= 0.8 * sign  # in the prefixes this points the wrong way ...
            s[-1, 1] += 3.0 * sign  # ... and at the end strongly the right way
            states.append(s.half())
    return pf.pair_features(states, positions=8)


def test_prefix_weight_learns_what_only_prefixes_show():
    train, held = _synthetic(300, 0), _synthetic(300, 1)
    plain = pf.fit_head(train, l2=1e-3)
    torch.testing.assert_close(plain, train_linear_head(*train.whole, l2=1e-3))  # weights 0: today's fit
    prefix = pf.fit_head(train, l2=1e-3, prefix_weight=1.0)
    before, after = pf.accuracy_by_fraction(held, plain), pf.accuracy_by_fraction(held, prefix)
    assert before[0.5] < 0.45 and after[0.5] > 0.65, (before, after)  # measured: 0.33 -> 0.71
    assert after[1.0] > 0.85  # 1.0 -> 0.91: the whole-reply signal is kept
    value = pf.fit_head(train, l2=1e-3, value_weight=1.0)  # pulls prefix scores toward the whole reply's
    gap = lambda w: (train.value @ w.double()).abs().mean() / (torch.cat(train.whole) @ w.double()).std()  # noqa
    assert gap(value) < gap(plain)


def test_the_weighting_keeps_whole_reply_accuracy_within_the_floor():
    """L2 by CV per weighting, the weighting by validation. On the synthetic replies the prefix rows cost
    whole-reply accuracy (1.0 -> about 0.9): with a floor 1 point under the whole-only fit's they are refused;
    with a floor 20 points under, the best mean over fractions takes them."""
    train, validation = _synthetic(200, 2), _synthetic(200, 3)
    grid = [dict(l2=l2, prefix_weight=a, value_weight=0.0) for l2 in (1e-3, 1e-1) for a in (0.0, 0.3, 1.0, 10.0)]
    table = pf.cv_table(train, grid, folds=3)
    assert len(table) == 8 and all(set(t["cv_accuracy"]) == set(pf.FRACTIONS) for t in table)
    whole = pf.accuracy_by_fraction(validation, pf.fit_head(train, l2=1e-3))[1.0]
    strict, rows = pf.choose_by_validation(train, validation, table, whole - 0.01)
    loose, _ = pf.choose_by_validation(train, validation, table, whole - 0.2)
    assert len(rows) == 4  # one per weighting, each with the L2 of its best CV mean
    for r in rows:
        same = [t for t in table if t["prefix_weight"] == r["prefix_weight"]]
        assert r["l2"] == max(same, key=lambda t: t["cv_mean"])["l2"]
    acc = {r["prefix_weight"]: r["validation_accuracy"] for r in rows}
    assert strict["prefix_weight"] == 0.0 and acc[0.0][1.0] >= whole - 0.01
    assert loose["prefix_weight"] > 0 and acc[loose["prefix_weight"]][0.5] > acc[0.0][0.5] + 0.2


def test_train_rm_prefix_end_to_end_and_head_file_decodes(tmp_path, monkeypatch, capsys, hh_data):
    """`train-rm --prefix` on a tiny trunk and real HH pairs writes a head with its report; `--rm head.safetensors`
    then decodes on the LM's own trunk, and the state cache makes a second run extract nothing."""
    from safetensors import safe_open

    from args_engine import ARGSEngine, ARGSParams
    from args_engine.cli import main
    from tiny_models import char_tokenizer

    monkeypatch.setenv("ARGS_ENGINE_CACHE", str(tmp_path / "cache"))
    tiny_lm(dtype=torch.float32).save_pretrained(tmp_path / "lm")
    char_tokenizer().save_pretrained(tmp_path / "lm")
    out = tmp_path / "prefix.safetensors"
    grid = "args_engine.reward.fit.PREFIX_GRID"
    monkeypatch.setattr(grid, [dict(l2=0.1, prefix_weight=a, value_weight=0.0) for a in (0.0, 1.0)])
    args = ["train-rm", "--prefix", "--lm", str(tmp_path / "lm"), "--out", str(out), "--limit", "10",
            "--max-len", "100", "--positions", "4"]
    main(args)
    printed = json.loads(capsys.readouterr().out)
    with safe_open(str(out), "pt") as f:
        report = json.loads(f.metadata()["report"])
    assert printed["n_train_pairs"] == 10 and report["kind"] == "prefix" and report["positions"] == 4
    assert set(report["validation_accuracy_by_fraction"]["prefix"]) == {"0.25", "0.5", "0.75", "1"}
    assert "--prefix --positions 4" in report["command"] and "--limit 10" in report["command"]
    assert len(report["cv"]) == 2 and report["chosen"]["prefix_weight"] in (0.0, 1.0)
    assert len(report["weightings"]) == 2 and report["whole_floor"] == \
        report["validation_accuracy_by_fraction"]["whole_only"]["1"] - 0.01

    calls = []
    monkeypatch.setattr(pf, "_shard_states", lambda *a: calls.append(1))
    main(args)  # every shard from the cache
    assert calls == [] and json.loads(capsys.readouterr().out)["validation_accuracy_by_fraction"] == \
        report["validation_accuracy_by_fraction"]

    engine = ARGSEngine.from_pretrained(lm=str(tmp_path / "lm"), rm=str(out), backend="reference")
    assert engine.rm.model.model is engine.lm.model  # one trunk in memory
    o = engine.generate(["hello"], ARGSParams(k=3, w=1.0, max_new_tokens=4))[0]
    assert len(o.token_ids) == 4 and o.reward is not None


def test_head_file_that_does_not_fit_is_named(tmp_path):
    from safetensors.torch import save_file

    from args_engine.models.defaults import default_reward_model, is_head_file

    bad = tmp_path / "wide.safetensors"
    save_file({"score.weight": torch.zeros(1, 65)}, str(bad))
    with pytest.raises(ValueError, match=r"wide.safetensors: needs score.weight of shape \[1, 64\]"):
        default_reward_model(tiny_lm(dtype=torch.float32), bad)
    with pytest.raises(FileNotFoundError, match="reward head file not found"):
        is_head_file(tmp_path / "missing.safetensors")
    assert not is_head_file(tmp_path)
