"""Replicated serving on Ray Serve: `args-engine serve --ray --replicas N`, or
`serve run args_engine.ray.serving:build_app lm=DIR rm=DIR num_replicas=2`.

Two deployments, as in Ray Serve LLM:
- `ARGSEngineReplica` (N replicas; one GPU each on a GPU cluster, CPU otherwise): one ARGSEngine and the same
  FastAPI OpenAI app `args-engine serve` runs (integrations/server.py), called in process (ray/asgi.py). All
  validation, limits, streaming and metrics are that app's.
- `OpenAIIngress` (the HTTP entry behind Ray Serve's proxy): reads the body, tokenizes the prompt for its
  routing key and forwards the request to a replica through a DeploymentHandle whose router sends prompts that
  begin alike to the same replica (ray/routing.py). It answers /health and /metrics for all replicas at once.

A replica that dies before it answered is retried once on another (the router has dropped the dead one); one
that dies mid-stream ends the stream with an error event. Serve restarts dead and unhealthy replicas.
"""
# no `from __future__ import annotations`: FastAPI reads the route methods' annotations at runtime
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from starlette.concurrency import run_in_threadpool

from ..chat import render_prompt
from ..integrations.engine_loop import EngineUnavailable
from ..integrations.protocol import error_body
from ..integrations.server import auth_error
from ..integrations.server_config import ServerConfig
from .asgi import call_asgi
from .metrics import merge_replica_metrics
from .placement import gpus_per_engine
from .routing import replica_stats, routing_key

ENGINE_DEPLOYMENT = "ARGSEngineReplica"
INGRESS_DEPLOYMENT = "OpenAIIngress"
REPLICA_HEADER = "x-args-engine-replica"
REPLICA_GONE = (RayActorError, ActorUnavailableError)
REPLICA_WAIT_S = 30.0  # the ingress's first call to a replica (for the tokenizer) gives up after this
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "host", "content-length"}


