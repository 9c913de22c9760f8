"""The gather stage end to end: providers on a local server, downloads, dedupe, resume."""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snowtrap.training.gather import gather
from snowtrap.training.gather_config import (
    DedupeSettings,
    DownloadLimits,
    GatherConfig,
    QueryPlan,
    random_word_queries,
)
from snowtrap.training.sources import (
    BingConfig,
    CocoCameraTrapsConfig,
    LocalFolderConfig,
    OpenverseConfig,
    SourceAuthError,
)
from snowtrap.training.sources.config import QueryDefaults
from snowtrap.training.sources.testing import (
    LocalHttpServer,
    RecordedRequest,
    Reply,
    bing_item,
    bing_v7_route,
    openverse_item,
    openverse_route,
    pattern_image,
)

pytestmark = pytest.mark.timeout(120)

_PNG = {"Content-Type": "image/png"}
P1, P2, P3, P4, N1, N2 = (pattern_image(seed) for seed in (1, 2, 3, 4, 11, 12))
P2_REENCODED = pattern_image(2, size=(90, 60), fmt="JPEG", quality=80)  # same photo, new bytes
FILES: dict[str, Reply] = {
    "p1.png": Reply(200, P1, {"Content-Type": "image/png"}),
    "p1-copy.png": Reply(200, P1, {"Content-Type": "image/png"}),
    "p2.png": Reply(200, P2, {"Content-Type": "image/png"}),
    "p2-elsewhere.jpg": Reply(200, P2_REENCODED, {"Content-Type": "image/jpeg"}),
    "p3.png": Reply(200, P3, {"Content-Type": "application/octet-stream"}),
    "p4.png": Reply(200, P4, {"Content-Type": "image/png"}),
    "n1.png": Reply(200, N1, {"Content-Type": "image/png"}),
    "n2.png": Reply(200, N2, {"Content-Type": "image/png"}),
    "fake.jpg": Reply(200, b"<!doctype html><html>login</html>", {"Content-Type": "image/jpeg"}),
    "page.html": Reply(200, b"<html></html>", {"Content-Type": "text/html; charset=utf-8"}),
    "big.jpg": Reply(200, b"\xff\xd8\xff" + b"0" * 300_000, {"Content-Type": "image/jpeg"}),
    "big-stream.jpg": Reply(
        200, b"\xff\xd8\xff" + b"0" * 300_000, {"Content-Type": "image/jpeg"}, send_length=False
    ),
}
POSITIVE_FILES = [
    "p1.png",
    "p1-copy.png",
    "p2.png",
    "p3.png",
    "p4.png",
    "fake.jpg",
    "page.html",
    "big.jpg",
    "big-stream.jpg",
    "missing.png",
]
NEGATIVE_FILES = ["n1.png", "p2-elsewhere.jpg", "p3.png", "n2.png"]


def _serve_file(request: RecordedRequest) -> Reply:
    return FILES.get(request.path.removeprefix("/img/"), Reply(404, b"gone"))


@pytest.fixture
def web() -> Iterator[LocalHttpServer]:
    with LocalHttpServer() as server:
        results = {
            "snow leopard": [
                bing_item(server.url(f"/img/{name}"), i) for i, name in enumerate(POSITIVE_FILES)
            ],
            "rocky scree": [
                bing_item(server.url(f"/img/{name}"), 100 + i)
                for i, name in enumerate(NEGATIVE_FILES)
            ],
        }
        server.route("/v7.0/images/search", bing_v7_route(results, api_key="k"))
        server.route("/img/", _serve_file, prefix=True)
        yield server


def _config(web: LocalHttpServer, out: Path, **updates) -> GatherConfig:
    config = GatherConfig(
        out_dir=out,
        queries=QueryPlan(positive=["snow leopard"], habitat=["rocky scree"], random_words=0),
        per_query_limit=50,
        providers=[BingConfig(endpoint=web.url("/v7.0"), api_key="k", page_size=4, max_attempts=1)],
        download=DownloadLimits(
            concurrency=4, max_bytes=100_000, min_side=16, max_attempts=1, timeout_s=5
        ),
        progress=False,
    )
    return config.model_copy(update=updates)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _reasons(rows: list[dict], label: str) -> dict[str, list[str]]:
    by_reason: dict[str, list[str]] = {}
    for row in rows:
        if row["label"] == label:
            by_reason.setdefault(row["reason"], []).append(row["url"].rsplit("/", 1)[-1])
    return {reason: sorted(names) for reason, names in by_reason.items()}


