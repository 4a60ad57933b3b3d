"""Completions with echo, as lm-evaluation-harness scores choices (echo: true, logprobs: 1, max_tokens 1 or 0,
prompt = context + continuation): the prompt's text comes back before the completion, and with logprobs each
prompt token's log p (the first null), equal to plain transformers' on the same ids."""
import pytest
import torch

from args_engine import ARGSEngine
from args_engine.integrations.server import create_app
from args_engine.integrations.server_config import ServerConfig
from server_util import ServerThread, post
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

ARGS = {"args_k": 4, "args_w": 1.0}


@pytest.fixture(scope="module")
def setup():
    lm, tok = tiny_lm(dtype=torch.float32), char_tokenizer()
    engine = ARGSEngine(lm, tiny_rm(dtype=torch.float32), tokenizer=tok, backend="native", block_size=4)
    with ServerThread(create_app(engine, ServerConfig(served_model_names=["tiny"]))) as url:
        yield url, lm, tok


def oracle(lm, ids: list[int]) -> list[float]:
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)  # [P, V]
    return [logp[p, ids[p + 1]].item() for p in range(len(ids) - 1)]


def complete(url, **body):
    status, out, _ = post(url, "/v1/completions", {"model": "tiny", **ARGS, **body})
    assert status == 200, out
    return out


@pytest.mark.parametrize("max_tokens", [1, 0])
def test_echo_scores_the_prompt_like_lm_eval_reads_it(setup, max_tokens):
    url, lm, tok = setup
    context, continuation = "Question: is the sky blue?\nAnswer:", " yes"
    ids = tok(context + continuation)["input_ids"]
    ctxlen = len(tok(context)["input_ids"])
    for prompt in (ids, context + continuation):  # lm-eval sends token ids; text works too
        out = complete(url, prompt=prompt, echo=True, logprobs=1, max_tokens=max_tokens, temperature=0)
        c = out["choices"][0]
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(ids) + max_tokens
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["token_logprobs"][1:len(ids)] == pytest.approx(oracle(lm, ids), abs=1e-5)
        assert c["text"].startswith(context + continuation) and lp["text_offset"][0] == 0
        # lm-eval's parse: the continuation's log-likelihood and whether it is the greedy choice
        cont = lp["token_logprobs"][ctxlen:len(ids)]
        assert sum(cont) == pytest.approx(sum(oracle(lm, ids)[ctxlen - 1:]), abs=1e-4)
        assert all(len(top) == 1 for top in lp["top_logprobs"][1:])
        assert out["usage"]["completion_tokens"] == max_tokens


def test_echo_without_logprobs_and_several_prompts(setup):
    url, _, _ = setup
    out = complete(url, prompt=["Hi", "Hello"], echo=True, max_tokens=3)
    assert [c["text"][:len(p)] for c, p in zip(out["choices"], ["Hi", "Hello"])] == ["Hi", "Hello"]
    assert all(c["logprobs"] is None for c in out["choices"])
    plain = complete(url, prompt=["Hi", "Hello"], max_tokens=3)
    assert [c["text"] for c in out["choices"]] == [p + c["text"] for p, c in zip(["Hi", "Hello"], plain["choices"])]
