"""Every request field is honoured, accepted as a no-op, or refused with a 400 naming it (issue 30); temperature
means what it means in OpenAI's API. Raw HTTP, so the checks see the error envelope as sent."""
import contextlib
import logging

import openai
import pytest
import torch

from args_engine import ARGSEngine
from args_engine.integrations.fields import BOTH, CHAT, COMPLETIONS, FIELDS, accepted
from args_engine.integrations.server import create_app
from args_engine.integrations.server_config import ServerConfig
from server_util import ServerThread, post
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

ARGS = {"args_k": 5, "args_w": 1.5}
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


@contextlib.contextmanager
def server(**config):
    e = ARGSEngine(tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32), tokenizer=char_tokenizer(),
                   backend="native", block_size=4, batch_size=8)
    with ServerThread(create_app(e, ServerConfig(served_model_names=["tiny"], **config))) as url:
        yield url


@pytest.fixture(scope="module")
def url():
    with server() as u:
        yield u


def complete(url, **body):
    return post(url, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 8, **ARGS, **body})


def chat(url, **body):
    return post(url, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, **ARGS,
                                              **body})


def refused(status, body, param, *words):
    """A 400 in OpenAI's envelope whose param is `param` and whose message holds every word."""
    assert status == 400, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param
    for word in words:
        assert word in err["message"], err["message"]
    return err


def text(body, chat_=True) -> str:
    c = body["choices"][0]
    return c["message"]["content"] if chat_ else c["text"]


@pytest.mark.parametrize("endpoint, cls", [(COMPLETIONS, "CompletionCreateParamsBase"),
                                           (CHAT, "CompletionCreateParamsBase")])
def test_every_openai_field_is_in_the_table(endpoint, cls):
    import openai.types.chat.completion_create_params as chat_params
    import openai.types.completion_create_params as completion_params

    module = chat_params if endpoint == CHAT else completion_params
    theirs = set(getattr(module, cls).__annotations__)
    ours = {name for name, f in FIELDS.items() if endpoint in f.endpoints}
    assert theirs - ours == set()  # a field OpenAI adds must be classified here before it is accepted
    assert all(f.endpoints in (BOTH, (COMPLETIONS,), (CHAT,)) for f in FIELDS.values())


CHAT_NOOPS = {"user": "u-1", "metadata": {"team": "x"}, "store": False, "service_tier": "auto",
              "prompt_cache_key": "k", "prompt_cache_retention": "24h", "prompt_cache_options": {"ttl": "30m"},
              "safety_identifier": "s", "parallel_tool_calls": False,
              # unsupported fields whose value asks for nothing
              "tools": [], "tool_choice": "none", "functions": [], "function_call": "none",
              "response_format": {"type": "text"}, "modalities": ["text"], "audio": None, "prediction": None}


def test_noop_fields_are_accepted_and_change_nothing(url):
    status, plain, _ = chat(url)
    assert status == 200
    status, body, _ = chat(url, **CHAT_NOOPS)
    assert status == 200 and text(body) == text(plain)
    assert all(CHAT in FIELDS[name].endpoints and FIELDS[name].use != "used" for name in CHAT_NOOPS)
    status, plain, _ = complete(url)
    status, body, _ = complete(url, user="u-1", echo=False, suffix=None, stream_options=None)
    assert status == 200 and text(body, False) == text(plain, False)


def test_official_client_with_noop_fields(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, user="u-1", store=False,
                                       metadata={"team": "x"}, service_tier="auto", extra_body=ARGS)
    assert r.choices[0].message.content == text(chat(url)[1])


@pytest.mark.parametrize("endpoint, field, value, words", [
    (COMPLETIONS, "suffix", "The end.", ["not supported"]),
    (CHAT, "response_format", {"type": "json_object"}, ["not supported", "free text"]),
    (CHAT, "response_format", {"type": "json_schema", "json_schema": {"name": "x"}}, ["not supported"]),
    (CHAT, "tools", [{"type": "function", "function": {"name": "f"}}], ["not supported", "tools"]),
    (CHAT, "tool_choice", "auto", ["not supported"]),
    (CHAT, "functions", [{"name": "f"}], ["not supported"]),
    (CHAT, "function_call", "auto", ["not supported"]),
    (CHAT, "modalities", ["text", "audio"], ["not supported"]),
    (CHAT, "audio", {"voice": "alloy", "format": "wav"}, ["not supported"]),
    (CHAT, "prediction", {"type": "content", "content": "x"}, ["not supported"]),
    (CHAT, "web_search_options", {}, ["not supported"]),
    (CHAT, "reasoning_effort", "low", ["not supported"]),
    (CHAT, "verbosity", "low", ["not supported"]),
    (CHAT, "moderation", {"model": "omni-moderation-latest"}, ["not supported"]),
])
def test_unsupported_fields_are_refused(url, endpoint, field, value, words):
    status, body, _ = (chat if endpoint == CHAT else complete)(url, **{field: value})
    err = refused(status, body, field, field, *words)
    assert err["code"] == "unsupported_parameter"
    assert field in accepted(endpoint, "unsupported")


