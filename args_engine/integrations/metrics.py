"""The server's Prometheus metrics (prometheus-client): latency histograms observed by the engine loop, and
counters and gauges read from the engine at scrape time. One registry per app, so two apps in one process
(tests) do not mix their numbers."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# seconds: from a 135M model on 2 CPU cores (~50 ms a step) to a 7B model's long prefill on a GPU
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """`loop`: the EngineLoop whose engine the gauges and engine counters read."""

    def __init__(self, loop):
        self.registry = CollectorRegistry()
        self.ttft = Histogram("args_engine_time_to_first_token_seconds", "From a request's admission into the "
                              "engine queue to its first token", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("args_engine_inter_token_latency_seconds", "Between consecutive tokens of a request",
                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_time = Histogram("args_engine_queue_time_seconds", "From a request's admission into the "
                                    "engine queue to its first scheduled step", buckets=LATENCY_BUCKETS,
                                    registry=self.registry)
        self.requests = Counter("args_engine_requests", "Requests (choices) added to the engine",
                                registry=self.registry)
        self.aborted = Counter("args_engine_requests_aborted", "Requests aborted before they finished",
                               registry=self.registry)
        self.rejected = Counter("args_engine_requests_rejected", "Requests refused for a full queue (HTTP 429)",
                                registry=self.registry)
        self.step_failures = Counter("args_engine_step_failures", "Engine steps that raised",
                                     registry=self.registry)
        self.prompt_tokens = Counter("args_engine_prompt_tokens", "Prompt tokens of the added requests",
                                     registry=self.registry)
        self.generated_tokens = Counter("args_engine_generated_tokens", "Tokens generated",
                                        registry=self.registry)
        self.registry.register(_EngineCollector(loop))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Engine state read at scrape time: nothing to keep in step with it."""

    def __init__(self, loop):
        self.loop = loop

    def collect(self):
        loop, llm = self.loop, self.loop.llm
        bm = llm.bm
        yield CounterMetricFamily("args_engine_preemptions", "Sequences preempted (freed, recomputed later)",
                                 value=llm.scheduler.num_preemptions)
        yield CounterMetricFamily("args_engine_prefix_cache_hit_tokens", "Prompt tokens served by the prefix cache",
                                 value=bm.num_hit_tokens)
        yield CounterMetricFamily("args_engine_prefix_cache_miss_tokens", "Admitted prompt tokens computed",
                                 value=bm.num_admitted_tokens - bm.num_hit_tokens)
        for name, help_, value in (
                ("tokens_per_second", f"Tokens generated per second over the last {loop.rate_window_s:g} s",
                 loop.tokens_per_s()),
                ("requests_running", "Requests in the running batch", llm.num_running),
                ("requests_waiting", "Requests waiting for admission", llm.num_waiting),
                ("cache_blocks_used", "Paged cache blocks in use", llm.num_used_blocks),
                ("cache_blocks_total", "Paged cache blocks in all", llm.num_blocks),
                ("prefix_cache_hit_rate", "Share of admitted prompt tokens served by the prefix cache",
                 llm.prefix_cache_hit_rate),
                ("consecutive_step_failures", "Engine steps that raised since the last one that did not",
                 loop.consecutive_failures),
                ("healthy", "1 while the engine loop serves and the last steps did not all fail",
                 int(loop.health()[0]))):
            yield GaugeMetricFamily("args_engine_" + name, help_, value=value)

