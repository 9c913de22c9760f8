"""`snowtrap export OUT [...]`: the command around `export_megadetector`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from snowtrap.stream.export.exporter import export_megadetector
from snowtrap.stream.export.settings import FORMATS, ExportError, ExportSettings
from snowtrap.stream.export.topic_range import ReadRange, parse_offsets, parse_time
from snowtrap.stream.runtime.cli import EXIT_BAD_SETTINGS, load_settings


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap export --format megadetector OUT.json [--csv CSV] [range] [...]`."""
    parser.add_argument("output", type=Path, metavar="OUT.json")
    parser.add_argument("--format", choices=FORMATS, default="megadetector")
    parser.add_argument("--csv", type=Path, help="also write a per-camera, per-day CSV summary")
    parser.add_argument("--from-time", type=parse_time, help="ISO 8601, inclusive (UTC if no zone)")
    parser.add_argument("--to-time", type=parse_time, help="ISO 8601, exclusive")
    parser.add_argument(
        "--from-offsets",
        type=parse_offsets,
        help="N (every partition) or P:N,P:N (only the partitions named); inclusive",
    )
    parser.add_argument(
        "--to-offsets", type=parse_offsets, help="N or P:N,P:N, like --from-offsets; exclusive"
    )
    parser.add_argument(
        "--include-deadletter",
        action="store_true",
        help="add images that could not be processed as 'failure' entries",
    )
    parser.add_argument("--config", type=Path, help="YAML settings file (ExportSettings)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port,...")
    parser.add_argument("--typical-threshold", type=float, help="typical detection threshold")
    parser.add_argument("--conservative-threshold", type=float, help="conservative threshold")
    parser.add_argument("--file-template", help="image path, e.g. '{station_id}/{file}'")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="model bundle whose thresholds become the typical (crop) and conservative "
        "(detection) thresholds, unless given explicitly",
    )
    parser.set_defaults(run=_cli_export)


def bundle_thresholds(bundle: Path) -> dict[str, float]:
    """Typical = the bundle's crop threshold (boxes worth a close look), conservative = its
    detection threshold (every box the worker reports)."""
    from snowtrap.models.bundle import (  # here only: it loads ONNX Runtime
        BundleError,
        read_manifest,
    )

    try:
        thresholds = read_manifest(bundle).thresholds
    except BundleError as error:
        raise ValueError(f"--bundle: {error}") from error
    return {
        "typical_detection_threshold": max(thresholds.crop, thresholds.detection_confidence),
        "conservative_detection_threshold": thresholds.detection_confidence,
    }


def _cli_export(args: argparse.Namespace) -> int:
    overrides = {
        "bootstrap_servers": args.bootstrap_servers,
        "typical_detection_threshold": args.typical_threshold,
        "conservative_detection_threshold": args.conservative_threshold,
        "file_template": args.file_template,
    }
    try:
        if args.bundle is not None:
            for key, value in bundle_thresholds(args.bundle).items():
                overrides[key] = value if overrides[key] is None else overrides[key]
        read_range = ReadRange(args.from_time, args.to_time, args.from_offsets, args.to_offsets)
    except ValueError as error:
        print(f"snowtrap export: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    settings = load_settings(ExportSettings, args.config, "export", **overrides)
    if settings is None:
        return EXIT_BAD_SETTINGS
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        result = export_megadetector(
            settings,
            args.output,
            read_range=read_range,
            csv_path=args.csv,
            include_deadletter=args.include_deadletter,
        )
    except ExportError as error:
        print(f"snowtrap export: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {result.output}: {result.images} images, {result.failures} failures "
        f"(MegaDetector format {result.document['info']['format_version']}, valid)"
    )
    if result.duplicates_dropped:
        print(f"dropped {result.duplicates_dropped} duplicate record(s) of the same image id")
    if result.bad_records:
        print(f"skipped {len(result.bad_records)} unreadable record(s); see the warnings above")
    if result.csv:
        print(f"wrote {result.csv}")
    return 0
