"""`ServeSettings`: everything `snowtrap serve` reads, in one typed object.

Same conventions as every snowtrap process, with the prefix `SNOWTRAP_SERVE_` so the API can
run beside a worker in one environment without the two reading each other's values:
`SNOWTRAP_SERVE_<FIELD>` env vars override a YAML file given with `--config`, which overrides
the defaults. Thresholds left unset come from the bundle's manifest, as in the worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.stream.http_server import url_path_prefix

MiB = 1024 * 1024


class ServeSettings(SnowtrapSettings):
    """The API's model bundle, HTTP side, dynamic batching, limits and auth."""

    model_config = SettingsConfigDict(
        env_prefix="SNOWTRAP_SERVE_", env_nested_delimiter="__", extra="forbid"
    )

    bundle_dir: Path | None = None
    """The model bundle to serve (a directory with manifest.json); required."""
    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 in a container)."""
    port: int = Field(default=8480, ge=0, le=65535)
    """HTTP port; 0 lets the OS pick a free one (the address is printed)."""
    root_path: str = ""
    """Public path prefix behind a proxy, e.g. `/detector`; every route also answers without
    it, so a proxy may pass the prefix through or strip it."""

    max_batch: int = Field(default=8, ge=1, le=256)
    """Images per model batch at most, gathered across concurrent requests."""
    max_wait_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    """How long the oldest waiting image may wait for batch-mates. 0 (the default): a batch is
    whatever queued while the previous one ran, so batches grow with the load and a lone
    request waits for nothing (on CPU a wait costs latency and buys no throughput: see
    bench/serve_latency.py); a few ms pay on an accelerator."""
    queue_size: int = Field(default=64, ge=1, le=100_000)
    """Images waiting for the models at most; a request that does not fit gets 503."""
    retry_after_s: int = Field(default=1, ge=1, le=3600)
    """The `Retry-After` a 503 carries."""
    request_timeout_s: float = Field(default=30.0, gt=0.0)
    """How long a request may wait for its results before it gets 504."""
    max_body_bytes: int = Field(default=40 * MiB, ge=1024)
    """Largest request body; larger ones get 413 before they are read whole."""
    max_image_bytes: int = Field(default=32 * MiB, ge=1024)
    """Largest single image (the worker's limit); larger ones get 413."""
    max_image_pixels: int = Field(default=64_000_000, ge=1)
    """Largest pixel count, checked from the header before decoding; more gets 413."""
    max_images_per_request: int = Field(default=32, ge=1, le=1000)
    """Images one multipart request may carry."""

    gate_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """P(leopard) at or above which the detector runs; None: the manifest's classifier_gate."""
    detection_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Boxes reported; None: the manifest's detection_confidence."""
    crop_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Boxes cut out when `crops=true`; None: the manifest's crop threshold."""
    detect_all: bool = False
    """Run the detector on every image, not only those passing the gate."""
    analysis_max_side: int | None = Field(default=None, ge=32)
    """Longest side of the reduced decode the models see; None: what the bundle needs."""
    inference_threads: int | None = Field(default=None, ge=1)
    """ONNX Runtime intra-op threads; None: the CPUs this process may use."""
    decode_threads: int | None = Field(default=None, ge=1)
    """Threads decoding and cropping between model runs; None: the CPUs this process may use."""
    decode_for_classifier: bool = True
    """Decode each image only as large as the classifier needs (as the worker does)."""
    crop_margin: float = Field(default=0.15, ge=0.0, le=2.0)
    crop_jpeg_quality: int = Field(default=90, ge=1, le=95)

    api_key: SecretStr | None = None
    """When set, `/v1/detect` needs `Authorization: Bearer <key>` or `X-API-Key: <key>`
    (probes, metrics and the OpenAPI document stay open)."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"
    """uvicorn's log level."""

    @field_validator("root_path")
    @classmethod
    def _normalise_root_path(cls, value: str) -> str:
        return url_path_prefix(value)
