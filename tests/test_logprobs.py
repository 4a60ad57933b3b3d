"""logprobs: the LM's log p of each chosen token and of its N likeliest tokens, from the engine and the server
in OpenAI's shapes; asking for them changes no token."""
import json
import urllib.request

import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.integrations.server import create_app
from args_engine.integrations.server_config import ServerConfig
from server_util import ServerThread, post
from tiny_models import char_tokenizer, tiny_lm, tiny_rm


@pytest.fixture(scope="module")
def engine():
    return ARGSEngine(tiny_lm(), tiny_rm(), tokenizer=char_tokenizer(), backend="native", block_size=4, raw=True)


@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_engine_logprobs_are_the_lms(engine, mode):
    params = dict(k=5, w=1.5, mode=mode, temperature=0.9, max_new_tokens=8, seed=3)
    plain = engine.generate(["Hello there", "Hi"], ARGSParams(**params), progress=False)
    outs = engine.generate(["Hello there", "Hi"], ARGSParams(**params, logprobs=3), progress=False)
    for a, o in zip(plain, outs):
        assert a.token_ids == o.token_ids and a.logprobs is None
        assert len(o.logprobs) == len(o.top_logprobs) == len(o.token_ids)
        with torch.no_grad():
            ids = torch.tensor([o.prompt_token_ids + o.token_ids])
            logp = torch.log_softmax(engine.lm(input_ids=ids).logits[0].double(), -1)  # [T, V]
        P = len(o.prompt_token_ids)
        for i, (tok, lp, top) in enumerate(zip(o.token_ids, o.logprobs, o.top_logprobs)):
            row = logp[P - 1 + i]
            assert lp == pytest.approx(row[tok].item(), abs=1e-9)
            best = row.topk(3)
            assert [t for t, _ in top] == best.indices.tolist()
            assert [v for _, v in top] == pytest.approx(best.values.tolist(), abs=1e-9)


def test_logprobs_need_native_and_a_valid_count():
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference")
    with pytest.raises(ValueError, match="native"):
        ref.generate("Hi", ARGSParams(logprobs=2), progress=False)
    for bad in (-1, 21, 1.5, True):
        with pytest.raises(ValueError, match="logprobs"):
            ARGSParams(logprobs=bad)


@pytest.fixture(scope="module")
def url():
    e = ARGSEngine(tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32), tokenizer=char_tokenizer(),
                   backend="native", block_size=4)
    with ServerThread(create_app(e, ServerConfig(served_model_names=["tiny"]))) as u:
        yield u


def stream(url, path, body):
    req = urllib.request.Request(url + path, method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({**body, "stream": True}).encode())
    with urllib.request.urlopen(req) as r:
        return [json.loads(line[6:]) for line in r.read().decode().splitlines() if line.startswith("data: {")]


def test_completions_logprobs(url):
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 6, "logprobs": 2, "args_k": 4}
    status, r, _ = post(url, "/v1/completions", body)
    lp = r["choices"][0]["logprobs"]
    assert status == 200 and set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    n = r["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert all(len(top) <= 2 and max(top.values()) >= chosen - 1e-6
               for top, chosen in zip(lp["top_logprobs"], lp["token_logprobs"]))
    assert "".join(lp["tokens"]) == r["choices"][0]["text"] and lp["text_offset"][0] == 0
    chunks = stream(url, "/v1/completions", body)
    streamed = [t for c in chunks for ch in c["choices"] if ch.get("logprobs") for t in ch["logprobs"]["tokens"]]
    assert streamed == lp["tokens"]
    assert post(url, "/v1/completions", {**body, "logprobs": 6})[0] == 400


def test_chat_logprobs(url):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "logprobs": True,
            "top_logprobs": 3, "args_k": 4}
    status, r, _ = post(url, "/v1/chat/completions", body)
    content = r["choices"][0]["logprobs"]["content"]
    assert status == 200 and len(content) == r["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and len(entry["top_logprobs"]) == 3
        assert entry["bytes"] == list(entry["token"].encode())
    plain = post(url, "/v1/chat/completions", {**body, "logprobs": False, "top_logprobs": None})[1]
    assert plain["choices"][0]["logprobs"] is None
    assert plain["choices"][0]["message"] == r["choices"][0]["message"]
    status, err, _ = post(url, "/v1/chat/completions", {**body, "logprobs": False})
    assert status == 400 and err["error"]["param"] == "top_logprobs"
