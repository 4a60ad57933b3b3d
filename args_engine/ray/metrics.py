"""One Prometheus page for all engine replicas: each replica's own metrics (the same families as a single
server's /metrics), every sample labelled with its `replica`, plus how many replicas are up."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families


def merge_replica_metrics(texts: dict[str, str], healthy: dict[str, bool]) -> bytes:
    """texts: replica id -> its Prometheus exposition text; healthy: replica id -> its health."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for s in family.samples:
                merged.add_sample(s.name, {**s.labels, "replica": replica}, s.value, s.timestamp, s.exemplar)
    up = GaugeMetricFamily("args_engine_replicas", "Engine replicas known to the router, by health",
                           labels=["state"])
    up.add_metric(["healthy"], sum(healthy.values()))
    up.add_metric(["unhealthy"], len(healthy) - sum(healthy.values()))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([up, *families.values()]))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)
