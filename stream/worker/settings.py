"""Everything `snowtrap worker` reads, in one typed object.

Values come from `SNOWTRAP_<FIELD>` env vars (nested with `__`, e.g.
`SNOWTRAP_TOPICS__IMAGES`), then an optional YAML file given with `--config`, then the
defaults. The Kafka, batching, probe and timeout settings every stream process shares come
from `StreamProcessSettings` (stream/runtime/settings.py). Thresholds left unset come from the
model bundle's manifest, so a new bundle brings its own operating point and an operator can
still override it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from snowtrap.stream.object_store import S3Settings
from snowtrap.stream.runtime.settings import StreamProcessSettings

MiB = 1024 * 1024


class WorkerSettings(StreamProcessSettings):
    """The worker's settings: the shared stream settings (inherited), models, batching, outputs."""

    bundle_dir: Path | None = None
    """The model bundle to serve (a directory with manifest.json); required."""
    group_id: str = "snowtrap-worker"
    """Consumer group; every worker of one pipeline shares it (the Faust app id)."""
    client_id: str = "snowtrap-worker"

    gate_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """P(leopard) at or above which the detector runs; None: the manifest's classifier_gate."""
    detection_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Boxes reported in trap.detections; None: the manifest's detection_confidence."""
    crop_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Boxes cut out to trap.crops; None: the manifest's crop threshold."""
    detect_all: bool = False
    """Run the detector on every image, not only those passing the gate."""

    batch_size: int = Field(default=16, ge=1, le=512)
    """Images per model batch at most."""
    batch_timeout_ms: int = Field(default=20, ge=1, le=60_000)
    """How long a partial batch waits for more images. Under load batches fill at once and
    this never applies; at a low rate the wait is pure latency, so the worker waits 20 ms,
    not the 200 ms other stream processes do (latency p50 at half load, back-to-back runs:
    797 ms at 200, 135 at 50, 73 at 20; docs/experiments.md)."""
    analysis_max_side: int | None = Field(default=None, ge=32)
    """Longest side of the reduced decode the models see; None: what the bundle's models
    need (the classifier input, the detector's input or max side)."""
    inference_threads: int | None = Field(default=None, ge=1)
    """ONNX Runtime intra-op threads; None: the CPUs this process may use."""
    decode_threads: int | None = Field(default=None, ge=1)
    """Threads decoding and cropping a batch's images (between model runs, not beside them);
    None: the CPUs this process may use."""
    decode_for_classifier: bool = True
    """Decode each frame only as large as the classifier needs, and again at the analysis size
    for the frames the detector gets when that is larger; false: one decode at the analysis
    size for both (the decode before #24)."""

    stall_recovery_s: float = Field(default=30.0, ge=1.0)
    """A partition of ours with images waiting and no progress this long is sought back to its
    committed offset (faust-streaming can leave a kept partition unfetched after a rebalance)."""
    crop_margin: float = Field(default=0.15, ge=0.0, le=2.0)
    """Context kept around each leopard crop, as a fraction of the box size per side."""
    crop_jpeg_quality: int = Field(default=90, ge=1, le=95)

    max_image_bytes: int = Field(default=32 * MiB, ge=1024)
    """Largest image accepted (inline or claim check); larger ones are dead-lettered."""
    max_image_pixels: int = Field(default=64_000_000, ge=1)
    """Largest pixel count accepted, checked from the header before decoding."""
    claim_check_roots: list[Path] = Field(default_factory=list)
    """Directories `file://` claim checks may point into; empty: claim checks are refused."""
    claim_check_buckets: list[str] = Field(default_factory=list)
    """Buckets `s3://` claim checks may point into; empty: they are refused as forbidden."""
    s3: S3Settings = Field(default_factory=S3Settings)
    """The object store of `s3://` claim checks (endpoint, region, credentials)."""

    metrics_port: int = Field(default=9400, ge=1, le=65535)
    """/metrics, /healthz and /readyz."""

    @model_validator(mode="after")
    def _topics_distinct(self) -> WorkerSettings:
        outputs = [self.topics.detections, self.topics.crops, self.topics.deadletter]
        if self.topics.images in outputs or len(set(outputs)) != len(outputs):
            raise ValueError("the images, detections, crops and deadletter topics must differ")
        return self
