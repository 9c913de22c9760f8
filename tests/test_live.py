"""`snowtrap live`: the sightings page against a real broker and over real HTTP.

Records built with the project's own contract builders (detection records, crops, the
matcher's identity records, dead letters) go onto fresh topics; the page's server reads them
and must show them in its JSON snapshot and on its event stream, with crop JPEGs served from
memory; records that break their contract are counted, never fatal; every link carries the
path prefix. The browser side (the real pipeline, headless Chromium): test_live_browser.py.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from helpers.topics import produce
from pydantic import ValidationError

from snowtrap.devtools.sample_records import (
    SAMPLE_CAPTURE_TIME,
    sample_crop,
    sample_dead_letter,
    sample_detection,
    sample_identity,
)
from snowtrap.stream.contracts import (
    build_crop_message,
    build_deadletter_message,
    build_detection_message,
)
from snowtrap.stream.contracts.identities import build_identity_message
from snowtrap.stream.live import LiveServer, LiveSettings, LiveState
from snowtrap.stream.live.settings import LivePage
from snowtrap.stream.live.window import WindowCounts
from snowtrap.stream.topics import TopicNames

# -- the page, in-process, against records without Kafka -------------------------------------


def apply(state: LiveState, role: str, message: tuple[Any, Any, Any], at: float) -> None:
    key, value, headers = message
    state.apply_record(role, key, value, headers, int(at * 1000))  # type: ignore[arg-type]


def test_window_counts_forget_events_older_than_the_window() -> None:
    window = WindowCounts(window_s=100.0)
    assert window.add("cam-a", at=950.0, now=1000.0)
    assert window.add("cam-b", at=1000.0, now=1000.0)
    assert window.add("cam-a", at=920.0, now=1000.0)  # out of order: still counted
    assert not window.add("cam-a", at=850.0, now=1000.0)  # already outside
    assert window.counts(now=1000.0) == {"cam-a": 2, "cam-b": 1}
    assert window.counts(now=1030.0) == {"cam-a": 1, "cam-b": 1}
    assert window.counts(now=1101.0) == {}
    assert window.total(now=1101.0) == 0


def test_state_joins_crop_detection_and_identity_in_whatever_order_they_come() -> None:
    now = time.time()
    state = LiveState(sightings=5, window_hours=24, clock=lambda: now)
    seen = sample_crop("IMG_0001", "cam-a")
    apply(state, "identities", build_identity_message(sample_identity(seen, "F-07")), now - 3)
    apply(state, "crops", build_crop_message(seen), now - 2)
    apply(state, "detections", build_detection_message(sample_detection("IMG_0001", "cam-a",
          leopard=True)), now - 1)  # fmt: skip

    (shown,) = state.snapshot("/live")["sightings"]
    assert shown["crop_id"] == seen.crop_id
    assert shown["url"] == f"/live/crops/{seen.image_id}%3A0.jpg"
    assert (shown["camera_id"], shown["score"]) == ("cam-a", 0.91)
    assert shown["capture_time"] == SAMPLE_CAPTURE_TIME.isoformat()
    assert (shown["decision"], shown["individual_id"]) == ("known", "F-07")
    assert shown["file"] == "cam-a/IMG_0001.jpg"
    assert state.crop_jpeg(seen.crop_id) == seen.jpeg


def test_state_keeps_only_the_newest_crops_and_counts_a_window() -> None:
    now = time.time()
    state = LiveState(sightings=2, window_hours=1, clock=lambda: now)
    crops = [sample_crop(f"IMG_{i:04d}", "cam-a") for i in range(3)]
    for i, each in enumerate(crops):
        apply(state, "crops", build_crop_message(each), now - 30 + i)
    old = sample_detection("IMG_0100", "cam-b", leopard=False)
    apply(state, "detections", build_detection_message(old), now - 2 * 3600)  # outside

    snapshot = state.snapshot()
    assert [s["crop_id"] for s in snapshot["sightings"]] == [crops[2].crop_id, crops[1].crop_id]
    assert state.crop_jpeg(crops[0].crop_id) is None  # no longer kept, nor served
    assert snapshot["cameras"] == [
        {"camera_id": "cam-a", "images": 0, "leopard_images": 0, "crops": 3}
    ]


def test_state_counts_records_that_break_their_contract_and_keeps_going() -> None:
    now = time.time()
    state = LiveState(sightings=5, window_hours=24, clock=lambda: now)
    good = sample_crop("IMG_0001", "cam-a")
    key, value, headers = build_crop_message(good)
    apply(state, "detections", (b"k", b"{not json", []), now)
    apply(state, "crops", (key, b"", headers), now)  # no JPEG bytes
    apply(state, "crops", (key, value, [("snowtrap-contract", b"9")]), now)  # unknown version
    broken_identity = {**sample_identity(good, "F-01"), "decision": "probably"}
    apply(state, "identities", (key, json.dumps(broken_identity).encode(), []), now)
    apply(state, "deadletter", (b"k", b"x", [("image-id", b"abc")]), now)  # no reason
    apply(state, "crops", (key, value, headers), now)

    snapshot = state.snapshot()
    assert snapshot["bad_records"] == [
        {"topic": "crops", "reason": "empty_payload", "count": 1},
        {"topic": "crops", "reason": "unknown_contract_version", "count": 1},
        {"topic": "deadletter", "reason": "missing_header", "count": 1},
        {"topic": "detections", "reason": "bad_json", "count": 1},
        {"topic": "identities", "reason": "bad_record", "count": 1},
    ]
    assert [s["crop_id"] for s in snapshot["sightings"]] == [good.crop_id]


def test_a_record_published_again_is_counted_once_and_keeps_its_identity() -> None:
    """A worker that redoes a batch after a crash republishes under the same ids."""
    now = time.time()
    state = LiveState(sightings=5, window_hours=24, clock=lambda: now)
    seen = sample_crop("IMG_0001", "cam-a")
    record = sample_detection("IMG_0001", "cam-a", leopard=True)
    letter = sample_dead_letter("IMG_0002", "truncated", "decode")
    for repeat in range(2):
        apply(state, "detections", build_detection_message(record), now - 5 + repeat)
        apply(state, "crops", build_crop_message(seen), now - 4 + repeat)
        apply(state, "deadletter", build_deadletter_message(letter), now - 3 + repeat)
        if repeat == 0:
            apply(state, "identities", build_identity_message(sample_identity(seen, "F-07")), now)

    snapshot = state.snapshot()
    assert snapshot["cameras"] == [
        {"camera_id": "cam-a", "images": 1, "leopard_images": 1, "crops": 1}
    ]
    assert snapshot["deadletters"]["total"] == 1
    (shown,) = snapshot["sightings"]
    assert shown["individual_id"] == "F-07"


def test_settings_normalise_the_path_prefix_and_refuse_a_bad_one() -> None:
    assert LivePage(root_path="live/").root_path == "/live"
    assert LivePage(root_path="/").root_path == ""
    assert LivePage(root_path="/a/b").root_path == "/a/b"
    with pytest.raises(ValidationError, match="plain URL path"):
        LivePage(root_path='/live"><script>')


def test_the_page_reads_its_own_fields_under_live_and_kafka_as_every_process_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`SNOWTRAP_LIVE__*` for the page, the shared `SNOWTRAP_*` for Kafka: a worker's values
    in the same environment (its client id, a generic port) do not leak into the page."""
    monkeypatch.setenv("SNOWTRAP_BOOTSTRAP_SERVERS", "kafka-a:9092")
    monkeypatch.setenv("SNOWTRAP_TOPICS__CROPS", "survey2.crops")
    monkeypatch.setenv("SNOWTRAP_CLIENT_ID", "worker-7")
    monkeypatch.setenv("SNOWTRAP_PORT", "9999")
    monkeypatch.setenv("SNOWTRAP_LIVE__ROOT_PATH", "/live")
    monkeypatch.setenv("SNOWTRAP_LIVE__SIGHTINGS", "12")
    settings = LiveSettings.load(None, live={"port": 0})
    assert settings.bootstrap_servers == "kafka-a:9092"
    assert settings.topics.crops == "survey2.crops"
    assert (settings.live.root_path, settings.live.sightings, settings.live.port) == (
        "/live",
        12,
        0,
    )
    assert settings.consumer_config()["client_id"] == "snowtrap-live"


