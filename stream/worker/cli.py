"""`snowtrap worker [--config FILE] [--bundle DIR]`: run the stream worker until SIGTERM.

Start-up order: settings, then the model bundle (a worker that cannot serve models must fail
before it joins the consumer group and takes partitions), then the topics, then Faust.
Exit codes (`stream.runtime.process`): 0 stopped cleanly, 1 stopped after a batch could not be
committed (its transaction was aborted: nothing of it is visible and a restart redoes it), 2 bad
settings, 3 unusable bundle, 4 topics could not be created.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from snowtrap.models.bundle import BundleError, ModelBundle, load_bundle
from snowtrap.models.manifest import BundleManifest
from snowtrap.stream.metrics import WorkerMetrics
from snowtrap.stream.runtime.app import create_app
from snowtrap.stream.runtime.cli import configure_process_cli
from snowtrap.stream.runtime.health import ProcessHealth
from snowtrap.stream.runtime.process import (
    EXIT_BAD_SETTINGS,
    EXIT_CANNOT_SERVE,
    EXIT_NO_TOPICS,
    create_topics,
    run_faust_worker,
    start_process,
)
from snowtrap.stream.runtime.transactions import PartitionTransactions
from snowtrap.stream.worker.agents import BatchHandler, wire_worker
from snowtrap.stream.worker.claim_check import read_claim_check, s3_claim_checks_for
from snowtrap.stream.worker.pipeline import PipelineConfig
from snowtrap.stream.worker.pipeline import pipeline_config as operating_point
from snowtrap.stream.worker.settings import WorkerSettings
from snowtrap.stream.worker.topics import declare_topics

log = logging.getLogger("stream.worker")

EXIT_BAD_BUNDLE = EXIT_CANNOT_SERVE


def configure_cli(parser: argparse.ArgumentParser) -> None:
    configure_process_cli(
        parser,
        WorkerSettings,
        _run_from_cli,
        command="worker",
        path_option="--bundle",
        setting="bundle_dir",
        help="model bundle directory (else bundle_dir)",
    )


def _run_from_cli(settings: WorkerSettings) -> int:
    if settings.bundle_dir is None:
        print(
            "snowtrap worker: no model bundle: set SNOWTRAP_BUNDLE_DIR or pass --bundle DIR",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    return run_worker(settings)


def run_worker(settings: WorkerSettings) -> int:
    """Load the bundle, create the topics, run the Faust worker; returns the exit code."""
    return start_process(settings, "snowtrap-worker-", _serve)


def _serve(settings: WorkerSettings) -> int:
    assert settings.bundle_dir is not None
    try:
        bundle = load_bundle(settings.bundle_dir, intra_op_threads=settings.inference_threads)
    except BundleError as error:
        log.error("cannot serve the model bundle: %s", error)
        return EXIT_BAD_BUNDLE
    config = pipeline_config(settings, bundle.manifest)
    log.info("%s", describe_models(bundle, config))
    if not create_topics(settings):
        return EXIT_NO_TOPICS
    return _run_faust(settings, bundle, config)


def _run_faust(settings: WorkerSettings, bundle: ModelBundle, config: PipelineConfig) -> int:
    metrics = WorkerMetrics()
    metrics.model.info(model_info(bundle))
    health = ProcessHealth(bundle_loaded=True)
    app = create_app(settings)
    topics = declare_topics(app, settings.topics)
    reader = functools.partial(
        read_claim_check,
        roots=tuple(settings.claim_check_roots),
        max_bytes=settings.max_image_bytes,
        s3=s3_claim_checks_for(settings.claim_check_buckets, settings.s3),
    )
    transactions = PartitionTransactions(settings)
    handler = BatchHandler(app, topics, bundle, config, reader, metrics, health, transactions)
    wire_worker(
        app,
        topics,
        handler,
        batch_size=settings.batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000.0,
        lag_interval_s=settings.lag_interval_s,
        stall_recovery_s=settings.stall_recovery_s,
    )
    return run_faust_worker(app, handler, metrics.registry, settings)


def pipeline_config(settings: WorkerSettings, manifest: BundleManifest) -> PipelineConfig:
    """The worker's operating point: its settings where given, else the bundle's manifest."""
    return operating_point(
        settings,
        manifest,
        topics=settings.topics,
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
