"""The `snowtrap` command.

Each subcommand lives in the module that owns the job; this file only names them. A module
registered here exposes `configure_cli(parser)`, which adds its arguments and sets
`parser.set_defaults(run=callable)`; the callable takes the parsed namespace and returns an
exit code. Modules are imported only when their command runs, so `snowtrap --help` stays
fast and a stream process never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "kafka": (
        "snowtrap.devtools.kafka_cli",
        "start, stop or inspect the project's local Kafka broker",
    ),
    "topics": ("snowtrap.stream.topics_cli", "create the snowtrap topics on a Kafka cluster"),
    "synth": (
        "snowtrap.training.synthetic",
        "generate synthetic camera-trap images with exact boxes",
    ),
    "gather": (
        "snowtrap.training.gather",
        "search image sources and download a labelled training set",
    ),
    "bundle": ("snowtrap.models.bundle_cli", "inspect and verify a model bundle"),
    "train": (
        "snowtrap.training.pipeline",
        "train classifier + LIME boxes + detector, write a bundle",
    ),
    "evaluate": (
        "snowtrap.training.bundle_evaluation",
        "evaluate a model bundle on a labelled COCO-CT set",
    ),
    "upload": ("snowtrap.stream.uploader", "upload camera-trap images to Kafka, each exactly once"),
    "worker": (
        "snowtrap.stream.worker.cli",
        "classify, detect and crop the images arriving on trap.images",
    ),
    "export": ("snowtrap.stream.export", "export detections as a MegaDetector batch-output file"),
    "individuals": (
        "snowtrap.individuals",
        "enroll, list and show known snow-leopard individuals",
    ),
    "matcher": (
        "snowtrap.stream.matcher.app",
        "identify the leopards on trap.crops (HotSpotter-style)",
    ),
    "serve": (
        "snowtrap.stream.serve.cli",
        "the HTTP detection API: POST images, get boxes (dynamic batching)",
    ),
    "live": (
        "snowtrap.stream.live.cli",
        "the live sightings page: newest leopard crops, counts, dead letters",
    ),
    "demo": ("snowtrap.demo", "the whole pipeline locally: broker, model, worker, upload, report"),
}


def _print_commands() -> None:
    print("usage: snowtrap COMMAND [ARGS...]\n\ncommands:")
    width = max(len(name) for name in COMMANDS)
    for name, (_, description) in COMMANDS.items():
        print(f"  {name.ljust(width)}  {description}")
    print("\n'snowtrap COMMAND --help' describes a command.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _print_commands()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"snowtrap: unknown command {name!r}", file=sys.stderr)
        _print_commands()
        return 2
    module_name, description = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"snowtrap {name}", description=description)
    importlib.import_module(module_name).configure_cli(parser)
    args = parser.parse_args(rest)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
