"""`snowtrap export`: detection records from Kafka into the files biologists work with.

Reads `trap.detections` over a bounded range (a time range, an offset range, or everything
up to the end offsets as they were when the export started: it never waits for new
records), keeps the last record of each image id (the worker may re-publish an image after
a restart, always under the same id), and writes:

- a MegaDetector batch-output file (format 1.4, see `stream.megadetector`) that Timelapse and
  the other camera-trap tools load; optionally with the images that failed (`trap.deadletter`)
  as `failure` entries. The file is validated first and never written when invalid;
- a CSV summary per camera and capture day.

Image paths in the file follow `file_template` (default `{file}`: the path the worker put in
the record, `<camera id>/<path as uploaded>`), so the images of several cameras sit under one
folder per camera when they are reviewed.

Modules: `settings`, `topic_range` (what to read), `collect` (last record per image),
`outputs` (MegaDetector file, CSV), `exporter` (`export_megadetector`), `cli` (the command).
"""

from snowtrap.stream.export.cli import bundle_thresholds, configure_cli
from snowtrap.stream.export.collect import Collected, collect_detections, collect_failures
from snowtrap.stream.export.exporter import ExportResult, export_megadetector
from snowtrap.stream.export.outputs import build_megadetector, summary_rows, write_csv
from snowtrap.stream.export.settings import FORMATS, ExportError, ExportSettings
from snowtrap.stream.export.topic_range import ReadRange, parse_offsets, parse_time, read_topic

__all__ = [
    "FORMATS",
    "Collected",
    "ExportError",
    "ExportResult",
    "ExportSettings",
    "ReadRange",
    "build_megadetector",
    "bundle_thresholds",
    "collect_detections",
    "collect_failures",
    "configure_cli",
    "export_megadetector",
    "parse_offsets",
    "parse_time",
    "read_topic",
    "summary_rows",
    "write_csv",
]