@dataclass
class RayServeOptions:
    """How the engine deployment scales. num_replicas is fixed unless max_replicas is set (then Serve autoscales
    between min_replicas and max_replicas, aiming at target_ongoing_requests per replica). num_gpus per replica:
    None = one per CUDA device the engine uses (LM and RM), else 0. max_ongoing_requests: per replica; when a key's replica
    has that many, the request goes to the key's next choice. prefix_tokens: the prompt tokens the routing key
    hashes (requests sharing that many first tokens share a replica)."""

    num_replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 16.0
    num_cpus: float = 1.0
    num_gpus: float | None = None
    max_ongoing_requests: int = 64
    prefix_tokens: int = 64
    stats_period_s: float = 2.0
    retries: int = 1  # a request whose replica died before answering is sent again this many times
    ingress_num_cpus: float = 0.0  # the ingress only parses, tokenizes and relays
    extra_actor_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("num_replicas", "max_ongoing_requests", "prefix_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.max_replicas is not None and self.max_replicas < (self.min_replicas or 1):
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    def deployment_options(self, engine_options: dict) -> dict:
        gpus = self.num_gpus if self.num_gpus is not None else gpus_per_engine(engine_options.get("device", "cpu"),
                                                                               engine_options.get("rm_device"))
        opts = dict(name=ENGINE_DEPLOYMENT, max_ongoing_requests=self.max_ongoing_requests,
                    ray_actor_options={"num_cpus": self.num_cpus, "num_gpus": gpus, **self.extra_actor_options},
                    request_router_config=RequestRouterConfig(
                        request_router_class="args_engine.ray.routing:PrefixAffinityRouter",
                        request_routing_stats_period_s=self.stats_period_s,
                        request_routing_stats_timeout_s=max(self.stats_period_s, 5.0)))
        if self.max_replicas is None:
            opts["num_replicas"] = self.num_replicas
        else:
            opts["autoscaling_config"] = AutoscalingConfig(
                min_replicas=self.min_replicas if self.min_replicas is not None else 1,
                initial_replicas=self.num_replicas, max_replicas=self.max_replicas,
                target_ongoing_requests=self.target_ongoing_requests)
        return opts


class EngineReplica:
    """One engine serving the OpenAI app in this Serve replica. engine_options: ARGSEngine.from_pretrained
    keywords (lm, rm, device, dtype, batch_size, native options)."""

    def __init__(self, engine_options: dict, config: ServerConfig):
        from ..engine import ARGSEngine
        from ..integrations.server import create_app

        self.engine = ARGSEngine.from_pretrained(backend="native", **engine_options)
        self.app = create_app(self.engine, config)
        self.loop = self.app.state.loop
        self.loop.start()  # the app's lifespan does not run: it is called request by request
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    async def handle_http(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes,
                          routing_key: str | None = None):
        """The app's response messages for one request; `routing_key` is read by the router only."""
        async for message in call_asgi(self.app, method, path, query, headers, body):
            if message["type"] == "http.response.start":
                tagged = list(message.get("headers", [])) + [(REPLICA_HEADER.encode(), self.replica_id.encode())]
                message = {**message, "headers": tagged}
            yield message

    def tokenizer(self):
        """The LM's tokenizer: the ingress renders prompts with it for their routing keys."""
        return self.engine.tokenizer

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and Serve replaces it."""
        ok, reason = self.loop.health()
        if not ok:
            raise RuntimeError(reason)

    def record_routing_stats(self) -> dict[str, Any]:
        """Sent to every router by Serve every stats_period_s: health and load for routing, the metrics page for
        the ingress's /metrics."""
        ok, reason = self.loop.health()
        llm = self.engine.decoder
        return {"healthy": ok, "reason": reason, "load": llm.num_running + llm.num_waiting,
                "metrics": self.loop.metrics.render().decode()}

    def __del__(self):
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.shutdown()


class _Relay(Response):
    """Sends a replica's response on: its status line, then its body as it arrives. Ends with an error event
    when the replica dies midway; a client that leaves cancels the replica's request."""

    def __init__(self, start: dict, stream):
        super().__init__()
        self.start, self.stream = start, stream

    async def __call__(self, scope, receive, send):
        await send(self.start)
        try:
            async for message in self.stream:
                await send(message)
        except REPLICA_GONE as e:
            error = error_body(f"the engine replica serving this request died: {e}", type_="server_error",
                               code="replica_unavailable")
            await send({"type": "http.response.body", "body": f"data: {json.dumps(error)}\n\n".encode(),
                        "more_body": False})
        finally:
            self.stream.cancel()


ingress_app = FastAPI(title="args-engine on Ray Serve")


@ingress_app.exception_handler(EngineUnavailable)
async def _unavailable(request, exc: EngineUnavailable):
    return JSONResponse(error_body(str(exc), type_="server_error", code="engine_unavailable"), status_code=503,
                        headers={"Retry-After": "1"})


@serve.ingress(ingress_app)
class OpenAIIngress:
    """The HTTP entry: routes each request to an engine replica by its prompt's first tokens."""

    def __init__(self, engine, config: ServerConfig, prefix_tokens: int = 64, retries: int = 1):
        self.engine, self.config, self.prefix_tokens, self.retries = engine, config, prefix_tokens, retries
        self.stream_engine = engine.options(stream=True)
        self._tokenizer = None

    async def _tokenizer_ready(self):
        if self._tokenizer is None:  # also creates this process's router, which collects the replicas' stats
            try:
                self._tokenizer = await asyncio.wait_for(self.engine.tokenizer.remote(), REPLICA_WAIT_S)
            except asyncio.TimeoutError:
                raise EngineUnavailable(f"no engine replica answered within {REPLICA_WAIT_S:g} s") from None
        return self._tokenizer

    async def _replica_reports(self, request: Request) -> tuple[dict, JSONResponse | None]:
        """-> (replica id -> its last routing stats, None), or ({}, the 401) for a request without the key."""
        refused = auth_error(self.config, request)
        if refused is not None:
            return {}, refused
        await self._tokenizer_ready()
        return replica_stats(ENGINE_DEPLOYMENT), None

    @ingress_app.get("/health")
    async def health(self, request: Request):
        stats, refused = await self._replica_reports(request)
        if refused is not None:
            return refused
        replicas = {rid: {"status": ("ok" if s.get("healthy") else "unhealthy") if s else "starting",
                          "reason": s.get("reason", "no report yet")} for rid, s in stats.items()}
        ok = any(r["status"] != "unhealthy" for r in replicas.values())
        return JSONResponse({"status": "ok" if ok else "unhealthy", "replicas": replicas},
                            status_code=200 if ok else 503)

    @ingress_app.get("/metrics")
    async def metrics(self, request: Request):
        stats, refused = await self._replica_reports(request)
        if refused is not None:
            return refused
        page = merge_replica_metrics({rid: s["metrics"] for rid, s in stats.items() if "metrics" in s},
                                     {rid: bool(s.get("healthy", True)) for rid, s in stats.items()})
        return Response(page, media_type="text/plain; version=0.0.4; charset=utf-8")

    @ingress_app.api_route("/{path:path}", methods=["GET", "POST", "OPTIONS"])
    async def forward(self, path: str, request: Request):
        body = bytearray()
        async for chunk in request.stream():  # the replica's app enforces the limit and answers 413
            body += chunk
            if len(body) > self.config.max_body_bytes:
                break
        body = bytes(body)
        key = None
        if request.method == "POST" and len(body) <= self.config.max_body_bytes:
            key = await run_in_threadpool(self._routing_key, request.url.path, body, await self._tokenizer_ready())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        for attempt in range(self.retries + 1):
            stream = self.stream_engine.handle_http.remote(request.method, request.url.path, request.url.query,
                                                            headers, body, routing_key=key)
            try:
                start = await stream.__anext__()
            except REPLICA_GONE as e:
                stream.cancel()
                if attempt < self.retries:
                    continue  # the router has dropped the dead replica: the key's next choice answers
                return JSONResponse(error_body(f"the engine replica serving this request died ({e}); retry",
                                               type_="server_error", code="replica_unavailable"),
                                    status_code=503, headers={"Retry-After": "1"})
            except BaseException:
                stream.cancel()  # the client left before the answer began: the replica aborts the request
                raise
            return _Relay(start, stream)

    def _routing_key(self, path: str, body: bytes, tokenizer) -> str | None:
        """The routing key of a completion or chat request; None when the body cannot be read (the replica
        answers with the error)."""
        try:
            data = json.loads(body)
            if path.endswith("/chat/completions"):
                ids = render_prompt(tokenizer, data["messages"])
            elif path.endswith("/completions"):
                prompt = data["prompt"]
                if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
                    prompt = prompt[0]  # a batch of prompts: its first one
                ids = render_prompt(tokenizer, prompt, raw=True)
            else:
                return None
        except Exception:  # noqa: BLE001 -- a malformed request: the replica's app explains what is wrong
            return None
        return routing_key(ids, self.prefix_tokens)


def application(engine_options: dict | None = None, config: ServerConfig | None = None,
                options: RayServeOptions | None = None):
    """The Serve application: N engine replicas behind the OpenAI ingress (pass it to `serve.run`)."""
    engine_options, config, options = dict(engine_options or {}), config or ServerConfig(), options or RayServeOptions()
    engine = serve.deployment(EngineReplica).options(**options.deployment_options(engine_options)).bind(
        engine_options, config)
    ingress = serve.deployment(OpenAIIngress).options(
        name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": options.ingress_num_cpus})
    return ingress.bind(engine, config, options.prefix_tokens, options.retries)


_ENGINE_KEYS = {"lm": str, "rm": str, "device": str, "rm_device": str, "dtype": str, "batch_size": int, "num_blocks": int,
                "block_size": int, "max_num_batched_tokens": int, "cache_memory_gb": float, "step_mode": str,
                "graph_k": int}


def build_app(args: dict[str, str]):
    """Application builder for `serve run args_engine.ray.serving:build_app key=value ...`: engine keys (lm, rm,
    device, rm_device, dtype, batch_size, num_blocks, block_size, max_num_batched_tokens, cache_memory_gb, step_mode,
    graph_k),
    RayServeOptions fields and ServerConfig fields (api_key, max_k, ...)."""
    args = dict(args)
    engine = {k: cast(args.pop(k)) for k, cast in _ENGINE_KEYS.items() if k in args}
    fields = {f: t for f, t in ((f.name, f.type) for f in RayServeOptions.__dataclass_fields__.values())}
    options = {k: _parse(args.pop(k), fields[k]) for k in list(args) if k in fields}
    config_fields = {f.name: f.type for f in ServerConfig.__dataclass_fields__.values()}
    config = {k: _parse(args.pop(k), config_fields[k]) for k in list(args) if k in config_fields}
    if args:
        raise ValueError(f"unknown build_app arguments {sorted(args)}; engine: {sorted(_ENGINE_KEYS)}, replicas: "
                         f"{sorted(fields)}, server: {sorted(config_fields)}")
    return application(engine, ServerConfig(**config), RayServeOptions(**options))


def _parse(value, type_name):
    """A `key=value` string from the command line, as the field's annotated type."""
    if not isinstance(value, str):
        return value
    kind = str(type_name)
    if kind.startswith("list"):
        return [v for v in value.split(",") if v]
    if "bool" in kind:
        return value.lower() in ("1", "true", "yes")
    if "int" in kind and "float" not in kind:
        return int(value)
    if "float" in kind:
        return float(value)
    return value


def serve_on_ray(engine_options: dict, config: ServerConfig, options: RayServeOptions, host: str = "127.0.0.1",
                 port: int = 8000, address: str | None = None) -> None:
    """`args-engine serve --ray`: start Serve's HTTP proxy on host:port and run the application until
    interrupted."""
    import ray

    ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(engine_options, config, options), name="args-engine", route_prefix="/", blocking=True)