def test_gather_downloads_validates_and_dedupes(web: LocalHttpServer, tmp_path: Path) -> None:
    out = tmp_path / "gather"

    result = gather(_config(web, out))

    manifest = _jsonl(out / "manifest.jsonl")
    kept = {row["label"]: [] for row in manifest}
    for row in manifest:
        kept[row["label"]].append(row["url"].rsplit("/", 1)[-1])
    assert sorted(kept["snow_leopard"]) == ["p1.png", "p4.png"]
    assert sorted(kept["background"]) == ["n1.png", "n2.png"]

    rejected = _jsonl(out / "rejected.jsonl")
    assert _reasons(rejected, "snow_leopard") == {
        "duplicate": ["p1-copy.png"],
        "near_duplicate_across_classes": ["p2.png"],
        "in_both_classes": ["p3.png"],
        "not_an_image": ["fake.jpg"],
        "content_type": ["page.html"],
        "too_large": ["big-stream.jpg", "big.jpg"],
        "http_status": ["missing.png"],
    }
    assert _reasons(rejected, "background") == {
        "near_duplicate_across_classes": ["p2-elsewhere.jpg"],
        "in_both_classes": ["p3.png"],
    }
    near = next(r for r in rejected if r["url"].endswith("/p2.png"))
    assert near["related"].endswith("/p2-elsewhere.jpg") and "phash distance" in near["detail"]

    # Every (label, URL) found ends in exactly one of the two files.
    for summary in result.labels.values():
        assert summary.found == summary.downloaded + sum(summary.rejected.values())
    assert result.labels["snow_leopard"].found == 10
    assert result.labels["snow_leopard"].rejected["too_large"] == 2
    assert result.search_errors == []

    # images/<label>/ holds exactly the manifest's images, named by their sha256.
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert on_disk == {row["path"] for row in manifest}
    for row in manifest:
        data = (out / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert row["path"] == f"images/{row['label']}/{row['sha256']}.png"
        assert row["source"] == "bing" and row["query"] in ("snow leopard", "rocky scree")
        assert row["page_url"].startswith("https://example.org/page/")
        assert (row["width"], row["height"]) == (96, 64)
        assert len(row["phash"]) == 16
        assert {"licence", "licence_url", "creator"} <= row.keys()
    assert (out / "rejected" / "snow_leopard").is_dir()  # dropped images are kept aside
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"]["background"]["downloaded"] == 2
    assert "snow_leopard" in result.format_summary()


def test_second_run_downloads_nothing_new(web: LocalHttpServer, tmp_path: Path) -> None:
    out = tmp_path / "gather"
    first = gather(_config(web, out))
    requests_after_first = len(web.requests)

    second = gather(_config(web, out))

    assert len(web.requests) == requests_after_first  # no search, no download
    assert second.fetched_now == 0 and first.fetched_now > 0
    assert [r.sha256 for r in second.rows] == [r.sha256 for r in first.rows]
    assert second.labels == first.labels


def test_interrupted_or_failed_downloads_are_retried_on_rerun(
    web: LocalHttpServer, tmp_path: Path
) -> None:
    flaky_calls: list[int] = []

    def flaky(_request: RecordedRequest) -> Reply:
        flaky_calls.append(1)
        if len(flaky_calls) == 1:
            return Reply(503, b"try later")
        return Reply(200, pattern_image(42), {"Content-Type": "image/png"})

    web.route("/img/flaky.png", flaky)
    web.route(
        "/v7.0/images/search",
        bing_v7_route({"snow leopard": [bing_item(web.url("/img/flaky.png"), 0)]}),
    )
    config = _config(
        web,
        tmp_path / "gather",
        queries=QueryPlan(positive=["snow leopard"], habitat=[], random_words=0),
    )

    first = gather(config)
    second = gather(config)

    assert first.labels["snow_leopard"].rejected == {"http_status": 1}
    assert [row.url for row in second.rows] == [web.url("/img/flaky.png")]
    assert second.fetched_now == 1 and len(flaky_calls) == 2


def test_random_word_negatives_and_search_errors(tmp_path: Path) -> None:
    words = random_word_queries(3, seed=7)
    assert words == random_word_queries(3, seed=7) and len(set(words)) == 3
    assert words != random_word_queries(3, seed=8)

    with LocalHttpServer() as server:
        results = {
            word: [openverse_item(server.url(f"/img/{word}.png"), i)]
            for i, word in enumerate(words[1:])
        }
        good = openverse_route(results)

        def route(request: RecordedRequest) -> Reply:
            if request.query["q"] == words[0]:
                return Reply(200, b"not json", {"Content-Type": "application/json"})
            return good(request)

        server.route("/v1/images/", route)
        server.route(
            "/img/",
            lambda r: Reply(200, pattern_image(zlib.crc32(r.path.encode())), _PNG),
            prefix=True,
        )
        config = GatherConfig(
            out_dir=tmp_path / "gather",
            queries=QueryPlan(positive=[], habitat=[], random_words=3, seed=7),
            providers=[OpenverseConfig(endpoint=server.base_url, token_env=None, max_attempts=1)],
            progress=False,
        )

        result = gather(config)

    searched = [r.query["q"] for r in server.requests_to("/v1/images/")]
    assert searched == words
    assert len(result.search_errors) == 1 and result.search_errors[0].startswith("openverse:")
    assert {row.label for row in result.rows} == {"background"}
    assert len(result.rows) == 2
    assert all(row.licence == "CC BY-SA 2.0" for row in result.rows)


def test_auth_failure_stops_gather(web: LocalHttpServer, tmp_path: Path) -> None:
    config = _config(web, tmp_path / "gather")
    config.providers[0] = BingConfig(endpoint=web.url("/v7.0"), api_key="wrong", max_attempts=3)
    with pytest.raises(SourceAuthError):
        gather(config)
    assert len(web.requests) == 1


def _camera_trap_dataset(root: Path) -> Path:
    """Synthetic-style frames: one camera, same scene; three with a leopard-ish blob."""
    rng = np.random.default_rng(5)
    scene = np.asarray(
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (128, 96), Image.Resampling.BICUBIC
        )
    ).copy()
    images, annotations = [], []
    for index in range(6):
        frame = scene.copy()
        frame[0, index] = 255 - frame[0, index]  # every frame's bytes differ a little
        has_leopard = index < 3
        if has_leopard:
            frame[40:50, 20 + index * 10 : 32 + index * 10] = (200, 200, 190)
        name = f"cam01/{index:04d}.jpg"
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=92)
        (root / "images" / name).write_bytes(buffer.getvalue())
        images.append({"id": index, "file_name": name, "width": 128, "height": 96})
        box = [20 + index * 10, 40, 12, 10] if has_leopard else None
        annotation = {"id": index, "image_id": index, "category_id": 1 if has_leopard else 0}
        if box:
            annotation["bbox"] = box
        annotations.append(annotation)
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "snow_leopard"}],
    }
    path = root / "train.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_camera_traps_through_gather_keeps_curated_look_alikes(tmp_path: Path) -> None:
    annotations = _camera_trap_dataset(tmp_path / "synthetic")
    config = GatherConfig(
        out_dir=tmp_path / "gather",
        providers=[CocoCameraTrapsConfig(annotations=annotations, image_base="images")],
        download=DownloadLimits(concurrency=2),
        progress=False,
    ).relative_to_dir(tmp_path / "synthetic")

    result = gather(config)

    positives = [row for row in result.rows if row.label == "snow_leopard"]
    negatives = [row for row in result.rows if row.label == "background"]
    assert len(positives) == 3 and len(negatives) == 3
    assert positives[0].annotations == [
        {"category": "snow_leopard", "bbox": [20.0, 40.0, 12.0, 10.0]}
    ]
    assert all(row.curated and row.url.startswith("file://") for row in result.rows)

    # The same frames from an untrusted source would be dropped as cross-class look-alikes.
    strict = config.model_copy(
        update={
            "out_dir": tmp_path / "strict",
            "dedupe": DedupeSettings(trust_curated_labels=False),
        }
    )
    dropped = gather(strict)
    assert dropped.labels["snow_leopard"].rejected.get("near_duplicate_across_classes", 0) > 0


