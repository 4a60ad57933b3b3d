"""OpenAI request parsing and response shapes for the server: body dict -> ARGSParams, outputs -> JSON."""
from __future__ import annotations

import time
import uuid

from ..params import ARGSParams


class BadRequest(ValueError):
    """A client error: HTTP 400 with an OpenAI-style error body naming `param`."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, param: str | None = None, type_: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# the engine's ValueError messages start with the ARGSParams field name; map it back to the request field
_PARAM_OF = {"k": "args_k", "w": "args_w", "mode": "args_mode", "temperature": "temperature",
             "max_new_tokens": "max_tokens", "seed": "seed", "stop": "stop"}


def param_of(message: str) -> str | None:
    return next((v for k, v in _PARAM_OF.items() if message.startswith(k + " ") or message.startswith(k + "=")),
                None)


def _get(body: dict, name: str, types, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):  # JSON true is not 1
        raise BadRequest(f"{name} has the wrong type: {value!r}", name)
    return value


def parse_params(body: dict, default_max_tokens: int = 128) -> tuple[list[ARGSParams], int]:
    """-> (one ARGSParams per sample, n). best_of samples are drawn per prompt (default n); the n with the highest
    final reward become the choices. Stochastic samples get seeds seed, seed + 1, ... (fresh when no seed)."""
    n = _get(body, "n", int, 1)
    if n < 1 or n > 64:
        raise BadRequest(f"n must be an integer in [1, 64], got {n}", "n")
    best_of = _get(body, "best_of", int, n)
    if best_of < n or best_of > 64:
        raise BadRequest(f"best_of must be an integer in [n={n}, 64], got {best_of}", "best_of")
    stop = _get(body, "stop", (str, list))
    stop = [stop] if isinstance(stop, str) else stop
    seed = _get(body, "seed", int)
    mode = _get(body, "args_mode", str, "greedy")
    temperature = _get(body, "temperature", (int, float), 0.7 if mode == "stochastic" else 1.0)
    kw = dict(k=_get(body, "args_k", int, 10), w=_get(body, "args_w", (int, float), 1.0), mode=mode,
              temperature=temperature, max_new_tokens=_get(body, "max_tokens", int, default_max_tokens),
              stop=stop or None)
    if best_of > n and mode != "stochastic":
        raise BadRequest("best_of > n needs args_mode='stochastic': greedy ARGS samples are all the same", "best_of")
    if best_of > n and body.get("stream"):
        raise BadRequest("best_of > n cannot be streamed: the best samples are known only at the end", "best_of")
    try:
        return [ARGSParams(seed=None if seed is None else seed + i, **kw) for i in range(best_of)], n
    except ValueError as e:
        raise BadRequest(str(e), param_of(str(e))) from e


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, rid: str, model: str, choices: list, usage: dict | None = None) -> dict:
    """kind: text_completion, chat.completion or chat.completion.chunk."""
    out = {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def choice(index: int, text: str, finish_reason: str | None, chat: bool, delta: bool = False, first: bool = False,
           **extra) -> dict:
    """One choice. Extra fields (ARGS rewards) ride along; OpenAI clients keep unknown fields."""
    if not chat:
        body = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    elif delta:
        d = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        body = {"index": index, "delta": d, "logprobs": None, "finish_reason": finish_reason}
    else:
        body = {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}
    body.update(extra)
    return body