@pytest.mark.parametrize("endpoint, field, words", [
    (COMPLETIONS, "foo", ["Unrecognized request argument supplied: foo"]),
    (CHAT, "foo", ["Unrecognized request argument supplied: foo"]),
    (COMPLETIONS, "top_logprobs", ["/v1/chat/completions"]),   # a chat field sent to completions
    (COMPLETIONS, "messages", ["/v1/chat/completions"]),
    (CHAT, "echo", ["/v1/completions"]),                       # and a completions field sent to chat
    (CHAT, "prompt", ["/v1/completions"]),
])
def test_unknown_fields_are_refused(url, endpoint, field, words):
    status, body, _ = (chat if endpoint == CHAT else complete)(url, **{field: 1})
    err = refused(status, body, field, *words)
    assert err["code"] == "unknown_parameter"


@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT])
def test_an_unknown_args_field_is_refused(url, endpoint):
    status, body, _ = (chat if endpoint == CHAT else complete)(url, args_kk=3)  # was: k=10, silently
    refused(status, body, "args_kk", "args_kk", "did you mean args_k?", "args_w")
    status, body, _ = (chat if endpoint == CHAT else complete)(url, args_temperature=0.5)
    refused(status, body, "args_temperature", "args_temperature")


def test_lenient_server_drops_unknown_fields_and_logs_them(caplog):
    with server(lenient_fields=True) as u:
        status, plain, _ = chat(u)
        with caplog.at_level(logging.WARNING, logger="args_engine.server"):
            status, body, _ = chat(u, foo=1, bar={"x": 2})
        assert status == 200 and text(body) == text(plain)
        assert "foo, bar" in caplog.text and "lenient" in caplog.text
        refused(*chat(u, args_kk=3)[:2], "args_kk")                     # never our own namespace
        refused(*chat(u, response_format={"type": "json_object"})[:2], "response_format")  # nor a refused field


def test_default_server_is_strict():
    assert ServerConfig().lenient_fields is False


def test_temperature_samples_without_args_mode(url):
    plain = {"args_k": None, "args_w": None}  # as a plain OpenAI client sends it: ARGS at its defaults
    texts = []
    for seed in (1, 2, 3):
        status, body, _ = chat(url, temperature=1.5, seed=seed, **plain)
        assert status == 200
        texts.append(text(body))
        # the same as asking for stochastic ARGS by name
        assert text(chat(url, temperature=1.5, seed=seed, args_mode="stochastic", **plain)[1]) == texts[-1]
    assert len(set(texts)) == 3, texts  # was: the greedy text three times
    greedy = text(chat(url, **plain)[1])
    assert text(chat(url, temperature=0, **plain)[1]) == greedy
    assert text(chat(url, temperature=0, args_mode="greedy", **plain)[1]) == greedy
    assert greedy not in texts
    status, body, _ = complete(url, n=2, temperature=1.0, seed=4)  # distinct samples: no args_mode needed
    assert status == 200 and len(body["choices"]) == 2


def test_greedy_with_a_temperature_is_refused(url):
    status, body, _ = chat(url, args_mode="greedy", temperature=1.5)  # was: greedy, silently
    refused(status, body, "temperature", "args_mode", "greedy", "1.5")
    assert chat(url, args_mode="greedy", temperature=0)[0] == 200


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_zero_says_echo_is_needed(url, field):
    status, body, _ = chat(url, **{"max_tokens": None, field: 0})
    refused(status, body, field, "echo: true (completions)")
    refused(*complete(url, max_tokens=0)[:2], "max_tokens", "echo: true")
    refused(*complete(url, echo=True, stream=True)[:2], "echo", "cannot be streamed")


def test_max_completion_tokens_is_honoured(url):
    status, body, _ = chat(url, max_tokens=None, max_completion_tokens=3)  # was: 128 tokens
    assert status == 200 and body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
    refused(*chat(url, max_tokens=4, max_completion_tokens=3)[:2], "max_completion_tokens", "disagree")
    assert chat(url, max_tokens=3, max_completion_tokens=3)[0] == 200


def test_stream_options_fields(url):
    status, body, _ = complete(url, stream=True, stream_options={"include_usage": True, "verbose": True})
    refused(status, body, "stream_options", "verbose")
