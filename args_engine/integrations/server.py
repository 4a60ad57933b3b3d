"""An OpenAI-compatible HTTP server over the native engine (FastAPI + uvicorn).

    app = create_app(ARGSEngine(lm, rm, tokenizer=tok, backend="native"), ServerConfig(api_key="..."))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or: args-engine serve --lm DIR --rm DIR

Endpoints: POST /v1/completions, POST /v1/chat/completions (JSON or SSE with "stream": true), GET /v1/models,
GET /v1/models/{id}, /health, /metrics (Prometheus). ARGS settings ride as extra body fields: args_k, args_w,
args_mode ("greedy" | "stochastic"; without it, temperature > 0 samples and 0 or none is greedy). Every request
field is honoured, accepted as a no-op, or refused with a 400 naming it (the table in fields.py). Every choice
also carries `rewards` (the RM score after each token) and `reward`; stream chunks carry the token's `reward`.
`best_of` (stochastic, not streamed) draws that many samples per prompt and returns the n with the highest final
reward, best first. All clients share one engine loop, so concurrent requests decode in one continuous batch; a
client that disconnects aborts its requests.

Errors are OpenAI's envelope {"error": {message, type, param, code}}: 400 bad fields, 401 a missing or wrong
API key, 404 an unknown model, 413 a body over the limit, 415 a body that is not JSON, 429 a full queue (with
Retry-After), 500 a failed engine step (only its requests fail), 503 an engine loop that is not serving.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..chat import render_prompt
from ..engine import ARGSEngine
from .engine_loop import EngineLoop, EngineUnavailable, QueueFull, RequestFailed
from .fields import check_fields
from .protocol import (BadRequest, chat_logprobs, choice, completion_logprobs, envelope, error_body, new_id,
                       param_of, parse_params, stream_options, usage)
from .server_config import ServerConfig

ROLES = ("system", "user", "assistant")
OPEN_PATHS = ("/health", "/metrics")


def create_app(engine: ARGSEngine, config: ServerConfig | None = None) -> FastAPI:
    """An app serving `engine` (native backend: it needs the continuously batching LLMEngine). The engine loop
    thread starts with the app and stops with it; `app.state.loop` is the EngineLoop (metrics, tests)."""
    if engine.backend != "native":
        raise ValueError(f"the server needs the native backend (Llama-family LM and RM); this engine runs "
                         f"{engine.backend!r}")
    if engine.tokenizer is None:
        raise ValueError("the server needs a tokenizer (text in, text out)")
    config = config or ServerConfig()
    names = config.served_model_names or [default_model_name(engine), "args-engine"]
    loop = EngineLoop(engine.decoder, max_num_waiting=config.max_num_waiting,
                      max_consecutive_failures=config.max_consecutive_failures)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        loop.start()
        yield
        loop.shutdown()

    app = FastAPI(title="args-engine", lifespan=lifespan)
    app.state.loop, app.state.engine, app.state.config = loop, engine, config
    if config.allowed_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.allowed_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        refused = auth_error(config, request)
        return refused if refused is not None else await call_next(request)

    @app.exception_handler(BadRequest)
    async def _bad_request(request, exc: BadRequest):
        return _error(exc)

    @app.exception_handler(EngineUnavailable)
    async def _unavailable(request, exc: EngineUnavailable):
        return JSONResponse(error_body(str(exc), type_="server_error", code="engine_unavailable"), status_code=503)

    @app.get("/health")
    async def health():
        ok, reason = loop.health()
        return JSONResponse({"status": "ok" if ok else "unhealthy", "reason": reason}, status_code=200 if ok else 503)

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "args-engine"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(name) for name in names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        _check_model(model_id, names)
        return model_card(model_id)

    @app.get("/metrics")
    async def metrics():
        return Response(loop.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = check_fields(await _json(request, config), chat=False, lenient=config.lenient_fields)
        model_name = _check_model(body.get("model"), names)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt or not all(
                isinstance(p, str) or (isinstance(p, list) and all(_is_token(t) for t in p)) for p in prompt):
            raise BadRequest("prompt must be a string, a list of strings, or token ids", "prompt")
        if len(prompt) > config.max_choices:
            raise BadRequest(f"at most {config.max_choices} prompts per request, got {len(prompt)}", "prompt")
        prompts = await run_in_threadpool(lambda: [_render(engine, p, raw=True, param="prompt") for p in prompt])
        return await _serve(engine, loop, config, request, body, prompts, chat=False, model=model_name,
                            sources=prompt)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = check_fields(await _json(request, config), chat=True, lenient=config.lenient_fields)
        model_name = _check_model(body.get("model"), names)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects with string content",
                             "messages")
        bad_role = next((m["role"] for m in messages if m["role"] not in ROLES), None)
        if bad_role is not None:
            raise BadRequest(f"unknown message role {bad_role!r}; roles are {', '.join(ROLES)}", "messages")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        prompts = [await run_in_threadpool(_render, engine, messages, False, "messages")]
        return await _serve(engine, loop, config, request, body, prompts, chat=True, model=model_name,
                            sources=[messages])

    return app


def auth_error(config: ServerConfig, request: Request) -> JSONResponse | None:
    """The 401 response for a request without the API key the config requires, else None."""
    if config.api_key is None or request.method == "OPTIONS" or (
            not config.auth_health_metrics and request.url.path in OPEN_PATHS):
        return None
    given = request.headers.get("authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if hmac.compare_digest(token.encode(), config.api_key.encode()):
        return None
    return _error(BadRequest("a valid API key is required: Authorization: Bearer <key>", status=401,
                             code="invalid_api_key"))


def default_model_name(engine: ARGSEngine) -> str:
    path = getattr(engine.lm.config, "_name_or_path", "") or getattr(engine.lm.config, "_model_name_or_path", "")
    return str(path).rstrip("/").rsplit("/", 1)[-1] or type(engine.lm).__name__


def _is_token(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _error(exc: BadRequest) -> JSONResponse:
    kind = "authentication_error" if exc.status == 401 else "invalid_request_error"
    return JSONResponse(error_body(str(exc), exc.param, type_=kind, code=exc.code), status_code=exc.status,
                        headers=exc.headers)


def _check_model(model, names: list[str]) -> str:
    if model is None:
        return names[0]
    if model not in names:
        raise BadRequest(f"the model {model!r} does not exist; this server serves {', '.join(map(repr, names))}",
                         "model", status=404, code="model_not_found")
    return model


async def _json(request: Request, config: ServerConfig) -> dict:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise BadRequest(f"the request body must be JSON (Content-Type: application/json), got "
                         f"{ctype or 'no content type'!r}", status=415, code="unsupported_media_type")
    declared = request.headers.get("content-length")
    too_big = BadRequest(f"the request body exceeds {config.max_body_bytes} bytes", status=413,
                         code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
        raise too_big
    raw = bytearray()
    async for chunk in request.stream():  # a chunked body declares no length: count what arrives
        raw += chunk
        if len(raw) > config.max_body_bytes:
            raise too_big
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _render(engine: ARGSEngine, prompt, raw: bool, param: str) -> list[int]:
    from jinja2 import TemplateError

    try:
        return render_prompt(engine.tokenizer, prompt, raw=raw)
    except (ValueError, TypeError, TemplateError) as e:  # a chat template may refuse a conversation
        raise BadRequest(f"{param}: {e}", param) from e


async def _serve(engine: ARGSEngine, loop: EngineLoop, config: ServerConfig, request: Request, body: dict,
                 prompts: list[list[int]], chat: bool, model: str, sources: list):
    """sources: each prompt as the client sent it (text or messages): an RM that reads text renders it itself."""
    params, n, max_tokens_given = parse_params(body, config, len(prompts), chat)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
    include_usage = stream_options(body)
    reqs = []
    for ids, source in zip(prompts, sources):
        room = (engine.context_length or len(ids) + params[0].max_new_tokens) - len(ids)
        if max_tokens_given and params[0].max_new_tokens > room > 0:
            raise BadRequest(f"max_tokens={params[0].max_new_tokens} does not fit: the prompt is {len(ids)} tokens "
                             f"and the context holds {engine.context_length}", "max_tokens")
        for p in params:
            try:  # without max_tokens, the default is capped by the room the context leaves
                reqs.append(engine.make_request(ids, p if max_tokens_given or room < 1 else
                                                dataclasses.replace(p, max_new_tokens=min(p.max_new_tokens, room))))
            except ValueError as e:
                raise BadRequest(str(e), param_of(str(e)) or ("messages" if chat else "prompt")) from e
            if engine.bridge is not None:  # the RM reads the prompt in its own chat template (raw for completions)
                reqs[-1].rm_prefix = engine.bridge.prefix(source, raw=not chat)
    try:
        ids, events = await loop.add(reqs)
    except QueueFull as e:
        raise BadRequest(str(e), status=429, code="queue_full", headers={"Retry-After": "1"}) from e
    except ValueError as e:
        raise BadRequest(str(e), "max_tokens") from e
    index = {rid: i for i, rid in enumerate(ids)}  # prompt * len(params) + sample
    rid, created = new_id("chatcmpl" if chat else "cmpl"), int(time.time())
    prompt_tokens = sum(len(p) for p in prompts)  # once per prompt, however many samples it has
    if stream:
        return _AbortingStream(_stream(loop, engine.tokenizer, ids, events, index, rid, created, model, chat,
                                       prompt_tokens, include_usage), on_close=lambda: loop.abort(ids),
                               media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    outputs = {}
    try:
        while len(outputs) < len(ids):
            try:
                ev = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():  # the client gave up: free its blocks (finally below)
                    return JSONResponse(error_body("client disconnected"), status_code=499)
                continue
            if isinstance(ev, EngineUnavailable):
                raise ev
            if isinstance(ev, RequestFailed):
                return JSONResponse(error_body(str(ev), type_="server_error", code="step_failed"), status_code=500)
            if ev.finished:
                outputs[index[ev.request_id]] = ev.output
    finally:
        loop.abort(ids)  # no-op for finished requests; frees the rest if this handler was cancelled
    best = []  # per prompt, its n samples of highest final reward (all of them when best_of == n)
    for p in range(len(prompts)):
        samples = [outputs[p * len(params) + j] for j in range(len(params))]
        ranked = sorted(samples, key=lambda o: float("inf") if o.reward is None else -o.reward) \
            if len(params) > n else samples  # stable: equal rewards keep sample order
        best += ranked[:n]
    if body.get("echo") and not chat:  # the prompt first, as sent (token ids: as the tokenizer writes them)
        choices = [choice(i, _prompt_text(engine.tokenizer, sources[i // n], o) + o.text,
                          _reason(o.finish_reason), chat, rewards=o.rewards, reward=o.reward,
                          **_echo_logprobs(engine.tokenizer, o)) for i, o in enumerate(best)]
    else:
        choices = [choice(i, o.text, _reason(o.finish_reason), chat, rewards=o.rewards, reward=o.reward,
                          **_logprobs(engine.tokenizer, chat, o.token_ids, o.logprobs, o.top_logprobs))
                   for i, o in enumerate(best)]
    completion_tokens = sum(len(o.token_ids) for o in outputs.values())
    kind = "chat.completion" if chat else "text_completion"
    return envelope(kind, rid, created, model, choices, usage(prompt_tokens, completion_tokens))


async def _stream(loop: EngineLoop, tokenizer, ids, events: asyncio.Queue, index, rid, created, model, chat,
                  prompt_tokens, include_usage):
    kind = "chat.completion.chunk" if chat else "text_completion"
    done, completion_tokens = 0, 0
    held: dict[int, list] = {rid_: [] for rid_ in ids}  # logprobs of tokens whose text was held back
    offsets = dict.fromkeys(ids, 0)  # completions' text_offset so far
    try:
        if chat:  # the role comes first, as OpenAI streams it
            for i in range(len(ids)):
                yield _sse(envelope(kind, rid, created, model, [choice(i, "", None, chat, delta=True, first=True)]))
        while done < len(ids):
            ev = await events.get()
            if isinstance(ev, (EngineUnavailable, RequestFailed)):
                code = "engine_unavailable" if isinstance(ev, EngineUnavailable) else "step_failed"
                yield _sse(error_body(str(ev), type_="server_error", code=code))
                break
            completion_tokens += 1
            extra = {"reward": ev.reward}
            if ev.logprob is not None:
                held[ev.request_id].append((ev.token_id, ev.logprob, ev.top_logprobs))
            if ev.finished:
                done += 1
                extra.update(rewards=ev.output.rewards)
            elif not ev.text:
                continue  # text held back (a partial character or a possible stop string)
            if held[ev.request_id]:
                tokens, lps, tops = (list(x) for x in zip(*held[ev.request_id]))
                held[ev.request_id] = []
                extra.update(_logprobs(tokenizer, chat, tokens, lps, tops, offsets[ev.request_id]))
            offsets[ev.request_id] += len(ev.text)
            c = choice(index[ev.request_id], ev.text, _reason(ev.finish_reason), chat, delta=True, **extra)
            yield _sse(envelope(kind, rid, created, model, [c]))
        if include_usage:
            yield _sse(envelope(kind, rid, created, model, [], usage(prompt_tokens, completion_tokens)))
        yield "data: [DONE]\n\n"
    finally:
        loop.abort(ids)  # a client that went away mid-stream frees its blocks now


def _logprobs(tokenizer, chat: bool, token_ids, logprobs, top, offset: int = 0) -> dict:
    """{"logprobs": the OpenAI shape} when they were asked for, else {} (the choice keeps logprobs: null)."""
    if logprobs is None:
        return {}
    if chat:
        return {"logprobs": chat_logprobs(tokenizer, token_ids, logprobs, top)}
    return {"logprobs": completion_logprobs(tokenizer, token_ids, logprobs, top, offset)}


def _prompt_text(tokenizer, source, output) -> str:
    return source if isinstance(source, str) else tokenizer.decode(output.prompt_token_ids)


def _echo_logprobs(tokenizer, o) -> dict:
    """echo with logprobs: the prompt's tokens (the first with null) then the completion's, in one list, as vLLM
    serves them; the LM's own log-probabilities (ARGS changes which tokens are chosen, not the LM's likelihood)."""
    if o.logprobs is None:
        return {}
    return {"logprobs": completion_logprobs(tokenizer, o.prompt_token_ids + o.token_ids,
                                            o.prompt_logprobs + o.logprobs, o.prompt_top_logprobs + o.top_logprobs)}


class _AbortingStream(StreamingResponse):
    """A stream whose requests are aborted however it ends, even when the client left before its first chunk
    (then the generator's own `finally` never runs)."""

    def __init__(self, content, on_close, **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _reason(reason: str | None) -> str | None:
    return None if reason is None else "stop" if reason == "abort" else reason


def serve(engine: ARGSEngine, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(create_app(engine, config), host=host, port=port, log_level=log_level)
