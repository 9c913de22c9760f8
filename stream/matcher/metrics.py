"""Prometheus metrics of `snowtrap matcher` (its own registry, like the worker's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from snowtrap.models.reid.matching import Decision

QUERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class MatcherMetrics:
    """Everything `snowtrap matcher` exports on /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.crops = Counter(
            "snowtrap_matcher_crops",
            "Crops that reached a final outcome, by outcome (matched, deadletter)",
            ["outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "snowtrap_matcher_decisions",
            "Matched crops by decision (known, new_candidate, not_enough_texture)",
            ["decision"],
            registry=r,
        )
        self.deadletters = Counter(
            "snowtrap_matcher_deadletter",
            "Crops sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.query_latency = Histogram(
            "snowtrap_matcher_query_latency_seconds",
            "Matching time of one crop (features, index search, verification)",
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.enrolled_chips = Gauge(
            "snowtrap_matcher_enrolled_chips", "Chips in the search index", registry=r
        )
        self.individuals = Gauge(
            "snowtrap_matcher_individuals", "Individuals in the search index", registry=r
        )
        self.db_version = Gauge(
            "snowtrap_matcher_db_version", "Version of the individual database", registry=r
        )
        self.info = Info("snowtrap_matcher", "Matcher version and database path", registry=r)
        for outcome in ("matched", "deadletter"):
            self.crops.labels(outcome=outcome)
        for decision in Decision:
            self.decisions.labels(decision=decision.value)
