"""Prometheus metrics of `snowtrap matcher` (its own registry, like the worker's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from snowtrap.models.reid.matching import Decision
from snowtrap.stream.runtime.metrics import ProcessMetrics

QUERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class MatcherMetrics(ProcessMetrics):
    """Everything `snowtrap matcher` exports on /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.crops = self.new_counter(
            "snowtrap_matcher_crops",
            "Crops that reached a final outcome, by outcome (matched, deadletter)",
            ["outcome"],
        )
        self.decisions = self.new_counter(
            "snowtrap_matcher_decisions",
            "Matched crops by decision (known, new_candidate, not_enough_texture)",
            ["decision"],
        )
        self.deadletters = self.new_counter(
            "snowtrap_matcher_deadletter",
            "Crops sent to the dead-letter topic, by reason",
            ["reason"],
        )
        self.query_latency = self.new_histogram(
            "snowtrap_matcher_query_latency_seconds",
            "Matching time of one crop (features, index search, verification)",
            buckets=QUERY_BUCKETS,
        )
        self.enrolled_chips = self.new_gauge(
            "snowtrap_matcher_enrolled_chips", "Chips in the search index"
        )
        self.individuals = self.new_gauge(
            "snowtrap_matcher_individuals", "Individuals in the search index"
        )
        self.db_version = self.new_gauge(
            "snowtrap_matcher_db_version", "Version of the individual database"
        )
        self.info = self.new_info("snowtrap_matcher", "Matcher version and database path")
        for outcome in ("matched", "deadletter"):
            self.crops.labels(outcome=outcome)
        for decision in Decision:
            self.decisions.labels(decision=decision.value)
