"""Prefix-affinity routing for Ray Serve: requests whose prompts begin alike go to the same engine replica,
so that replica's prefix cache serves them.

The ingress tokenizes each prompt and passes `routing_key` = a hash of its first `prefix_tokens` tokens. The
router ranks the healthy replicas by rendezvous (highest-random-weight) hashing of that key: every ingress ranks
them the same way with no shared state, and when a replica comes or goes only the keys it held move. Each
replica is its own rank, so a replica that refuses (its `max_ongoing_requests` are taken) passes the request to
the key's next choice: affinity with bounded load. Requests without a key take two random healthy replicas, the
less loaded first (power of two choices).

Replicas report `record_routing_stats()` (health, queue, their Prometheus text) through Ray Serve; the router
publishes what it last saw in `replica_stats`, where the ingress reads them for /health and /metrics.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

# deployment name -> replica id -> the routing stats it last reported (this process's routers write it)
_REPLICA_STATS: dict[str, dict[str, dict[str, Any]]] = {}


def routing_key(token_ids: list[int], prefix_tokens: int) -> str:
    """The key of a prompt: its first `prefix_tokens` tokens (all of a shorter prompt), hashed."""
    head = token_ids[:prefix_tokens]
    return hashlib.blake2b(",".join(map(str, head)).encode(), digest_size=16).hexdigest()


def rendezvous_rank(key: str, replica_ids: list[str]) -> list[str]:
    """`replica_ids` from the key's first choice to its last (highest-random-weight hashing)."""
    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{key}|{rid}".encode(), digest_size=8).digest()
    return sorted(replica_ids, key=weight, reverse=True)


def replica_stats(deployment: str) -> dict[str, dict[str, Any]]:
    """Replica id -> the stats it last reported, as this process's router for `deployment` saw them."""
    return dict(_registry().get(deployment, {}))


def _registry() -> dict[str, dict[str, dict[str, Any]]]:
    """This process's one registry, however this code was loaded: Serve may run a copy of these functions
    unpickled by value, with a module namespace of its own."""
    import args_engine.ray.routing as home
    return home._REPLICA_STATS


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve request router (`RequestRouterConfig(request_router_class=...)`) for the engine deployment."""

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        _registry()[self._deployment_id.name] = {r.replica_id.unique_id: dict(r.routing_stats or {})
                                                    for r in replicas}

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        # a replica that reported itself unhealthy gets nothing while another is fine (Serve restarts it)
        healthy = [r for r in candidate_replicas if r.routing_stats.get("healthy", True)] or candidate_replicas
        key = pending_request.kwargs.get("routing_key") if pending_request is not None else None
        if key is None:
            two = random.sample(healthy, min(2, len(healthy)))
            return [sorted(two, key=lambda r: r.routing_stats.get("load", 0))]
        by_id = {r.replica_id.unique_id: r for r in healthy}
        return [[by_id[rid]] for rid in rendezvous_rank(key, list(by_id))]
