"""The web providers on answers shaped field for field like the real APIs' (tests/data/recorded).

`test_sources_providers.py` drives paging and filtering with compact generated answers; here
each provider parses a full answer, with the fields, nesting and nulls the real service sends
(see tests/data/recorded/README.md), replayed only for the request it answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snowtrap.training.sources import (
    BingImageSearchV7,
    HttpClient,
    ImageCandidate,
    INaturalist,
    Openverse,
)
from snowtrap.training.sources.testing import LocalHttpServer, RecordedRequest, Reply

pytestmark = pytest.mark.timeout(60)

RECORDED = Path(__file__).parent / "data" / "recorded"


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with LocalHttpServer() as running:
        yield running


def recorded(name: str) -> Reply:
    """The recorded body, byte for byte, as the API's JSON."""
    body = (RECORDED / name).read_bytes()
    json.loads(body)  # a broken recording fails here, not as a client error
    return Reply(body=body, headers={"Content-Type": "application/json; charset=utf-8"})


def replay(
    expected: dict[str, str], reply: Reply, otherwise: Reply | None = None
) -> Callable[[RecordedRequest], Reply]:
    """Answer `reply` to exactly the recorded request's parameters; anything else gets
    `otherwise` (the next page), or a 400 that fails the test."""

    def handle(request: RecordedRequest) -> Reply:
        if request.query == expected:
            return reply
        if otherwise is not None:
            return otherwise
        return Reply.json({"detail": f"not the recorded request: {request.query}"}, status=400)

    return handle


# -------------------------------------------------------------------------------- iNaturalist

OBSERVATIONS_REQUEST = {
    "taxon_id": "74831",
    "quality_grade": "research",
    "photos": "true",
    "per_page": "3",
    "order_by": "id",
    "order": "asc",
    "photo_license": "cc-by,cc-by-nc,cc0",
}


def test_inaturalist_parses_recorded_taxa_and_observations(server: LocalHttpServer) -> None:
    server.route(
        "/v1/taxa",
        replay(
            {"q": "Panthera uncia", "is_active": "true", "per_page": "30"},
            recorded("inaturalist-taxa.json"),
        ),
    )
    # total_results counts what is left after id_above; the recording stops at one page and
    # the next answers empty, as the API does past the last observation.
    empty = Reply.json({"total_results": 0, "page": 1, "per_page": 3, "results": []})
    server.route(
        "/v1/observations",
        replay(OBSERVATIONS_REQUEST, recorded("inaturalist-observations.json"), empty),
    )
    inat = INaturalist(endpoint=server.base_url, per_page=3, http=HttpClient("inaturalist"))

    found = list(inat.search("Panthera uncia", 10))

    open_data = "https://inaturalist-open-data.s3.amazonaws.com/photos"
    assert found == [
        ImageCandidate(
            url=f"{open_data}/262611480/large.jpeg",  # 'square' -> 'large', '.jpeg' kept
            source="inaturalist",
            query="Panthera uncia",
            licence="CC BY-NC",
            creator="Sonam Yangchen",
            title="Snow Leopard",
            page_url="https://www.inaturalist.org/observations/150233817",
            width=1024,  # 'large' is 1024 px on the long side of 2048 x 1365
            height=682,
            thumbnail_url=f"{open_data}/262611480/square.jpeg",
            source_id="262611480",
            attribution="(c) Sonam Yangchen, some rights reserved (CC BY-NC)",
        ),
        # 151870442: the observation is CC BY-NC but its photo has no licence (all rights
        # reserved): nothing taken. 153004216: a CC0 photo, credited without "(c)".
        ImageCandidate(
            url=f"{open_data}/267744905/large.jpeg",
            source="inaturalist",
            query="Panthera uncia",
            licence="CC0",
            creator="Mira Kaur",
            title="Snow Leopard",
            page_url="https://www.inaturalist.org/observations/153004216",
            width=1024,
            height=683,
            thumbnail_url=f"{open_data}/267744905/square.jpeg",
            source_id="267744905",
            attribution="Mira Kaur, no rights reserved (CC0)",
        ),
    ]
    pages = server.requests_to("/v1/observations")
    assert [r.query.get("id_above") for r in pages] == [None, "153004216"]