# -- the page as a server, against a real broker ---------------------------------------------


def http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s; last: {value}")
        time.sleep(0.2)


class EventStream:
    """A real SSE client on http.client: reads `event:`/`data:` blocks as they arrive."""

    def __init__(self, port: int, path: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", path, headers={"Accept": "text/event-stream"})
        self.response = self.connection.getresponse()

    def next_event(self) -> tuple[str, Any]:
        name, data = "", ""
        while True:
            line = self.response.readline().decode()
            if not line:
                raise AssertionError("the event stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
            elif line == "" and data:
                return name, json.loads(data)

    def until(self, done: Callable[[Any], bool], limit: int = 200) -> Any:
        for _ in range(limit):
            name, data = self.next_event()
            assert name == "snapshot"
            if done(data):
                return data
        raise AssertionError(f"no event matched in {limit} events")

    def close(self) -> None:
        self.connection.close()


def live_settings(bootstrap: str, topics: TopicNames, **page: Any) -> LiveSettings:
    """The page on a free port, pushing fast; `page` sets more `LivePage` fields."""
    return LiveSettings(
        bootstrap_servers=bootstrap, topics=topics,
        live=LivePage(port=0, push_interval_s=0.1, retry_interval_s=0.5, **page),
    )  # fmt: skip


def test_page_shows_the_topics_in_its_snapshot_events_and_crops(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    topics = kafka_topics
    seen = sample_crop("IMG_0001", "cam-a")
    produce(kafka_bootstrap, topics.detections, [
        build_detection_message(sample_detection("IMG_0001", "cam-a", leopard=True)),
        build_detection_message(sample_detection("IMG_0002", "cam-b", leopard=False)),
    ])  # fmt: skip
    produce(kafka_bootstrap, topics.crops, [build_crop_message(seen)])
    produce(
        kafka_bootstrap, topics.identities, [build_identity_message(sample_identity(seen, "F-07"))]
    )
    produce(kafka_bootstrap, topics.deadletter, [
        build_deadletter_message(sample_dead_letter("IMG_0003", "truncated", "decode")),
        build_deadletter_message(sample_dead_letter("IMG_0004", "truncated", "decode")),
        build_deadletter_message(sample_dead_letter("IMG_0005", "not_an_image", "decode")),
    ])  # fmt: skip

    with LiveServer(live_settings(kafka_bootstrap, topics, root_path="/live")) as server:
        base = f"http://127.0.0.1:{server.port}/live"
        snapshot = wait_for(
            lambda: json.loads(http_get(f"{base}/api/snapshot")[2]),
            lambda s: s["kafka"]["caught_up"] and s["sightings"] and s["deadletters"]["total"] == 3,
        )
        (shown,) = snapshot["sightings"]
        assert shown["crop_id"] == seen.crop_id
        assert (shown["camera_id"], shown["score"]) == ("cam-a", 0.91)
        assert (shown["decision"], shown["individual_id"]) == ("known", "F-07")
        assert shown["capture_time"] == SAMPLE_CAPTURE_TIME.isoformat()
        assert snapshot["cameras"] == [
            {"camera_id": "cam-a", "images": 1, "leopard_images": 1, "crops": 1},
            {"camera_id": "cam-b", "images": 1, "leopard_images": 0, "crops": 0},
        ]
        assert snapshot["deadletters"]["by_reason"] == [
            {"stage": "decode", "reason": "truncated", "count": 2},
            {"stage": "decode", "reason": "not_an_image", "count": 1},
        ]
        assert snapshot["bad_records"] == []

        status, headers, body = http_get(f"http://127.0.0.1:{server.port}{shown['url']}")
        assert (status, headers["content-type"], body) == (200, "image/jpeg", seen.jpeg)
        assert http_get(f"{base}/crops/{'0' * 64}%3A0.jpg")[0] == 404

        # The event stream: the whole state on connect, then each change as it happens.
        stream = EventStream(server.port, "/live/events")
        try:
            assert stream.response.getheader("content-type").startswith("text/event-stream")
            name, first = stream.next_event()
            assert name == "snapshot"
            assert [s["crop_id"] for s in first["sightings"]] == [seen.crop_id]
            assert first["deadletters"]["total"] == 3
            later = sample_crop("IMG_0006", "cam-b", score=0.77)
            produce(kafka_bootstrap, topics.crops, [build_crop_message(later)])
            pushed = stream.until(lambda s: len(s["sightings"]) == 2)
            assert pushed["sightings"][0]["crop_id"] == later.crop_id  # newest first
            assert pushed["sightings"][0]["camera_id"] == "cam-b"
            assert pushed["sightings"][0]["decision"] is None  # not matched yet
        finally:
            stream.close()


def test_bad_records_on_every_topic_are_counted_and_the_page_keeps_reading(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    topics = kafka_topics
    good = sample_crop("IMG_0001", "cam-a")
    key, value, headers = build_crop_message(good)
    produce(kafka_bootstrap, topics.detections, [(b"k", b"not json at all", [])])
    produce(kafka_bootstrap, topics.crops, [(key, b"\xff\xd8 no headers", [])])
    produce(kafka_bootstrap, topics.identities, [(key, b'{"contract": 1}', [])])
    produce(kafka_bootstrap, topics.deadletter, [(b"k", b"bytes", [])])

    with LiveServer(live_settings(kafka_bootstrap, topics)) as server:
        base = f"http://127.0.0.1:{server.port}"
        snapshot = wait_for(
            lambda: json.loads(http_get(f"{base}/api/snapshot")[2]),
            lambda s: sum(row["count"] for row in s["bad_records"]) == 4,
        )
        assert {row["topic"] for row in snapshot["bad_records"]} == {
            "detections", "crops", "identities", "deadletter",
        }  # fmt: skip
        produce(kafka_bootstrap, topics.crops, [(key, value, headers)])
        snapshot = wait_for(
            lambda: json.loads(http_get(f"{base}/api/snapshot")[2]),
            lambda s: len(s["sightings"]) == 1,
        )
        assert snapshot["sightings"][0]["crop_id"] == good.crop_id
        assert http_get(f"{base}/healthz")[0] == 200


def test_every_link_the_page_holds_carries_the_path_prefix_and_nothing_is_external(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    with LiveServer(live_settings(kafka_bootstrap, kafka_topics, root_path="/ops/live")) as server:
        origin = f"http://127.0.0.1:{server.port}"
        status, headers, body = http_get(f"{origin}/ops/live/")
        page = body.decode()
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert 'href="/ops/live/static/live.css"' in page
        assert 'src="/ops/live/static/live.js"' in page
        assert 'data-root="/ops/live"' in page
        assert "default-src 'none'" in headers["content-security-policy"]
        script = http_get(f"{origin}/ops/live/static/live.js")[2].decode()
        assert 'new EventSource(root + "/events")' in script
        assert "innerHTML" not in script  # record data only ever goes in as text
        sheet = http_get(f"{origin}/ops/live/static/live.css")[2].decode()
        for text in (page, script, sheet):
            assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert http_get(f"{origin}/ops/live/static/../settings.py")[0] == 404

        # /ops/live redirects to the page; a proxy that strips the prefix still reaches it.
        request = urllib.request.Request(f"{origin}/ops/live", method="GET")
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(request, timeout=10)
        assert redirect.value.headers["location"] == "/ops/live/"
        assert http_get(f"{origin}/")[2].decode() == page
        assert http_get(f"{origin}/static/live.js")[0] == 200
        snapshot = json.loads(http_get(f"{origin}/ops/live/api/snapshot")[2])
        assert snapshot["sightings"] == [] and snapshot["window_hours"] == 24


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
