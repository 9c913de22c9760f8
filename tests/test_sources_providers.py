"""Each provider against a local server (or local files) shaped like the real thing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from snowtrap.training.sources import (
    BingImageSearchV7,
    BoxAnnotation,
    CocoCameraTraps,
    FailureReason,
    HttpClient,
    ImageCandidate,
    ImageSource,
    INaturalist,
    LocalFolder,
    Openverse,
    SourceError,
)
from snowtrap.training.sources.testing import (
    LocalHttpServer,
    bing_item,
    bing_v7_route,
    inaturalist_observation,
    inaturalist_observations_route,
    inaturalist_taxa_route,
    openverse_item,
    openverse_route,
    pattern_image,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with LocalHttpServer() as running:
        yield running


# ------------------------------------------------------------------------------------ Bing v7


def _bing(server: LocalHttpServer, page_size: int = 3) -> BingImageSearchV7:
    return BingImageSearchV7(
        "secret",
        endpoint=server.url("/v7.0"),
        page_size=page_size,
        safe_search="Strict",
        http=HttpClient("bing"),
    )


def test_bing_pages_by_offset_until_the_end(server: LocalHttpServer) -> None:
    items = [bing_item(f"https://img.example/{i}.jpg", i) for i in range(7)]
    server.route("/v7.0/images/search", bing_v7_route({"snow leopard": items}, api_key="secret"))

    found = list(_bing(server).search("snow leopard", 100))

    assert [c.url for c in found] == [f"https://img.example/{i}.jpg" for i in range(7)]
    requests = server.requests_to("/v7.0/images/search")
    assert [r.query["offset"] for r in requests] == ["0", "3", "6"]
    assert {r.query["count"] for r in requests} == {"3"}
    assert {r.query["safeSearch"] for r in requests} == {"Strict"}
    assert {r.headers["Ocp-Apim-Subscription-Key"] for r in requests} == {"secret"}
    first = found[0]
    assert isinstance(_bing(server), ImageSource)
    assert first == ImageCandidate(
        url="https://img.example/0.jpg",
        source="bing",
        query="snow leopard",
        title="result 0",
        page_url="https://example.org/page/0",
        width=96,
        height=64,
        thumbnail_url="https://tse1.mm.bing.net/th?id=OIP.0",
        source_id="IMG000000",
    )
    assert first.licence is None  # the web carries no licence: review before reuse


def test_bing_stops_at_an_empty_page(server: LocalHttpServer) -> None:
    items = [bing_item(f"https://img.example/{i}.jpg", i) for i in range(5)]
    # The estimate is far above what the service really has, as Bing's often is.
    server.route("/v7.0/images/search", bing_v7_route({"q": items}, total_estimated=1000))

    found = list(_bing(server).search("q", 100))

    assert len(found) == 5
    assert [r.query["offset"] for r in server.requests] == ["0", "3", "5"]  # follows nextOffset


def test_bing_stops_at_the_limit_without_fetching_more(server: LocalHttpServer) -> None:
    items = [bing_item(f"https://img.example/{i}.jpg", i) for i in range(20)]
    server.route("/v7.0/images/search", bing_v7_route({"q": items}))

    found = list(_bing(server).search("q", 4))

    assert len(found) == 4
    assert len(server.requests) == 2


def test_bing_skips_results_without_a_web_url(server: LocalHttpServer) -> None:
    items = [
        bing_item("file:///etc/passwd", 0),
        {"name": "no url"},
        bing_item("https://img.example/ok.jpg", 2),
        bing_item("https://img.example/ok.jpg", 3),  # repeated across a page: once
    ]
    server.route("/v7.0/images/search", bing_v7_route({"q": items}))

    assert [c.url for c in _bing(server, page_size=10).search("q", 10)] == [
        "https://img.example/ok.jpg"
    ]


# ---------------------------------------------------------------------------------- Openverse


def test_openverse_pages_until_page_count(server: LocalHttpServer) -> None:
    items = [openverse_item(f"https://live.staticflickr.com/{i}.jpg", i) for i in range(5)]
    server.route("/v1/images/", openverse_route({"alpine meadow": items}, token="tok"))
    openverse = Openverse(
        endpoint=server.base_url,
        token="tok",
        page_size=2,
        licences=["by", "by-sa", "cc0"],
        http=HttpClient("openverse"),
    )

    found = list(openverse.search("alpine meadow", 100))

    assert len(found) == 5
    requests = server.requests_to("/v1/images/")
    assert [r.query["page"] for r in requests] == ["1", "2", "3"]
    assert {r.query["license"] for r in requests} == {"by,by-sa,cc0"}
    assert {r.headers["Authorization"] for r in requests} == {"Bearer tok"}
    first = found[0]
    assert first.licence == "CC BY-SA 2.0"
    assert first.licence_url == "https://creativecommons.org/licenses/by-sa/2.0/"
    assert first.creator == "Photographer 0"
    assert first.page_url == "https://www.flickr.com/photos/someone/0"
    assert first.source_id == "00000000-0000-4000-8000-000000000000"
    assert first.attribution and "CC BY-SA 2.0" in first.attribution


def test_openverse_stops_at_the_limit(server: LocalHttpServer) -> None:
    items = [openverse_item(f"https://x.example/{i}.jpg", i) for i in range(50)]
    server.route("/v1/images/", openverse_route({"q": items}))
    openverse = Openverse(endpoint=server.base_url, page_size=20, http=HttpClient("openverse"))

    assert len(list(openverse.search("q", 25))) == 25
    assert len(server.requests) == 2
    assert "Authorization" not in server.requests[0].headers


# -------------------------------------------------------------------------------- iNaturalist

SNOW_LEOPARD = (74831, "Panthera uncia", "Snow Leopard")
BOBCAT = (41976, "Lynx rufus", "Bobcat")


def test_inaturalist_resolves_the_taxon_and_pages_by_id_above(server: LocalHttpServer) -> None:
    photo = server.url("/photos/{}/square.jpg?1700000000").format
    observations = [
        inaturalist_observation(100 + i, [photo(i)], taxon=SNOW_LEOPARD) for i in range(5)
    ]
    observations.append(  # no licence: all rights reserved, never taken
        inaturalist_observation(200, [photo(99)], taxon=SNOW_LEOPARD, license_code=None)
    )
    observations.append(  # a licence outside the filter
        inaturalist_observation(201, [photo(98)], taxon=SNOW_LEOPARD, license_code="cc-by-nd")
    )
    server.route("/v1/taxa", inaturalist_taxa_route([BOBCAT, SNOW_LEOPARD]))
    server.route("/v1/observations", inaturalist_observations_route({74831: observations}))
    inat = INaturalist(endpoint=server.base_url, per_page=2, http=HttpClient("inaturalist"))

    found = list(inat.search("Panthera uncia", 100))

    assert [c.page_url for c in found] == [
        f"https://www.inaturalist.org/observations/{100 + i}" for i in range(5)
    ]
    assert found[0].url == server.url("/photos/0/large.jpg?1700000000")
    assert found[0].thumbnail_url == server.url("/photos/0/square.jpg?1700000000")
    assert found[0].licence == "CC BY-NC"
    assert found[0].creator == "Observer 100"
    assert found[0].title == "Snow Leopard"
    assert (found[0].width, found[0].height) == (1024, 682)  # 'large' is 1024 px on the long side
    requests = server.requests_to("/v1/observations")
    assert [r.query.get("id_above") for r in requests] == [None, "101", "103", "200"]
    assert {r.query["taxon_id"] for r in requests} == {"74831"}
    assert {r.query["quality_grade"] for r in requests} == {"research"}
    assert {r.query["photo_license"] for r in requests} == {"cc-by,cc-by-nc,cc0"}
    assert {r.query["order_by"] for r in requests} == {"id"}
    assert len(server.requests_to("/v1/taxa")) == 1


def test_inaturalist_numeric_query_needs_no_lookup_and_limit_stops(
    server: LocalHttpServer,
) -> None:
    photo = server.url("/photos/{}/square.png").format
    observations = [inaturalist_observation(i, [photo(i)]) for i in range(1, 10)]
    server.route("/v1/observations", inaturalist_observations_route({74831: observations}))
    inat = INaturalist(
        endpoint=server.base_url, per_page=4, photo_size="original", http=HttpClient("inat")
    )

    found = list(inat.search("74831", 3))

    assert [c.url for c in found] == [server.url(f"/photos/{i}/original.png") for i in (1, 2, 3)]
    assert (found[0].width, found[0].height) == (2048, 1365)
    assert server.requests_to("/v1/taxa") == []
    assert len(server.requests) == 1


def test_inaturalist_unknown_taxon_is_not_found(server: LocalHttpServer) -> None:
    server.route("/v1/taxa", inaturalist_taxa_route([SNOW_LEOPARD]))
    inat = INaturalist(endpoint=server.base_url, http=HttpClient("inaturalist"))
    with pytest.raises(SourceError) as caught:
        list(inat.search("Felis imaginaria", 5))
    assert caught.value.reason is FailureReason.NOT_FOUND


# ------------------------------------------------------------------------------- local folder


def test_local_folder_labels_come_from_sub_folders(tmp_path: Path) -> None:
    root = tmp_path / "sorted"
    for relative, seed in [
        ("snow_leopard/a.png", 1),
        ("snow_leopard/deeper/b.jpg", 2),
        ("background/c.png", 3),
    ]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(pattern_image(seed))
    (root / "snow_leopard" / "notes.txt").write_text("not an image")
    folder = LocalFolder(root, licence="CC0", creator="field team")

    positives = list(folder.search("snow_leopard", 10))

    assert [c.title for c in positives] == ["snow_leopard/a.png", "snow_leopard/deeper/b.jpg"]
    assert all(c.url.startswith("file://") and c.curated for c in positives)
    assert positives[0].url == (root / "snow_leopard/a.png").resolve().as_uri()
    assert positives[0].licence == "CC0" and positives[0].creator == "field team"
    assert len(list(folder.search(".", 10))) == 3
    assert len(list(folder.search(".", 2))) == 2
    with pytest.raises(SourceError):
        list(folder.search("../elsewhere", 10))
    with pytest.raises(SourceError) as caught:
        list(folder.search("missing", 10))
    assert caught.value.reason is FailureReason.NOT_FOUND


# ------------------------------------------------------------------------- COCO Camera Traps


def _coco(tmp_path: Path) -> Path:
    """A LILA-style file: empty, leopard, leopard+ibex, ibex, unannotated, escaping path."""
    images_dir = tmp_path / "cct" / "images"
    images_dir.mkdir(parents=True)
    names = ["loc1/0001.jpg", "loc1/0002.jpg", "loc2/0003.jpg", "loc2/0004.jpg", "loc2/0005.jpg"]
    for index, name in enumerate(names):
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (images_dir / name).write_bytes(pattern_image(index, fmt="JPEG"))
    data = {
        "info": {"version": "1.0", "description": "test", "contributor": "snowtrap tests"},
        "licenses": [{"id": 1, "name": "CDLA-permissive-1.0", "url": "https://cdla.dev/"}],
        "categories": [
            {"id": 0, "name": "empty"},
            {"id": 1, "name": "snow leopard"},
            {"id": 2, "name": "ibex"},
        ],
        "images": [
            {"id": "a", "file_name": names[0], "width": 96, "height": 64, "license": 1},
            {"id": "b", "file_name": names[1], "width": 96, "height": 64, "seq_id": "s1"},
            {"id": "c", "file_name": names[2], "width": 96, "height": 64},
            {"id": "d", "file_name": names[3], "width": 96, "height": 64},
            {"id": "e", "file_name": names[4], "width": 96, "height": 64},
            {"id": "f", "file_name": "../../secret.jpg", "width": 1, "height": 1},
        ],
        "annotations": [
            {"id": "1", "image_id": "a", "category_id": 0},
            {"id": "2", "image_id": "b", "category_id": 1, "bbox": [10, 12, 30, 20]},
            {"id": "3", "image_id": "c", "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": "4", "image_id": "c", "category_id": 2, "bbox": [50, 10, 20, 20]},
            {"id": "5", "image_id": "d", "category_id": 2},
            {"id": "6", "image_id": "f", "category_id": 0},
        ],
    }
    path = tmp_path / "cct" / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_positives_negatives_and_boxes(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    coco = CocoCameraTraps(
        path, positive_categories=["snow_leopard"], image_base=path.parent / "images"
    )

    positives = list(coco.search("snow_leopard", 100))
    others = list(coco.search("@other", 100))

    assert [c.source_id for c in positives] == ["b", "c"]
    assert positives[0].annotations == (BoxAnnotation("snow leopard", (10.0, 12.0, 30.0, 20.0)),)
    assert positives[1].annotations == (
        BoxAnnotation("snow leopard", (1.0, 2.0, 3.0, 4.0)),
        BoxAnnotation("ibex", (50.0, 10.0, 20.0, 20.0)),
    )
    assert positives[0].url == (path.parent / "images/loc1/0002.jpg").resolve().as_uri()
    assert all(c.curated for c in positives + others)
    # 'e' has no annotation (unknown label); 'f' climbs out of the image folder.
    assert [c.source_id for c in others] == ["a", "d"]
    assert others[0].licence == "CDLA-permissive-1.0"
    assert others[0].creator == "snowtrap tests"
    # A frame with an ibex *and* a leopard is not an ibex negative.
    assert [c.source_id for c in coco.search("ibex", 100)] == ["d"]
    assert [c.source_id for c in coco.search("0", 100)] == ["a"]  # category by id
    assert len(list(coco.search("snow leopard", 1))) == 1


def test_coco_resolves_against_a_base_url_and_reports_unknown_categories(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    coco = CocoCameraTraps(
        path,
        positive_categories=[1],
        image_base="https://lilawildlife.blob.core.windows.net/lila-wildlife/test-set/",
    )

    first = next(iter(coco.search("snow leopard", 1)))

    assert first.url == (
        "https://lilawildlife.blob.core.windows.net/lila-wildlife/test-set/loc1/0002.jpg"
    )
    with pytest.raises(SourceError) as caught:
        list(coco.search("yeti", 5))
    assert caught.value.reason is FailureReason.NOT_FOUND
    assert "ibex" in caught.value.message  # says what the file does have


def test_coco_bad_file_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(SourceError) as caught:
        list(CocoCameraTraps(path, positive_categories=["x"]).search("x", 1))
    assert caught.value.reason is FailureReason.BAD_JSON
    path.write_text(json.dumps({"images": {}, "categories": []}))
    with pytest.raises(SourceError) as caught:
        list(CocoCameraTraps(path, positive_categories=["x"]).search("x", 1))
    assert caught.value.reason is FailureReason.UNEXPECTED_SHAPE
