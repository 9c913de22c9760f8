"""Prometheus metrics of the stream processes: the names dashboards and alerts are built on.

Each process owns one metrics object bound to its own registry, so tests can run several
processes (or several test cases) in one interpreter without colliding. Renaming a metric
here breaks `monitoring/` on purpose: tests compare the rules and dashboards with what a
running worker exports.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from snowtrap.stream.runtime.metrics import ProcessMetrics

# Latency buckets from 5 ms to 2 min: decode of a small frame up to a backlog drained late.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

STAGES = ("decode", "classify", "detect", "crop", "produce")
"""Worker stages timed by `snowtrap_stage_latency_seconds`."""

OUTCOMES = ("leopard", "no_leopard", "deadletter")
"""How an image ends: a detection record with leopards, one without, or a dead letter."""

UPLOAD_RESULTS = ("sent", "skipped", "rejected", "failed")
"""What the uploader did with a file: acknowledged, already sent, not an image, not acked."""


class WorkerMetrics(ProcessMetrics):
    """Everything `snowtrap worker` exports on /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.images = self.new_counter(
            "snowtrap_images_processed",
            "Images that reached a final outcome, by outcome",
            ["outcome"],
        )
        self.camera_images = self.new_counter(
            "snowtrap_camera_images", "Images processed per camera", ["camera_id"]
        )
        self.camera_last_seen = self.new_gauge(
            "snowtrap_camera_last_image_timestamp_seconds",
            "Unix time at which the worker last processed an image from the camera",
            ["camera_id"],
        )
        self.leopards = self.new_counter(
            "snowtrap_leopards_detected",
            "Leopard boxes over the detection threshold, per camera",
            ["camera_id"],
        )
        self.crops = self.new_counter(
            "snowtrap_crops_published", "Leopard crops published to the crops topic"
        )
        self.deadletters = self.new_counter(
            "snowtrap_deadletter",
            "Messages sent to the dead-letter topic, by reason and stage",
            ["reason", "stage"],
        )
        self.stage_latency = self.new_histogram(
            "snowtrap_stage_latency_seconds",
            "Time spent per stage for one batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
        )
        self.end_to_end_latency = self.new_histogram(
            "snowtrap_end_to_end_latency_seconds",
            "From the uploader sending an image to its detection record being produced",
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = self.new_histogram(
            "snowtrap_batch_size", "Images per model batch", buckets=BATCH_BUCKETS
        )
        self.consumer_lag = self.new_gauge(
            "snowtrap_consumer_lag_messages",
            "Messages in the images topic not yet processed by this worker, per partition",
            ["topic", "partition"],
        )
        self.model = self.new_info("snowtrap_model_bundle", "The model bundle this worker serves")
        for outcome in OUTCOMES:
            self.images.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_latency.labels(stage=stage)


class UploaderMetrics(ProcessMetrics):
    """What `snowtrap upload` exports (pushed to a textfile or served while it runs)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.files = self.new_counter(
            "snowtrap_upload_files",
            "Files handled by the uploader, by result (sent, skipped, rejected, failed)",
            ["result"],
        )
        self.bytes = self.new_counter("snowtrap_upload_bytes", "Image bytes acknowledged by Kafka")
        self.send_latency = self.new_histogram(
            "snowtrap_upload_ack_latency_seconds",
            "From send to broker acknowledgement",
            buckets=LATENCY_BUCKETS,
        )
        self.claim_checks = self.new_counter(
            "snowtrap_upload_claim_checks",
            "Images sent as a claim-check URI because they exceed the message limit",
        )
        self.last_ack = self.new_gauge(
            "snowtrap_upload_last_ack_timestamp_seconds",
            "Unix time of the last image Kafka acknowledged (stale = station not uploading)",
        )
        for result in UPLOAD_RESULTS:
            self.files.labels(result=result)
