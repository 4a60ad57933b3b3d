"""LM and RM on two devices (issue 15): the RM trunk, its cache and the candidate forward + select on the RM's
device; the step's arrays sent to each device; only the LM's top-k crossing over. On CPU there is one device, so
the split path is forced and each side is made to read its own copy only; with 2 GPUs it runs for real."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.engine.model_runner import ModelRunner
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["Hello there", "Hi", "What is the best way to cook rice?"]
MIXED = [ARGSParams(k=6, w=1.5, max_new_tokens=12),
         ARGSParams(k=5, w=1.0, mode="stochastic", temperature=0.8, max_new_tokens=10, seed=3),
         ARGSParams(k=4, w=2.0, max_new_tokens=10, repetition_penalty=1.3, logprobs=2)]
RM_ONLY = ("tables", "pos", "rm_slots", "k", "w", "temp", "gumbel", "rm_w")  # read by the RM side alone
LM_ONLY = ("pf_last", "lm_ids", "lm_pos", "lm_slots", "lm_tables")  # read by the LM side alone


def _engine(**kw):
    return ARGSEngine(tiny_lm(), tiny_rm(), tokenizer=char_tokenizer(), backend="native", block_size=4, **kw)


def _poisoned_prepare(runner):
    """Each side's copy gets garbage where only the other side may read: a side reading the wrong copy changes
    the tokens or fails."""
    prepare = runner.prepare

    def wrapped(*args):
        batch = prepare(*args)
        assert batch.rt is not batch.t
        for names, t in ((RM_ONLY, batch.t), (LM_ONLY, batch.rt)):
            for n in names:
                if n in t:
                    t[n] = torch.full_like(t[n], -7 if not t[n].is_floating_point() else float("nan"))
        return batch
    runner.prepare = wrapped


@pytest.mark.parametrize("gate", [None, 0.5])
@pytest.mark.parametrize("step_mode", ["dynamic", "static"])
def test_split_path_equals_one_device(monkeypatch, step_mode, gate):
    params = [ARGSParams(**{**p.__dict__, "gate": gate}) for p in MIXED]
    expected = _engine(step_mode=step_mode).generate(PROMPTS, params, progress=False)
    monkeypatch.setattr(ModelRunner, "split", property(lambda self: True))
    engine = _engine(step_mode=step_mode)
    runner = engine.decoder.runner
    assert runner.rm_transfer is not None
    _poisoned_prepare(runner)
    got = engine.generate(PROMPTS, params, progress=False)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert [o.rewards for o in got] == [o.rewards for o in expected]
    assert [o.logprobs for o in got] == [o.logprobs for o in expected]
    # one transfer per device per step
    assert runner.rm_transfer.num_transfers == runner.transfer.num_transfers > 0


def test_split_devices_need_two_trunks_and_the_native_backend():
    from args_engine.models.hf import shares_trunk
    lm, rm = tiny_lm(), tiny_rm()
    rm.model.load_state_dict(lm.model.state_dict())
    assert shares_trunk(lm, rm)
    assert not shares_trunk(lm, rm.to("meta"))  # the same weights on another device: one trunk cannot serve both
    lm, rm = tiny_lm(), tiny_rm().to("meta")
    with pytest.raises(ValueError, match="only the native backend runs them on two devices"):
        ARGSEngine(lm, rm, tokenizer=char_tokenizer(), backend="reference")


def test_graph_mode_refuses_two_devices(monkeypatch):
    monkeypatch.setattr(ModelRunner, "split", property(lambda self: True))
    with pytest.raises(ValueError, match="CUDA|different devices"):
        _engine(step_mode="graph")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_lm_and_rm_on_two_gpus(tmp_path):
    for name, model in (("lm", tiny_lm()), ("rm", tiny_rm())):
        model.save_pretrained(tmp_path / name)
    char_tokenizer().save_pretrained(tmp_path / "lm")
    kw = dict(lm=str(tmp_path / "lm"), rm=str(tmp_path / "rm"), dtype="float64", backend="native",
              step_mode="static", use_triton=False)
    one = ARGSEngine.from_pretrained(device="cuda:0", **kw)
    two = ARGSEngine.from_pretrained(device="cuda:0", rm_device="cuda:1", **kw)
    runner = two.decoder.runner
    assert runner.rm_kv[0].device == torch.device("cuda:1") and runner.lm_kv[0].device == torch.device("cuda:0")
    a, b = (e.generate(PROMPTS, MIXED, progress=False) for e in (one, two))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
