"""The re-identification core (`models.reid`), its database and the matcher's per-crop service.

Chips come from rendered synthetic frames: each individual's rosettes are fixed by its id, and
every frame seed gives another pose, scale, position and (when flipped) direction of travel.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.reid import leopard_crop

from snowtrap.cli import main as snowtrap_main
from snowtrap.models.decode import strip_metadata_jpeg
from snowtrap.models.reid.features import DEFAULT_CONFIG, extract_features
from snowtrap.models.reid.matching import Decision, DescriptorIndex, EnrolledChip, match_image
from snowtrap.stream.contracts import Crop, build_crop_message, parse_deadletter_message
from snowtrap.stream.matcher.database import IndividualDB, Sighting
from snowtrap.stream.matcher.service import MatcherService, Source, parse_identity_message

INDIVIDUALS = [f"SL-{i:03d}" for i in range(6)]
ENROLL_SEED = 11
QUERY_SEEDS = (23, 37)
SOURCE = Source("trap.crops", 0, 0)


def _index(individuals: list[str] = INDIVIDUALS) -> DescriptorIndex:
    index = DescriptorIndex(DEFAULT_CONFIG)
    index.add(
        EnrolledChip(i, name, extract_features(leopard_crop(name, ENROLL_SEED)))
        for i, name in enumerate(individuals)
    )
    return index


@pytest.fixture(scope="module")
def index() -> DescriptorIndex:
    return _index()


def test_same_individual_ranks_first(index: DescriptorIndex) -> None:
    for name in INDIVIDUALS:
        for seed in QUERY_SEEDS:
            result = match_image(leopard_crop(name, seed, night=seed % 2 == 1), index)
            ranked = [c.individual_id for c in result.candidates]
            assert ranked[0] == name, (name, seed, result.candidates[:3])
            assert result.decision is Decision.KNOWN
            assert result.individual_id == name
            # The right individual's verified score clearly beats every other candidate's.
            others = [c.score for c in result.candidates[1:]]
            assert result.top_score > 2 * max(others, default=0.0)


def test_unknown_individual_is_a_new_candidate(index: DescriptorIndex) -> None:
    for seed in QUERY_SEEDS:
        result = match_image(leopard_crop("UN-999", seed), index)
        assert result.decision is Decision.NEW
        assert result.individual_id is None
        assert result.n_keypoints >= DEFAULT_CONFIG.min_keypoints


def test_too_little_texture(index: DescriptorIndex) -> None:
    flat = np.full((120, 300, 3), 128, np.uint8)
    gradient = np.repeat(np.linspace(60, 200, 300, dtype=np.uint8)[None, :, None], 120, 0)
    for image in (flat, np.repeat(gradient, 3, axis=2)):
        result = match_image(image, index)
        assert result.decision is Decision.NOT_ENOUGH_TEXTURE
        assert result.candidates == []


def test_mirrored_query(index: DescriptorIndex) -> None:
    """A leopard walking the other way shows its coat mirrored: the query runs on the chip and
    its mirror, so both directions match one enrolled side; without the mirror only one does."""
    no_mirror = replace(DEFAULT_CONFIG, mirror=False)
    for name in INDIVIDUALS[:3]:
        crop = leopard_crop(name, QUERY_SEEDS[0])
        views = (crop, np.ascontiguousarray(crop[:, ::-1]))
        for view in views:
            assert match_image(view, index).individual_id == name
        one_sided = [match_image(view, index, no_mirror).individual_id == name for view in views]
        assert sorted(one_sided) == [False, True], name


def test_empty_index_says_new() -> None:
    result = match_image(leopard_crop(INDIVIDUALS[0], 23), DescriptorIndex())
    assert result.decision is Decision.NEW


def test_database_round_trip_and_incremental_index(tmp_path: Path) -> None:
    path = tmp_path / "individuals.sqlite"
    with IndividualDB(path) as db:
        for name in INDIVIDUALS[:3]:
            db.enroll(
                name, [extract_features(leopard_crop(name, ENROLL_SEED))], [name], DEFAULT_CONFIG
            )
        assert db.version == 3
        assert db.chip_count() == 3

    with IndividualDB(path) as db:
        service = MatcherService(db, DEFAULT_CONFIG)
        assert sorted(service.index.individuals()) == INDIVIDUALS[:3]
        rebuilds = service.index.rebuilds
        query = leopard_crop(INDIVIDUALS[4], QUERY_SEEDS[0])
        assert match_image(query, service.index).decision is Decision.NEW

        # Another process (the CLI) enrolls a new individual; the service picks it up
        # incrementally: into the pending set, without rebuilding the kd-trees.
        with IndividualDB(path) as other:
            feats = extract_features(leopard_crop(INDIVIDUALS[4], ENROLL_SEED))
            other.enroll(INDIVIDUALS[4], [feats], ["x"], DEFAULT_CONFIG)
        assert service.refresh() == 1
        assert service.index.rebuilds == rebuilds
        assert service.index.n_pending > 0
        assert match_image(query, service.index).individual_id == INDIVIDUALS[4]
        assert service.db_version == 4

        # Stored descriptors (uint8) give the same decisions as fresh ones.
        stored = db.build_index(DEFAULT_CONFIG)
        assert stored.n_descriptors == service.index.n_descriptors == 4 * 400
        query = leopard_crop(INDIVIDUALS[1], QUERY_SEEDS[1])
        assert match_image(query, stored).individual_id == INDIVIDUALS[1]

        taken = datetime(2026, 1, 12, 21, 5, 0)
        sighting = Sighting("img:0", "img", INDIVIDUALS[1], "known", 12.5, "C101", "ST1", taken)
        db.record_sighting(sighting)
        db.record_sighting(sighting)  # a re-delivered crop replaces its row
        (back,) = db.sightings(INDIVIDUALS[1])
        assert (back.crop_id, back.camera_id, back.capture_time, back.score) == (
            "img:0",
            "C101",
            taken,
            12.5,
        )
        summary = {s.individual_id: s for s in db.summaries()}
        assert summary[INDIVIDUALS[1]].sightings == 1
        assert summary[INDIVIDUALS[4]].chips == 1


def _crop_message(rgb: np.ndarray, image_id: str = "a" * 64, jpeg: bytes | None = None):
    crop = Crop(
        image_id=image_id,
        box_index=0,
        box=(0.1, 0.2, 0.3, 0.2),
        score=0.9,
        camera_id="C101",
        station_id="ST1",
        capture_time=datetime(2026, 1, 12, 21, 5, 0),
        model_version="test",
        jpeg=jpeg or strip_metadata_jpeg(rgb),
    )
    return build_crop_message(crop)


def test_service_identity_record_sighting_and_dead_letters(tmp_path: Path) -> None:
    with IndividualDB(tmp_path / "db.sqlite") as db:
        name = INDIVIDUALS[0]
        db.enroll(name, [extract_features(leopard_crop(name, ENROLL_SEED))], ["x"], DEFAULT_CONFIG)
        service = MatcherService(db, DEFAULT_CONFIG)

        key, value, headers = _crop_message(leopard_crop(name, QUERY_SEEDS[0]))
        handled = service.handle(value, headers, key, SOURCE)
        assert handled.output.role == "identities"
        record = parse_identity_message(handled.output.value)
        assert record["decision"] == "known"
        assert record["individual_id"] == name
        assert record["candidates"][0]["individual_id"] == name
        assert record["db_version"] == 1
        assert record["matcher_version"] == DEFAULT_CONFIG.version
        assert [s.crop_id for s in db.sightings(name)] == [f"{'a' * 64}:0"]

        # A truncated JPEG: dead letter with the decoder's reason, original bytes kept.
        key, value, headers = _crop_message(leopard_crop(name, 23))
        handled = service.handle(value[: len(value) // 3], headers, key, SOURCE)
        assert handled.output.role == "deadletter"
        out = handled.output
        letter = parse_deadletter_message(out.key, out.value, out.headers)
        assert letter.value == value[: len(value) // 3]
        assert letter.stage == "decode"
        assert letter.reason == handled.reason == "truncated"
        # Missing contract headers: dead letter at the contract stage.
        handled = service.handle(value, [], key, SOURCE)
        assert (handled.output.role, handled.reason) == ("deadletter", "missing_header")


def test_individuals_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chips = []
    for seed in (ENROLL_SEED, 29):
        path = tmp_path / f"chip{seed}.png"
        cv2.imwrite(str(path), cv2.cvtColor(leopard_crop("SL-042", seed), cv2.COLOR_RGB2BGR))
        chips.append(str(path))
    db = str(tmp_path / "cli.sqlite")
    assert snowtrap_main(["individuals", "enroll", *chips, "--id", "SL-042", "--db", db]) == 0
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((100, 250, 3), 90, np.uint8))
    assert snowtrap_main(["individuals", "enroll", str(flat), "--id", "X", "--db", db]) == 2
    with IndividualDB(db) as database:
        database.record_sighting(
            Sighting("i:0", "i", "SL-042", "known", 9.0, "C7", "", datetime(2026, 2, 1))
        )
    assert snowtrap_main(["individuals", "list", "--db", db]) == 0
    assert snowtrap_main(["individuals", "show", "SL-042", "--db", db]) == 0
    assert snowtrap_main(["individuals", "show", "NOPE", "--db", db]) == 1
    out = capsys.readouterr().out
    assert "SL-042" in out and "C7" in out and "2026-02-01" in out
    assert "enrolled 2 chip(s)" in out
    assert json.dumps("X") not in out
