"""`snowtrap worker [--config FILE] [--bundle DIR]`: run the stream worker until SIGTERM.

Start-up order: settings, then the model bundle (a worker that cannot serve models must fail
before it joins the consumer group and takes partitions), then the topics, then Faust.
Exit codes: 0 stopped cleanly, 1 stopped after a batch could not be completed (its offsets
were not committed; a restart redoes it), 2 bad settings, 3 unusable bundle, 4 topics could not
be created.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
from pathlib import Path

import faust
from kafka.errors import KafkaError
from pydantic import ValidationError

from snowtrap.core.settings import SettingsFileError
from snowtrap.models.bundle import BundleError, ModelBundle, load_bundle
from snowtrap.models.decode import DecodeLimits
from snowtrap.models.manifest import BundleManifest
from snowtrap.stream.metrics import WorkerMetrics
from snowtrap.stream.topics import TopicProvisioningError, ensure_topics
from snowtrap.stream.worker.agents import BatchHandler, wire_worker
from snowtrap.stream.worker.app import create_app
from snowtrap.stream.worker.claim_check import read_claim_check
from snowtrap.stream.worker.health import HealthServer, WorkerHealth
from snowtrap.stream.worker.pipeline import PipelineConfig, analysis_side_for, categories_for
from snowtrap.stream.worker.settings import WorkerSettings
from snowtrap.stream.worker.topics import declare_topics

log = logging.getLogger("stream.worker")

EXIT_OK = 0
EXIT_BATCH_FAILED = 1
EXIT_BAD_SETTINGS = 2
EXIT_BAD_BUNDLE = 3
EXIT_NO_TOPICS = 4


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML settings file (SNOWTRAP_* env vars win)"
    )
    parser.add_argument(
        "--bundle", type=Path, default=None, help="model bundle directory (else bundle_dir)"
    )
    parser.set_defaults(run=_cli_worker)


def _cli_worker(args: argparse.Namespace) -> int:
    overrides = {"bundle_dir": args.bundle} if args.bundle is not None else {}
    try:
        settings = WorkerSettings.load(args.config, **overrides)
    except (SettingsFileError, ValidationError) as error:
        print(f"snowtrap worker: bad settings: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if settings.bundle_dir is None:
        print(
            "snowtrap worker: no model bundle: set SNOWTRAP_BUNDLE_DIR or pass --bundle DIR",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    return run_worker(settings)


def run_worker(settings: WorkerSettings) -> int:
    """Load the bundle, create the topics, run the Faust worker; returns the exit code."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    for chatty in ("kafka", "aiokafka"):  # connection chatter; their warnings still show
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    if settings.data_dir is None:
        with tempfile.TemporaryDirectory(prefix="snowtrap-worker-") as data_dir:
            return run_worker(settings.model_copy(update={"data_dir": Path(data_dir)}))

    assert settings.bundle_dir is not None
    try:
        bundle = load_bundle(settings.bundle_dir, intra_op_threads=settings.inference_threads)
    except BundleError as error:
        log.error("cannot serve the model bundle: %s", error)
        return EXIT_BAD_BUNDLE
    config = pipeline_config(settings, bundle.manifest)
    log.info("%s", describe_models(bundle, config))

    if settings.create_topics:
        client = settings.kafka_python_config()
        try:
            ensure_topics(client.pop("bootstrap_servers"), settings.topics, **client)
        except (KafkaError, TopicProvisioningError, OSError) as error:
            log.error("cannot create the snowtrap topics: %s", error)
            return EXIT_NO_TOPICS
    return _run_faust(settings, bundle, config)


def _run_faust(settings: WorkerSettings, bundle: ModelBundle, config: PipelineConfig) -> int:
    metrics = WorkerMetrics()
    metrics.model.info(model_info(bundle))
    health = WorkerHealth(bundle_loaded=True)
    app = create_app(settings)
    topics = declare_topics(app, settings.topics)
    reader = functools.partial(
        read_claim_check,
        roots=tuple(settings.claim_check_roots),
        max_bytes=settings.max_image_bytes,
    )
    handler = BatchHandler(app, topics, bundle, config, reader, metrics, health)
    wire_worker(
        app,
        topics,
        handler,
        batch_size=settings.batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000.0,
        lag_interval_s=settings.lag_interval_s,
    )
    server = HealthServer(
        health,
        metrics.registry,
        settings.metrics_host,
        settings.metrics_port,
        settings.liveness_stall_s,
    )
    worker = faust.Worker(
        app, server, loglevel=settings.log_level, quiet=True, redirect_stdouts=False
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else EXIT_BATCH_FAILED
    else:  # pragma: no cover - execute_from_commandline always exits
        code = EXIT_OK
    finally:
        handler.executor.shutdown(wait=True, cancel_futures=True)
    if handler.failed:
        return EXIT_BATCH_FAILED
    return code


def pipeline_config(settings: WorkerSettings, manifest: BundleManifest) -> PipelineConfig:
    """The pipeline's operating point: settings where given, else the bundle's manifest."""
    thresholds = manifest.thresholds

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    return PipelineConfig(
        topics=settings.topics,
        model_name=manifest.name,
        model_version=manifest.version,
        categories=categories_for(manifest),
        gate_threshold=pick(settings.gate_threshold, thresholds.classifier_gate),
        detection_threshold=pick(settings.detection_threshold, thresholds.detection_confidence),
        crop_threshold=pick(settings.crop_threshold, thresholds.crop),
        detect_all=settings.detect_all,
        analysis_max_side=settings.analysis_max_side or analysis_side_for(manifest),
        crop_margin=settings.crop_margin,
        crop_jpeg_quality=settings.crop_jpeg_quality,
        limits=DecodeLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        ),
        max_message_bytes=settings.max_message_bytes,
        claim_check_roots=tuple(settings.claim_check_roots),
    )


def describe_models(bundle: ModelBundle, config: PipelineConfig) -> str:
    """The start-up line saying what this worker serves and at which thresholds."""
    manifest = bundle.manifest
    classifier = manifest.models["classifier"]
    lines = [
        f"serving bundle {manifest.name} {manifest.version} from {bundle.directory} "
        f"on {', '.join(bundle.providers)}",
        f"  classifier: {classifier.file} ({classifier.backbone or 'custom'}, input "
        f"{classifier.input_size})",
    ]
    detector = manifest.models.get("detector")
    if detector is not None:
        lines.append(
            f"  detector: {detector.file} ({detector.notes or 'no notes'}); runs on "
            + ("every image" if config.detect_all else f"P(leopard) >= {config.gate_threshold}")
        )
    else:
        lines.append(
            "  detector: none in this bundle: classifier only, every record has empty "
            "detections and detector_ran=false, no crops"
        )
    lines.append(
        f"  thresholds: gate {config.gate_threshold}, detection {config.detection_threshold}, "
        f"crop {config.crop_threshold}; analysis decode max side {config.analysis_max_side}"
    )
    lines.extend(f"  note: {note}" for note in manifest.provenance.notes)
    return "\n".join(lines)


def model_info(bundle: ModelBundle) -> dict[str, str]:
    """Labels of the `snowtrap_model_bundle` info metric."""
    manifest = bundle.manifest
    return {
        "name": manifest.name,
        "version": manifest.version,
        "models": ",".join(sorted(manifest.models)),
        "detector": "yes" if bundle.has_detector else "no",
        "backbone": manifest.models["classifier"].backbone or "",
        "providers": ",".join(bundle.providers),
        "created_at": manifest.created_at.isoformat(),
        "directory": str(bundle.directory),
    }
