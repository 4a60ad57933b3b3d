"""Every request field the server knows, in one table, so that no field is silently ignored.

The table holds every field of OpenAI's two endpoints (openai-python 3.63: types/completion_create_params.py and
types/chat/completion_create_params.py), the logit controls vLLM adds, and ours (args_*). Each field is
  used         parsed and honoured (protocol.parse_params and the endpoints);
  no-op        accepted and ignored: it cannot change the output (billing, storage, cache hints, an end user's id);
  unsupported  it would change the output and this server does not implement it: a 400 naming it, unless its value
               asks for nothing (null always; tools [], tool_choice "none", response_format
               {"type": "text"}, ...).
Any other field is a 400 naming it, as OpenAI's API answers an unrecognized argument. ServerConfig.lenient_fields
drops such unknown fields with a log line instead, for odd clients; never an args_* field (a typo there would
silently run the defaults) and never an unsupported one.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Callable

from .protocol import BadRequest

log = logging.getLogger("args_engine.server")

COMPLETIONS, CHAT = "completions", "chat"
BOTH = (COMPLETIONS, CHAT)
ARGS_PREFIX = "args_"


@dataclass(frozen=True)
class Field:
    """What the server does with one request field, on which endpoints. neutral: the values of an unsupported
    field that ask for nothing (null is always neutral); why: what the 400 says is missing."""

    use: str  # "used" | "no-op" | "unsupported"
    endpoints: tuple[str, ...] = BOTH
    neutral: Callable[[Any], bool] = lambda value: False
    why: str = ""


def _used(*endpoints: str) -> Field:
    return Field("used", endpoints or BOTH)


def _noop(*endpoints: str) -> Field:
    return Field("no-op", endpoints or BOTH)


def _unsupported(endpoint: str, why: str, neutral: Callable[[Any], bool] = lambda value: False) -> Field:
    return Field("unsupported", (endpoint,), neutral, why)


FIELDS: dict[str, Field] = {
    # the request itself
    "model": _used(), "prompt": _used(COMPLETIONS), "messages": _used(CHAT),
    # OpenAI's decoding fields (best_of is OpenAI's on completions, ours on chat too)
    "max_tokens": _used(), "max_completion_tokens": _used(CHAT), "n": _used(), "best_of": _used(),
    "echo": _used(COMPLETIONS), "stop": _used(), "temperature": _used(), "top_p": _used(), "seed": _used(), "stream": _used(),
    "stream_options": _used(), "logprobs": _used(), "top_logprobs": _used(CHAT), "presence_penalty": _used(),
    "frequency_penalty": _used(), "logit_bias": _used(),
    # vLLM's logit controls
    "repetition_penalty": _used(), "no_repeat_ngram_size": _used(), "min_p": _used(),
    # ARGS
    "args_k": _used(), "args_w": _used(), "args_mode": _used(), "args_gate": _used(), "args_rm_weights": _used(),
    # bookkeeping for OpenAI's platform: nothing a local server would do differently
    "user": _noop(), "metadata": _noop(CHAT), "store": _noop(CHAT), "service_tier": _noop(CHAT),
    "prompt_cache_key": _noop(CHAT), "prompt_cache_retention": _noop(CHAT), "prompt_cache_options": _noop(CHAT),
    "safety_identifier": _noop(CHAT),
    "parallel_tool_calls": _noop(CHAT),  # means something only with tools, which are refused
    # would change the output: refused
    "suffix": _unsupported(COMPLETIONS, "is not supported: the server does not insert text before a suffix",
                           lambda v: v == ""),
    "tools": _unsupported(CHAT, "is not supported: the server does not call tools", lambda v: v == []),
    "tool_choice": _unsupported(CHAT, "is not supported: the server does not call tools; only \"none\" is "
                                      "accepted", lambda v: v == "none"),
    "functions": _unsupported(CHAT, "is not supported: the server does not call functions", lambda v: v == []),
    "function_call": _unsupported(CHAT, "is not supported: the server does not call functions; only \"none\" is "
                                        "accepted", lambda v: v == "none"),
    "response_format": _unsupported(CHAT, "is not supported: the server generates free text only "
                                          "({\"type\": \"text\"})", lambda v: v == {"type": "text"}),
    "modalities": _unsupported(CHAT, "is not supported: the server generates text only ([\"text\"])",
                               lambda v: v == ["text"]),
    "audio": _unsupported(CHAT, "is not supported: the server generates text only"),
    "prediction": _unsupported(CHAT, "is not supported: the server has no predicted outputs"),
    "web_search_options": _unsupported(CHAT, "is not supported: the server does not search the web"),
    "reasoning_effort": _unsupported(CHAT, "is not supported: the server has no reasoning budget to set"),
    "verbosity": _unsupported(CHAT, "is not supported: the server has no verbosity setting"),
    "moderation": _unsupported(CHAT, "is not supported: the server runs no moderation model"),
}


def accepted(endpoint: str, use: str) -> list[str]:
    """The fields `endpoint` treats as `use` ("used", "no-op" or "unsupported"), in table order (docs, tests)."""
    return [name for name, f in FIELDS.items() if f.use == use and endpoint in f.endpoints]


def check_fields(body: dict, chat: bool, lenient: bool = False) -> dict:
    """`body` with every field checked against FIELDS: a BadRequest naming the first unsupported or unknown one.
    lenient: unknown fields (not args_*) are dropped, and logged, instead of refused."""
    endpoint = CHAT if chat else COMPLETIONS
    dropped = []
    for name, value in body.items():
        f = FIELDS.get(name)
        if f is not None and endpoint in f.endpoints:
            if f.use == "unsupported" and value is not None and not f.neutral(value):
                raise BadRequest(f"{name} {f.why}", name, code="unsupported_parameter")
        elif lenient and not name.startswith(ARGS_PREFIX):
            dropped.append(name)
        else:
            raise BadRequest(_unknown(name, endpoint), name, code="unknown_parameter")
    if dropped:
        log.warning("dropped unknown request fields (lenient_fields): %s", ", ".join(dropped))
        body = {k: v for k, v in body.items() if k not in dropped}
    return body


def _unknown(name: str, endpoint: str) -> str:
    path = f"/v1/{'chat/completions' if endpoint == CHAT else 'completions'}"
    message = f"Unrecognized request argument supplied: {name} (not a field of {path})"
    if name.startswith(ARGS_PREFIX):
        ours = [n for n in FIELDS if n.startswith(ARGS_PREFIX)]
        close = difflib.get_close_matches(name, ours, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{message}: the ARGS fields are {', '.join(ours)}{hint}"
    if name in FIELDS:
        other = [e for e in FIELDS[name].endpoints if e != endpoint]
        if other:
            return f"{message}: it belongs to /v1/{'chat/completions' if other[0] == CHAT else 'completions'}"
    return message