def test_local_folder_through_gather(tmp_path: Path) -> None:
    root = tmp_path / "sorted"
    for label, seeds in (("snow_leopard", (1, 2)), ("background", (3,))):
        (root / label).mkdir(parents=True)
        for seed in seeds:
            (root / label / f"{seed}.png").write_bytes(pattern_image(seed))
    (root / "background" / "oops.png").write_bytes(b"GIF89a but not really")
    config = GatherConfig(
        out_dir=tmp_path / "gather",
        providers=[LocalFolderConfig(root=root, licence="CC0")],
        progress=False,
    )

    result = gather(config)

    assert result.labels["snow_leopard"].downloaded == 2
    assert result.labels["background"].downloaded == 1
    assert result.labels["background"].rejected == {"unsupported_format": 1}


def test_rerun_reads_local_files_again_when_they_changed(tmp_path: Path) -> None:
    """A re-synthesised survey rewrites frames under the same names: gather must not keep
    the old bytes from its fetch log (it did, and trained on stale frames)."""
    root = tmp_path / "sorted"
    (root / "snow_leopard").mkdir(parents=True)
    frame = root / "snow_leopard" / "1.png"
    frame.write_bytes(pattern_image(1))
    config = GatherConfig(
        out_dir=tmp_path / "gather",
        providers=[LocalFolderConfig(root=root, licence="CC0")],
        progress=False,
    )
    gather(config)
    before = (tmp_path / "gather" / "manifest.jsonl").read_text()
    frame.write_bytes(pattern_image(2))
    gather(config)
    after = (tmp_path / "gather" / "manifest.jsonl").read_text()
    assert json.loads(before)["sha256"] != json.loads(after)["sha256"]
    assert json.loads(after)["sha256"] == hashlib.sha256(pattern_image(2)).hexdigest()