# ---------------------------------------------------------------------------------- Openverse


def test_openverse_parses_a_recorded_search(server: LocalHttpServer) -> None:
    server.route(
        "/v1/images/",
        replay({"q": "snow leopard", "page": "1", "page_size": "20"}, recorded("openverse.json")),
    )
    openverse = Openverse(endpoint=server.base_url, http=HttpClient("openverse"))

    found = list(openverse.search("snow leopard", 50))

    assert len(server.requests) == 1  # page_count 1: no second page asked for
    assert [c.licence for c in found] == ["CC BY-ND 2.0", "CC BY-SA 3.0", "CC0 1.0", "CC0 1.0"]
    assert [c.creator for c in found] == [
        "Alpine Lens",
        "Example Uploader",
        "Free Stock Photographer",
        None,  # a museum record names no creator
    ]
    first = found[0]
    assert first.url == "https://live.staticflickr.com/65535/52012345678_0b6e5c3d2a_b.jpg"
    assert first.page_url == "https://www.flickr.com/photos/12345678@N00/52012345678"
    assert first.licence_url == "https://creativecommons.org/licenses/by-nd/2.0/"
    assert first.source_id == "1f6d8b0e-3c2a-4b8e-9b57-2d6c0f3e7a41"
    assert first.thumbnail_url == (
        "https://api.openverse.org/v1/images/1f6d8b0e-3c2a-4b8e-9b57-2d6c0f3e7a41/thumb/"
    )
    assert (first.width, first.height) == (1024, 683)
    assert first.attribution is not None
    assert first.attribution.startswith('"Snow Leopard (Panthera uncia)" by Alpine Lens')
    museum = found[3]
    assert (museum.width, museum.height) == (None, None)  # size unknown to the catalogue
    assert museum.page_url is not None and museum.page_url.startswith(
        "https://collections.nmnh.si.edu/"
    )
    assert all(c.source == "openverse" and c.query == "snow leopard" for c in found)


# ------------------------------------------------------------------------------------ Bing v7


def test_bing_v7_parses_a_recorded_page_and_follows_next_offset(server: LocalHttpServer) -> None:
    request = {"q": "snow leopard", "count": "3", "offset": "0", "safeSearch": "Moderate"}
    # nextOffset 5 after 3 results (the service dropped duplicates); past it the answer is an
    # Images answer with no values.
    empty = Reply.json({"_type": "Images", "totalEstimatedMatches": 911, "value": []})
    server.route("/v7.0/images/search", replay(request, recorded("bing-v7.json"), empty))
    bing = BingImageSearchV7(
        "key", endpoint=server.url("/v7.0"), page_size=3, http=HttpClient("bing")
    )

    found = list(bing.search("snow leopard", 10))

    assert [r.query["offset"] for r in server.requests] == ["0", "5"]
    assert found[0] == ImageCandidate(
        url="https://www.zoo.example/sites/default/files/animals/snowleopard-001.jpg",
        source="bing",
        query="snow leopard",
        title="Snow leopard | Example Zoo and Conservation Biology Institute ...",
        page_url="https://www.zoo.example/animals/snow-leopard",
        width=1600,
        height=1067,
        thumbnail_url="https://tse1.mm.bing.net/th?id=OIP.x7Kq2m9YcB1dE3fG4hI5jAHaE8&pid=Api",
        source_id="9F1E03B6C58D2A47E0B3C1D2E4F5A6B7C8D9E0F1",
    )
    # Plain-http pages and an animated GIF are candidates too: gather's download check, not
    # the provider, refuses what is not a still photo.
    assert [c.url.split(":")[0] for c in found] == ["https", "http", "https"]
    assert found[2].url.endswith(".gif")
    assert all(c.licence is None and c.creator is None for c in found)  # the web: no licence
