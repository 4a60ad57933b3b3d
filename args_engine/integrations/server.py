"""An OpenAI-compatible HTTP server over the native engine (FastAPI + uvicorn).

    app = create_app(ARGSEngine(lm, rm, tokenizer=tok, backend="native"))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or: args-engine serve --lm DIR --rm DIR

Endpoints: POST /v1/completions, POST /v1/chat/completions (JSON or SSE with "stream": true), GET /v1/models,
/health, /metrics (Prometheus text). ARGS settings ride as extra body fields: args_k, args_w, args_mode
("greedy" | "stochastic"; temperature applies to stochastic). Every choice also carries `rewards` (the RM score
after each token) and `reward`; stream chunks carry the token's `reward`. `best_of` (stochastic, not streamed)
draws that many samples per prompt and returns the n with the highest final reward, best first. All clients share one engine loop, so
concurrent requests decode in one continuous batch; a streaming client that disconnects aborts its requests.
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..chat import render_prompt
from ..engine import ARGSEngine
from .engine_loop import EngineLoop
from .protocol import BadRequest, choice, envelope, error_body, new_id, param_of, parse_params, usage


def create_app(engine: ARGSEngine, model_name: str = "args-engine", default_max_tokens: int = 128) -> FastAPI:
    """An app serving `engine` (native backend: it needs the continuously batching LLMEngine). The engine loop
    thread starts with the app and stops with it; `app.state.loop` is the EngineLoop (metrics, tests)."""
    if engine.backend != "native":
        raise ValueError(f"the server needs the native backend (Llama-family LM and RM); this engine runs "
                         f"{engine.backend!r}")
    if engine.tokenizer is None:
        raise ValueError("the server needs a tokenizer (text in, text out)")
    loop = EngineLoop(engine.decoder)

    @asynccontextmanager
    async def lifespan(app):
        loop.start()
        yield
        loop.shutdown()

    app = FastAPI(title="args-engine", lifespan=lifespan)
    app.state.loop, app.state.engine = loop, engine

    @app.exception_handler(BadRequest)
    async def _bad_request(request, exc: BadRequest):
        return JSONResponse(error_body(str(exc), exc.param), status_code=400)

    @app.get("/health")
    async def health():
        alive = loop._thread is not None and loop._thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "engine loop stopped"}, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "args-engine"}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(_metrics(loop), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt or not all(isinstance(p, (str, list)) for p in prompt):
            raise BadRequest("prompt must be a string, a list of strings, or token ids", "prompt")
        prompts = [_render(engine, p, raw=True, param="prompt") for p in prompt]
        return await _serve(engine, loop, request, body, prompts, chat=False, model=model_name,
                            default_max_tokens=default_max_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects with string content",
                             "messages")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        prompts = [_render(engine, messages, raw=False, param="messages")]
        return await _serve(engine, loop, request, body, prompts, chat=True, model=model_name,
                            default_max_tokens=default_max_tokens)

    return app


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _render(engine: ARGSEngine, prompt, raw: bool, param: str) -> list[int]:
    try:
        return render_prompt(engine.tokenizer, prompt, raw=raw)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"{param}: {e}", param) from e


async def _serve(engine: ARGSEngine, loop: EngineLoop, request: Request, body: dict, prompts: list[list[int]], chat: bool,
                 model: str, default_max_tokens: int):
    params, n = parse_params(body, default_max_tokens)
    stream = bool(body.get("stream", False))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
    reqs = []
    for ids in prompts:
        for p in params:
            try:
                reqs.append(engine.make_request(ids, p))
            except ValueError as e:
                raise BadRequest(str(e), param_of(str(e)) or ("messages" if chat else "prompt")) from e
    try:
        ids, events = await loop.add(reqs)
    except ValueError as e:
        raise BadRequest(str(e), "max_tokens") from e
    index = {rid: i for i, rid in enumerate(ids)}  # prompt * len(params) + sample
    rid = new_id("chatcmpl" if chat else "cmpl")
    prompt_tokens = sum(len(r.prompt_ids) for r in reqs)
    if stream:
        return StreamingResponse(_stream(loop, ids, events, index, rid, model, chat, prompt_tokens, include_usage),
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
            if isinstance(ev, BaseException):
                return JSONResponse(error_body(f"engine error: {ev}", type_="server_error"), status_code=500)
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
    choices = [choice(i, o.text, _reason(o.finish_reason), chat, rewards=o.rewards, reward=o.reward)
               for i, o in enumerate(best)]
    completion_tokens = sum(len(o.token_ids) for o in outputs.values())
    kind = "chat.completion" if chat else "text_completion"
    return envelope(kind, rid, model, choices, usage(prompt_tokens, completion_tokens))


async def _stream(loop: EngineLoop, ids, events: asyncio.Queue, index, rid, model, chat, prompt_tokens,
                  include_usage):
    kind = "chat.completion.chunk" if chat else "text_completion"
    done, completion_tokens = 0, 0
    try:
        if chat:  # the role comes first, as OpenAI streams it
            for i in range(len(ids)):
                yield _sse(envelope(kind, rid, model, [choice(i, "", None, chat, delta=True, first=True)]))
        while done < len(ids):
            ev = await events.get()
            if isinstance(ev, BaseException):
                yield _sse(error_body(f"engine error: {ev}", type_="server_error"))
                break
            completion_tokens += 1
            extra = {"reward": ev.reward}
            if ev.finished:
                done += 1
                extra.update(rewards=ev.output.rewards)
            elif not ev.text:
                continue  # text held back (a partial character or a possible stop string)
            c = choice(index[ev.request_id], ev.text, _reason(ev.finish_reason), chat, delta=True, **extra)
            yield _sse(envelope(kind, rid, model, [c]))
        if include_usage:
            yield _sse(envelope(kind, rid, model, [], usage(prompt_tokens, completion_tokens)))
        yield "data: [DONE]\n\n"
    finally:
        loop.abort(ids)  # a client that went away mid-stream frees its blocks now


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _reason(reason: str | None) -> str | None:
    return None if reason is None else "stop" if reason == "abort" else reason


def _metrics(loop: EngineLoop) -> str:
    llm = loop.llm
    rows = [
        ("args_engine_requests_total", "counter", "Requests (choices) added to the engine", loop.requests_total),
        ("args_engine_requests_aborted_total", "counter", "Requests aborted before they finished",
         loop.aborted_total),
        ("args_engine_generated_tokens_total", "counter", "Tokens generated", loop.tokens_total),
        ("args_engine_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s",
         round(loop.tokens_per_s(), 3)),
        ("args_engine_requests_running", "gauge", "Requests in the running batch", llm.num_running),
        ("args_engine_requests_waiting", "gauge", "Requests waiting for admission", llm.num_waiting),
        ("args_engine_cache_blocks_used", "gauge", "Paged cache blocks in use", llm.num_used_blocks),
        ("args_engine_cache_blocks_total", "gauge", "Paged cache blocks in all", llm.num_blocks),
        ("args_engine_prefix_cache_hit_rate", "gauge", "Share of admitted prompt tokens served by the prefix cache",
         round(llm.prefix_cache_hit_rate, 4)),
    ]
    return "".join(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name} {value}\n"
                   for name, kind, help_, value in rows)


def serve(engine: ARGSEngine, host: str = "127.0.0.1", port: int = 8000, model_name: str = "args-engine",
          log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(create_app(engine, model_name), host=host, port=port, log_level=log_level)