def test_gather_config_loads_from_a_train_config_section(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text(
        """
run_dir: runs/demo
gather:
  out_dir: runs/demo/gather
  labels: {positive: snow_leopard, negative: background}
  queries:
    positive: ["snow leopard", "snow leopard camera trap"]
    habitat: ["rocky scree slope"]
    random_words: 10
    seed: 3
  per_query_limit: 40
  providers:
    - kind: bing
      endpoint: https://bing-compatible.example/v7.0
      api_key_env: MY_BING_KEY
    - kind: openverse
      licences: [by, by-sa, cc0]
    - kind: inaturalist
      negative_queries: ["Capra sibirica"]
    - kind: coco_camera_traps
      annotations: data/synthetic/train.json
      image_base: data/synthetic/images
      limit: 500
  download: {concurrency: 4, max_bytes: 10000000}
  dedupe: {phash_threshold: 6}
"""
    )

    loaded = GatherConfig.from_yaml(tmp_path / "train.yaml", section="gather")
    assert loaded.out_dir == Path("runs/demo/gather")  # relative to the working directory
    config = loaded.relative_to_dir(tmp_path)

    assert config.out_dir == tmp_path / "runs/demo/gather"
    assert [p.kind for p in config.providers] == [
        "bing",
        "openverse",
        "inaturalist",
        "coco_camera_traps",
    ]
    coco = config.providers[3]
    assert coco.annotations == tmp_path / "data/synthetic/train.json"
    assert coco.image_base == str(tmp_path / "data/synthetic/images")
    assert len(config.queries.negative_queries()) == 11
    assert config.dedupe.phash_threshold == 6
    with pytest.raises(ValueError):
        GatherConfig.model_validate({"providers": [{"kind": "bing", "endpont": "typo"}]})


def test_bing_key_survives_a_json_round_trip_via_the_environment(monkeypatch) -> None:
    config = GatherConfig.model_validate(
        {"providers": [{"kind": "bing", "api_key": "inline", "api_key_env": "TEST_BING_KEY"}]}
    )
    defaults = QueryDefaults("snow_leopard", "background", ("snow leopard",), ())
    assert config.providers[0].build(defaults)._api_key == "inline"
    copied = GatherConfig.model_validate(config.model_dump(mode="json"))  # key now masked
    with pytest.raises(ValueError, match="TEST_BING_KEY"):
        copied.providers[0].build(defaults)
    monkeypatch.setenv("TEST_BING_KEY", "from-env")
    assert copied.providers[0].build(defaults)._api_key == "from-env"
