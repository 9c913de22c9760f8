"""Prometheus metrics of the stream processes: the names dashboards and alerts are built on.

Each process owns one metrics object bound to its own registry, so tests can run several
processes (or several test cases) in one interpreter without colliding. Renaming a metric
here breaks `monitoring/` on purpose: tests compare the rules and dashboards with what a
running worker exports.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets from 5 ms to 2 min: decode of a small frame up to a backlog drained late.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

STAGES = ("decode", "classify", "detect", "crop", "produce")
"""Worker stages timed by `snowtrap_stage_latency_seconds`."""

OUTCOMES = ("leopard", "no_leopard", "deadletter")
"""How an image ends: a detection record with leopards, one without, or a dead letter."""

UPLOAD_RESULTS = ("sent", "skipped", "rejected", "failed")
"""What the uploader did with a file: acknowledged, already sent, not an image, not acked."""


class WorkerMetrics:
    """Everything `snowtrap worker` exports on /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.images = Counter(
            "snowtrap_images_processed",
            "Images that reached a final outcome, by outcome",
            ["outcome"],
            registry=r,
        )
        self.camera_images = Counter(
            "snowtrap_camera_images",
            "Images processed per camera",
            ["camera_id"],
            registry=r,
        )
        self.camera_last_seen = Gauge(
            "snowtrap_camera_last_image_timestamp_seconds",
            "Unix time at which the worker last processed an image from the camera",
            ["camera_id"],
            registry=r,
        )
        self.leopards = Counter(
            "snowtrap_leopards_detected",
            "Leopard boxes over the detection threshold, per camera",
            ["camera_id"],
            registry=r,
        )
        self.crops = Counter(
            "snowtrap_crops_published", "Leopard crops published to the crops topic", registry=r
        )
        self.deadletters = Counter(
            "snowtrap_deadletter",
            "Messages sent to the dead-letter topic, by reason and stage",
            ["reason", "stage"],
            registry=r,
        )
        self.stage_latency = Histogram(
            "snowtrap_stage_latency_seconds",
            "Time spent per stage for one batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "snowtrap_end_to_end_latency_seconds",
            "From the uploader sending an image to its detection record being produced",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "snowtrap_batch_size", "Images per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.consumer_lag = Gauge(
            "snowtrap_consumer_lag_messages",
            "Messages in the images topic not yet processed by this worker, per partition",
            ["topic", "partition"],
            registry=r,
        )
        self.model = Info(
            "snowtrap_model_bundle", "The model bundle this worker serves", registry=r
        )
        for outcome in OUTCOMES:
            self.images.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_latency.labels(stage=stage)


class UploaderMetrics:
    """What `snowtrap upload` exports (pushed to a textfile or served while it runs)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.files = Counter(
            "snowtrap_upload_files",
            "Files handled by the uploader, by result (sent, skipped, rejected, failed)",
            ["result"],
            registry=r,
        )
        self.bytes = Counter(
            "snowtrap_upload_bytes", "Image bytes acknowledged by Kafka", registry=r
        )
        self.send_latency = Histogram(
            "snowtrap_upload_ack_latency_seconds",
            "From send to broker acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.claim_checks = Counter(
            "snowtrap_upload_claim_checks",
            "Images sent as a claim-check URI because they exceed the message limit",
            registry=r,
        )
        self.last_ack = Gauge(
            "snowtrap_upload_last_ack_timestamp_seconds",
            "Unix time of the last image Kafka acknowledged (stale = station not uploading)",
            registry=r,
        )
        for result in UPLOAD_RESULTS:
            self.files.labels(result=result)
