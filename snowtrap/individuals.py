"""`snowtrap individuals enroll|list|show`: manage the individual database.

    snowtrap individuals enroll CHIP... --id NAME [--db PATH]
    snowtrap individuals list [--db PATH]
    snowtrap individuals show NAME [--db PATH]

The database defaults to `$SNOWTRAP_DB_PATH`, else `individuals.sqlite` (the matcher reads
the same variable). Enrolled chips are crops of one leopard (JPEG/PNG); a chip with too
little texture is refused, since it could never be matched.

A command, not model code: it sits beside `snowtrap.cli` and uses the matching maths of
`models.reid` (features) and its SQLite storage (`stream.matcher.database`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

DEFAULT_DB = "individuals.sqlite"


def default_db() -> Path:
    return Path(os.environ.get("SNOWTRAP_DB_PATH") or DEFAULT_DB)


def configure_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    enroll = sub.add_parser("enroll", help="add chips of one individual")
    enroll.add_argument("chips", nargs="+", type=Path, help="crop images of the individual")
    enroll.add_argument("--id", required=True, dest="individual_id", help="the individual")
    enroll.add_argument("--db", type=Path, default=None, help="database (default: see above)")
    enroll.set_defaults(run=_cli_enroll)
    listing = sub.add_parser("list", help="every individual with counts")
    listing.add_argument("--db", type=Path, default=None)
    listing.set_defaults(run=_cli_list)
    show = sub.add_parser("show", help="one individual's sightings over time and cameras")
    show.add_argument("name")
    show.add_argument("--db", type=Path, default=None)
    show.set_defaults(run=_cli_show)


def read_chip(path: Path):
    """An image file as RGB uint8 (raises ValueError when unreadable)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _cli_enroll(args: argparse.Namespace) -> int:
    from snowtrap.models.reid.features import DEFAULT_CONFIG, extract_features
    from snowtrap.stream.matcher.database import IndividualDB

    config = DEFAULT_CONFIG
    features, sources = [], []
    for path in args.chips:
        try:
            chip = extract_features(read_chip(path), config)
        except ValueError as error:
            print(f"snowtrap individuals: {error}", file=sys.stderr)
            return 2
        if len(chip) < config.min_keypoints:
            print(
                f"snowtrap individuals: {path}: not enough texture ({len(chip)} keypoints, "
                f"need {config.min_keypoints})",
                file=sys.stderr,
            )
            return 2
        features.append(chip)
        sources.append(str(path))
    with IndividualDB(args.db or default_db()) as db:
        enrolled = db.enroll(args.individual_id, features, sources, config)
        print(
            f"enrolled {len(enrolled)} chip(s) of {args.individual_id} "
            f"({sum(len(f) for f in features)} keypoints); database version {db.version}"
        )
    return 0


def _cli_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from snowtrap.stream.matcher.database import IndividualDB

    with IndividualDB(args.db or default_db()) as db:
        table = Table(title=f"individuals in {db.path} (version {db.version})")
        for column in ("individual", "chips", "sightings", "cameras", "first seen", "last seen"):
            table.add_column(column)
        for s in db.summaries():
            table.add_row(
                s.individual_id,
                str(s.chips),
                str(s.sightings),
                str(s.cameras),
                s.first_seen or "-",
                s.last_seen or "-",
            )
    Console().print(table)
    return 0


def _cli_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from snowtrap.stream.matcher.database import IndividualDB

    with IndividualDB(args.db or default_db()) as db:
        if args.name not in db.individual_ids():
            print(f"snowtrap individuals: no individual {args.name!r}", file=sys.stderr)
            return 1
        sightings = db.sightings(args.name)
        chips = next(s.chips for s in db.summaries() if s.individual_id == args.name)
    console = Console()
    cameras = Counter(s.camera_id for s in sightings)
    console.print(
        f"[bold]{args.name}[/bold]: {chips} enrolled chip(s), {len(sightings)} sighting(s) "
        f"at {len(cameras)} camera(s)"
        + (": " + ", ".join(f"{c} x{n}" for c, n in sorted(cameras.items())) if cameras else "")
    )
    table = Table(title=f"sightings of {args.name}")
    for column in ("capture time", "camera", "station", "image", "score"):
        table.add_column(column)
    for s in sightings:
        table.add_row(
            s.capture_time.isoformat(sep=" ") if s.capture_time else "-",
            s.camera_id,
            s.station_id or "-",
            s.image_id[:16],
            f"{s.score:.2f}",
        )
    console.print(table)
    return 0
