"""OpenAI request parsing and response shapes for the server: body dict -> ARGSParams, outputs -> JSON."""
from __future__ import annotations

import math
import uuid

from ..params import MAX_LOGPROBS, ARGSParams
from .server_config import ServerConfig


class BadRequest(ValueError):
    """A client error: HTTP `status` (400 unless said) with an OpenAI-style error body naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.code, self.headers = param, status, code, headers


def error_body(message: str, param: str | None = None, type_: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# the engine's ValueError messages start with the ARGSParams field name; map it back to the request field
_PARAM_OF = {"k": "args_k", "w": "args_w", "mode": "args_mode", "temperature": "temperature",
             "max_new_tokens": "max_tokens", "seed": "seed", "stop": "stop", "logit_bias": "logit_bias",
             "gate": "args_gate", "rm_weights": "args_rm_weights",
             **{name: name for name in ("top_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
                                        "no_repeat_ngram_size", "min_p", "logprobs")}}


def param_of(message: str) -> str | None:
    return next((v for k, v in _PARAM_OF.items() if message.startswith(k) and message[len(k):len(k) + 1] in " =:"
                 and len(message) > len(k)), None)


def _get(body: dict, name: str, types, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):  # JSON true is not 1
        raise BadRequest(f"{name} has the wrong type: {value!r}", name)
    return value


# logit controls: OpenAI's fields, and the Hugging Face / vLLM names of the others
_CONTROLS = {"top_p": ((int, float), 1.0), "presence_penalty": ((int, float), 0.0),
             "frequency_penalty": ((int, float), 0.0), "repetition_penalty": ((int, float), 1.0),
             "no_repeat_ngram_size": (int, 0), "min_p": ((int, float), 0.0)}


def parse_logit_bias(body: dict) -> dict[int, float] | None:
    """OpenAI's logit_bias: {"token id": bias} (JSON keys are strings) -> {token id: bias}."""
    bias = _get(body, "logit_bias", dict)
    if not bias:
        return None
    try:
        return {int(t): b for t, b in bias.items()}
    except ValueError:
        raise BadRequest(f"logit_bias keys must be token ids, got {sorted(bias)[:5]}", "logit_bias") from None


def parse_logprobs(body: dict, chat: bool) -> int | None:
    """OpenAI's fields -> the alternatives per token to report (None: no logprobs). Completions: `logprobs`, an
    integer in [0, 5]. Chat: `logprobs` true, with `top_logprobs` in [0, 20]."""
    if not chat:
        n = _get(body, "logprobs", int)
        if n is not None and not 0 <= n <= 5:
            raise BadRequest(f"logprobs must be an integer in [0, 5], got {n}", "logprobs")
        return n
    wanted, top = _get(body, "logprobs", bool, False), _get(body, "top_logprobs", int)
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise BadRequest(f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], got {top}", "top_logprobs")
    if top is not None and not wanted:
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    return (top or 0) if wanted else None


def parse_params(body: dict, config: ServerConfig, n_prompts: int = 1,
                 chat: bool = False) -> tuple[list[ARGSParams], int, bool]:
    """-> (one ARGSParams per sample, n, whether max_tokens was given). best_of samples are drawn per prompt
    (default n); the n with the highest final reward become the choices. Stochastic samples get seeds seed,
    seed + 1, ... (fresh when no seed). Everything a request may ask is checked against `config`'s limits."""
    n = _get(body, "n", int, 1)
    if n < 1 or n > config.max_choices:
        raise BadRequest(f"n must be an integer in [1, {config.max_choices}], got {n}", "n")
    best_of = _get(body, "best_of", int, n)
    if best_of < n or best_of > config.max_choices:
        raise BadRequest(f"best_of must be an integer in [n={n}, {config.max_choices}], got {best_of}", "best_of")
    if n_prompts * best_of > config.max_choices:
        raise BadRequest(f"{n_prompts} prompts x {best_of} samples exceed the {config.max_choices} choices one "
                         "request may ask for", "best_of" if best_of > n else "n")
    stop = _get(body, "stop", (str, list))
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None:
        if len(stop) > config.max_stop:
            raise BadRequest(f"stop takes at most {config.max_stop} strings, got {len(stop)}", "stop")
        if any(isinstance(x, str) and len(x) > config.max_stop_chars for x in stop):
            raise BadRequest(f"a stop string may hold at most {config.max_stop_chars} characters", "stop")
    seed = _get(body, "seed", int)
    mode, temperature = parse_sampling(body)
    k = _get(body, "args_k", int, 10)
    if k > config.max_k:
        raise BadRequest(f"args_k must be at most {config.max_k} on this server, got {k}", "args_k")
    echo = not chat and _get(body, "echo", bool, False)
    if echo and body.get("stream"):
        raise BadRequest("echo cannot be streamed here: send stream false to get the prompt with its "
                         "log-probabilities", "echo")
    max_tokens = parse_max_tokens(body, chat, echo)
    logprobs = parse_logprobs(body, chat)
    kw = dict(k=k, w=_get(body, "args_w", (int, float), 1.0), mode=mode, temperature=temperature,
              max_new_tokens=config.default_max_tokens if max_tokens is None else max_tokens, stop=stop or None,
              logprobs=logprobs, logit_bias=parse_logit_bias(body),
              # echo with logprobs: the prompt's too (with max_tokens 0 they are computed whatever is shown)
              prompt_logprobs=(logprobs or 0) if echo and (logprobs is not None or max_tokens == 0) else None,
              gate=_get(body, "args_gate", (int, float)), rm_weights=_get(body, "args_rm_weights", list),
              **{name: _get(body, name, kind, default) for name, (kind, default) in _CONTROLS.items()})
    if n > 1 and mode == "greedy" and body.get("args_mode") is None:
        raise BadRequest("n > 1 in the default greedy mode returns n identical choices; set temperature > 0 or "
                         "args_mode ('stochastic' for distinct samples, or 'greedy' to ask for the copies)", "n")
    if best_of > n and mode != "stochastic":
        raise BadRequest("best_of > n needs sampling (temperature > 0, or args_mode='stochastic'): greedy ARGS "
                         "samples are all the same", "best_of")
    if best_of > n and body.get("stream"):
        raise BadRequest("best_of > n cannot be streamed: the best samples are known only at the end", "best_of")
    try:
        params = [ARGSParams(seed=None if seed is None else seed + i, **kw) for i in range(best_of)]
        params[0].validate()
    except ValueError as e:
        raise BadRequest(str(e), param_of(str(e))) from e
    return params, n, max_tokens is not None


