"""Multi-objective reward models (num_labels = N > 1): reward = weights . outputs, with engine-wide weights
(rm_weights / rm_objective) and per-request ones (ARGSParams.rm_weights), the same in every backend, the HF
processor, the CLI and the server."""
import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.integrations.server import create_app
from args_engine.integrations.server_config import ServerConfig
from args_engine.models.hf import RewardModel
from server_util import ServerThread, post
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["Hello there", "Hi", "What is the best way to cook rice?"]
WEIGHTS = [0.5, -1.0, 2.0]
N = 12


@pytest.fixture(scope="module")
def models():
    return tiny_lm(), tiny_rm(num_labels=3), char_tokenizer()


def generate(models, backend, params, **kw):
    lm, rm, tok = models
    kw.setdefault("rm_weights", WEIGHTS)
    if backend == "native":
        kw.setdefault("block_size", 4)
    return ARGSEngine(lm, rm, tokenizer=tok, backend=backend, **kw).generate(PROMPTS, params, progress=False)


def same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids
        torch.testing.assert_close(torch.tensor(x.rewards), torch.tensor(y.rewards), rtol=1e-9, atol=1e-9)


def test_reward_is_the_weighted_sum_of_outputs(models):
    _, rm, _ = models
    h = torch.randn(2, 5, rm.config.hidden_size, dtype=torch.float64)
    out = rm.score(h)  # [2, 5, 3]
    r = RewardModel(rm, WEIGHTS)
    torch.testing.assert_close(r.rewards(h), out @ torch.tensor(WEIGHTS, dtype=torch.float64))
    rows = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(r.rewards(h, rows), torch.stack([out[0, :, 0], out[1, :, 2]]))
    torch.testing.assert_close(RewardModel(rm, objective=1).rewards(h), out[..., 1])


@pytest.mark.parametrize("mixed", [False, True], ids=["engine-weights", "per-request-weights"])
def test_backends_agree(models, mixed):
    params = ARGSParams(k=5, w=1.5, max_new_tokens=N)
    if mixed:  # each request its own weights, one batch
        params = [params, ARGSParams(k=5, w=1.5, max_new_tokens=N, rm_weights=[0.0, 1.0, 0.0]),
                  ARGSParams(k=4, w=2.0, max_new_tokens=N, rm_weights=[-1.0, 0.25, 0.5], gate=0.3)]
    ref = generate(models, "reference", params)
    same(ref, generate(models, "naive", params))
    same(ref, generate(models, "native", params))
    same(ref, generate(models, "native", params, step_mode="static"))


def test_objective_equals_a_single_output_rm(models):
    """rm_objective=i decodes exactly as an RM whose one output is output i."""
    lm, rm, tok = models
    single = tiny_rm()
    single.model.load_state_dict(rm.model.state_dict())
    single.score.weight.data.copy_(rm.score.weight.data[2:3])
    params = ARGSParams(k=5, w=1.5, max_new_tokens=N)
    one = ARGSEngine(lm, single, tokenizer=tok, backend="native", block_size=4).generate(PROMPTS, params,
                                                                                         progress=False)
    same(one, generate(models, "native", params, rm_weights=None, rm_objective=2))


def test_weights_change_the_choice(models):
    params = ARGSParams(k=8, w=5.0, max_new_tokens=N)
    a = generate(models, "native", params, rm_weights=[1.0, 0.0, 0.0])
    b = generate(models, "native", params, rm_weights=[0.0, 0.0, 1.0])
    assert [o.token_ids for o in a] != [o.token_ids for o in b]


def test_bad_weights_are_named(models):
    lm, rm, tok = models
    with pytest.raises(ValueError, match="3 outputs .multi-objective.: choose one with rm_objective"):
        ARGSEngine(lm, rm, tokenizer=tok)
    with pytest.raises(ValueError, match="rm_weights has 2 values but the reward model has 3 outputs"):
        ARGSEngine(lm, rm, tokenizer=tok, rm_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="rm_objective must be an output index in \\[0, 3\\)"):
        ARGSEngine(lm, rm, tokenizer=tok, rm_objective=3)
    with pytest.raises(ValueError, match="not both"):
        ARGSEngine(lm, rm, tokenizer=tok, rm_weights=WEIGHTS, rm_objective=0)
    with pytest.raises(ValueError, match="finite numbers"):
        ARGSParams(rm_weights=[1.0, float("nan")])
    engine = ARGSEngine(lm, rm, tokenizer=tok, rm_weights=WEIGHTS)
    with pytest.raises(ValueError, match="rm_weights has 1 values"):
        engine.generate(["hi"], ARGSParams(rm_weights=[1.0]), progress=False)
    single = ARGSEngine(lm, tiny_rm(), tokenizer=tok)
    with pytest.raises(ValueError, match="applies to multi-objective reward models"):
        single.generate(["hi"], ARGSParams(rm_weights=[1.0]), progress=False)


def test_hf_processor_takes_weights(models):
    from args_engine.hf import ARGSLogitsProcessor
    lm, rm, tok = models
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    proc = ARGSLogitsProcessor(rm, k=5, w=1.5, rm_weights=WEIGHTS)
    out = lm.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[proc], do_sample=False,
                      max_new_tokens=N, pad_token_id=0, eos_token_id=None)
    native = ARGSEngine(lm, rm, tokenizer=tok, backend="native", rm_weights=WEIGHTS, raw=True, eos_ids=set())
    expected = native.generate([ids[0].tolist()], ARGSParams(k=5, w=1.5, max_new_tokens=N), progress=False)[0]
    assert out[0, ids.shape[1]:].tolist() == expected.token_ids


def test_server_args_rm_weights(models):
    lm, rm, tok = tiny_lm(dtype=torch.float32), tiny_rm(num_labels=3, dtype=torch.float32), char_tokenizer()
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", block_size=4, rm_weights=WEIGHTS)
    body = {"model": "tiny", "prompt": "Hello there", "max_tokens": 6, "args_k": 5, "args_w": 3.0}
    with ServerThread(create_app(engine, ServerConfig(served_model_names=["tiny"]))) as url:
        status, default, _ = post(url, "/v1/completions", body)
        assert status == 200
        status, own, _ = post(url, "/v1/completions", {**body, "args_rm_weights": [0.0, 0.0, 1.0]})
        assert status == 200
        status, err, _ = post(url, "/v1/completions", {**body, "args_rm_weights": [1.0]})
        assert status == 400 and err["error"]["param"] == "args_rm_weights"
        assert "3 outputs" in err["error"]["message"]
    oracle = ARGSEngine(lm, rm, tokenizer=tok, backend="native", block_size=4, rm_weights=[0.0, 0.0, 1.0])
    ids = tok("Hello there")["input_ids"]  # a completion prompt is not chat-templated
    want = oracle.generate([ids], ARGSParams(k=5, w=3.0, max_new_tokens=6), progress=False)[0]
    assert own["choices"][0]["text"] == want.text
    assert own["choices"][0]["rewards"] != default["choices"][0]["rewards"]
