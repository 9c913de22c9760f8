"""Prometheus metrics of `snowtrap serve`, on the app's own registry (tests run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from snowtrap.stream.metrics import BATCH_BUCKETS
from snowtrap.stream.runtime.metrics import ProcessMetrics

REQUEST_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Request latency: fine around the API's targets (15 ms empty, 40 ms p99, 60 ms leopard)."""


class ServeMetrics(ProcessMetrics):
    """Everything `snowtrap serve` exports on /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.request_latency = self.new_histogram(
            "snowtrap_serve_request_duration_seconds",
            "HTTP request latency, by route and status code",
            ["route", "status"],
            buckets=REQUEST_BUCKETS,
        )
        self.images = self.new_counter(
            "snowtrap_serve_images",
            "Images answered, by outcome (leopard, no_leopard, failed)",
            ["outcome"],
        )
        self.failures = self.new_counter(
            "snowtrap_serve_failures",
            "Images or requests refused, by reason and status code",
            ["reason", "status"],
        )
        self.batch_size = self.new_histogram(
            "snowtrap_serve_batch_size",
            "Images per model batch (dynamic batching across requests)",
            buckets=BATCH_BUCKETS,
        )
        self.queue_depth = self.new_gauge(
            "snowtrap_serve_queue_depth", "Images waiting for the models"
        )
        self.in_flight = self.new_gauge(
            "snowtrap_serve_in_flight_requests", "Detection requests being handled now"
        )
        self.model = self.new_info("snowtrap_serve_model_bundle", "The model bundle served")