def parse_sampling(body: dict) -> tuple[str, float]:
    """-> (mode, temperature), with OpenAI's meaning of temperature: without args_mode, temperature > 0 samples
    (stochastic ARGS at that temperature) and 0 or none is greedy (the default). args_mode "stochastic" without
    a temperature samples at 0.7; args_mode "greedy" with temperature > 0 asks for two things at once: a 400."""
    mode = _get(body, "args_mode", str)
    temperature = _get(body, "temperature", (int, float))
    if temperature is not None and (not math.isfinite(temperature) or temperature < 0):
        raise BadRequest(f"temperature must be a finite number >= 0, got {temperature}", "temperature")
    if mode is None:
        mode = "stochastic" if temperature else "greedy"
    elif mode == "greedy" and temperature:
        raise BadRequest(f"temperature {temperature} asks for sampling but args_mode is 'greedy'; send one of them "
                         "(temperature 0 is greedy)", "temperature")
    if mode != "stochastic":  # greedy reads no temperature: 1.0 keeps its row the same whatever was sent
        return mode, 1.0
    return mode, 0.7 if temperature is None else temperature


def parse_max_tokens(body: dict, chat: bool, echo: bool = False) -> int | None:
    """max_tokens, or chat's max_completion_tokens (OpenAI's newer name for it); None when neither is given.
    0 scores the prompt without generating: completions with echo only (what else would it return?)."""
    given = {name: _get(body, name, int) for name in (("max_tokens", "max_completion_tokens") if chat else
                                                     ("max_tokens",))}
    given = {name: v for name, v in given.items() if v is not None}
    if len(set(given.values())) > 1:
        raise BadRequest(f"max_tokens and max_completion_tokens disagree ({given['max_tokens']} and "
                         f"{given['max_completion_tokens']}); send one of them", "max_completion_tokens")
    for name, value in given.items():
        if value == 0 and not echo:
            raise BadRequest(f"{name} must be >= 1: {name} 0 scores the prompt without generating, which needs "
                             "echo: true (completions)", name)
        if value < 0:
            raise BadRequest(f"{name} must be an integer >= 1, got {value}", name)
    return next(iter(given.values()), None)


STREAM_OPTIONS = ("include_usage", "include_obfuscation")  # the second pads chunks on OpenAI's side: a no-op here


def stream_options(body: dict) -> bool:
    """-> include_usage."""
    opts = _get(body, "stream_options", dict, {})
    unknown = [name for name in opts if name not in STREAM_OPTIONS]
    if unknown:
        raise BadRequest(f"stream_options has no field {unknown[0]!r}; it takes {', '.join(STREAM_OPTIONS)}",
                         "stream_options")
    include = opts.get("include_usage", False)
    if not isinstance(include, bool):
        raise BadRequest(f"stream_options.include_usage must be true or false, got {include!r}", "stream_options")
    return include


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, rid: str, created: int, model: str, choices: list, usage: dict | None = None) -> dict:
    """kind: text_completion, chat.completion or chat.completion.chunk. `created`: the request's time (every
    chunk of a stream carries the same)."""
    out = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
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


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(tokenizer, token_ids: list[int], logprobs: list[float | None],
                        top: list[list[tuple[int, float]] | None], offset: int = 0) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs ({token: log p}), text_offset. With
    echo the prompt's tokens come first, the first of them with null log p and alternatives."""
    tokens = [_token_text(tokenizer, t) for t in token_ids]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets,
            "top_logprobs": [None if row is None else {_token_text(tokenizer, t): lp for t, lp in row} for row in top]}


def chat_logprobs(tokenizer, token_ids: list[int], logprobs: list[float], top: list[list[tuple[int, float]]]) -> dict:
    """The chat shape: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""
    def entry(t: int, lp: float) -> dict:
        s = _token_text(tokenizer, t)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}
    return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in row]}
                        for t, lp, row in zip(token_ids, logprobs, top)]}
