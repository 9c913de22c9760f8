"""The shared HTTP layer, through real providers, against a real server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from snowtrap.training.sources import (
    BingImageSearchV7,
    FailureReason,
    HttpClient,
    Openverse,
    RetryPolicy,
    SourceAuthError,
    SourceError,
    parse_retry_after,
)
from snowtrap.training.sources.testing import LocalHttpServer, Reply, bing_item

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with LocalHttpServer() as running:
        yield running


def _replies(*replies: Reply):
    """A route answering with `replies` in turn, then repeating the last one."""
    queue = list(replies)

    def handle(_request):
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handle


def _bing_page(count: int = 2) -> Reply:
    value = [bing_item(f"https://img.example/{i}.jpg", i) for i in range(count)]
    return Reply.json({"_type": "Images", "totalEstimatedMatches": count, "value": value})


def _fast_retries(**overrides) -> RetryPolicy:
    return RetryPolicy(**{"max_attempts": 3, "backoff_base_s": 0.01, **overrides})


def test_429_with_retry_after_seconds_waits_then_succeeds(server: LocalHttpServer) -> None:
    server.route(
        "/v7.0/images/search",
        _replies(
            Reply.json({"error": {"code": "429"}}, status=429, headers={"Retry-After": "1"}),
            _bing_page(2),
        ),
    )
    http = HttpClient("bing", retry=_fast_retries())
    bing = BingImageSearchV7("key", endpoint=server.url("/v7.0"), http=http)

    found = list(bing.search("snow leopard", 10))

    assert len(found) == 2
    first, second = server.requests_to("/v7.0/images/search")
    assert second.at - first.at >= 0.95  # the client honoured Retry-After: 1


def test_retry_after_http_date_and_garbage() -> None:
    now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(7.0)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_429_asking_too_long_a_wait_fails_without_sleeping(server: LocalHttpServer) -> None:
    server.route("/api", Reply(429, b"slow down", headers={"Retry-After": "3600"}))
    waits: list[float] = []
    http = HttpClient("bing", retry=_fast_retries(max_retry_after_s=60), sleep=waits.append)

    with pytest.raises(SourceError) as caught:
        http.get_json(server.url("/api"))

    assert caught.value.reason is FailureReason.RATE_LIMITED
    assert "3600" in str(caught.value)
    assert waits == []
    assert len(server.requests_to("/api")) == 1


def test_5xx_is_retried_with_growing_backoff(server: LocalHttpServer) -> None:
    server.route(
        "/api",
        _replies(Reply(503, b"busy"), Reply(502, b"bad gateway"), Reply.json({"ok": True})),
    )
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=4, backoff_base_s=1.0, backoff_max_s=30.0)
    http = HttpClient("openverse", retry=policy, sleep=waits.append)

    assert http.get_json(server.url("/api")) == {"ok": True}
    assert len(waits) == 2
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0  # doubling, with jitter


def test_timeout_is_retried_then_raises(server: LocalHttpServer) -> None:
    server.route("/v1/images/", Reply(200, b"{}", delay_s=1.5))
    http = HttpClient("openverse", timeout_s=0.2, retry=_fast_retries(max_attempts=2))
    openverse = Openverse(endpoint=server.base_url, http=http)

    with pytest.raises(SourceError) as caught:
        list(openverse.search("mountain", 5))

    assert caught.value.reason is FailureReason.TIMEOUT
    assert caught.value.attempts == 2
    assert caught.value.provider == "openverse"
    assert len(server.requests_to("/v1/images/")) == 2


def test_bad_json_names_the_provider_and_is_not_retried(server: LocalHttpServer) -> None:
    server.route(
        "/v1/images/",
        Reply(200, b"<html>maintenance</html>", headers={"Content-Type": "text/html"}),
    )
    openverse = Openverse(endpoint=server.base_url, http=HttpClient("openverse"))

    with pytest.raises(SourceError) as caught:
        list(openverse.search("mountain", 5))

    assert caught.value.reason is FailureReason.BAD_JSON
    assert str(caught.value).startswith("openverse:")
    assert server.base_url in caught.value.url
    assert len(server.requests_to("/v1/images/")) == 1


def test_unexpected_shape_is_a_source_error(server: LocalHttpServer) -> None:
    server.route("/v1/images/", Reply.json({"results": "not a list"}))
    openverse = Openverse(endpoint=server.base_url, http=HttpClient("openverse"))

    with pytest.raises(SourceError) as caught:
        list(openverse.search("mountain", 5))

    assert caught.value.reason is FailureReason.UNEXPECTED_SHAPE
    assert "'results'" in caught.value.message


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_not_retried(server: LocalHttpServer, status: int) -> None:
    body = {"error": {"code": str(status), "message": "Access denied."}}
    server.route("/v7.0/images/search", Reply.json(body, status=status))
    waits: list[float] = []
    http = HttpClient("bing", retry=_fast_retries(max_attempts=5), sleep=waits.append)
    bing = BingImageSearchV7("wrong-key", endpoint=server.url("/v7.0"), http=http)

    with pytest.raises(SourceAuthError) as caught:
        list(bing.search("snow leopard", 10))

    assert caught.value.status == status
    assert caught.value.reason is FailureReason.AUTH
    assert len(server.requests_to("/v7.0/images/search")) == 1
    assert waits == []
    assert server.requests[0].headers["Ocp-Apim-Subscription-Key"] == "wrong-key"


def test_404_is_not_retried(server: LocalHttpServer) -> None:
    http = HttpClient("bing", retry=_fast_retries())
    with pytest.raises(SourceError) as caught:
        http.get_json(server.url("/nowhere"))
    assert caught.value.status == 404
    assert len(server.requests) == 1


@pytest.mark.parametrize("send_length", [True, False])
def test_body_over_max_bytes_is_refused(server: LocalHttpServer, send_length: bool) -> None:
    server.route("/big", Reply(200, b"x" * 300_000, send_length=send_length))
    http = HttpClient("download", retry=_fast_retries())

    with pytest.raises(SourceError) as caught:
        http.get(server.url("/big"), max_bytes=100_000)

    assert caught.value.reason is FailureReason.TOO_LARGE
    assert len(server.requests) == 1


def test_disallowed_content_type_is_refused_before_the_body(server: LocalHttpServer) -> None:
    server.route("/page", Reply(200, b"<html></html>", headers={"Content-Type": "text/html"}))
    http = HttpClient("download")
    with pytest.raises(SourceError) as caught:
        http.get(server.url("/page"), allowed_content_types=["image/"])
    assert caught.value.reason is FailureReason.CONTENT_TYPE


def test_connection_refused_is_retried_then_raises() -> None:
    with LocalHttpServer() as gone:
        url = gone.url("/api")
    waits: list[float] = []
    http = HttpClient("bing", retry=_fast_retries(max_attempts=3), sleep=waits.append)
    with pytest.raises(SourceError) as caught:
        http.get_json(url)
    assert caught.value.reason is FailureReason.CONNECTION
    assert caught.value.attempts == 3 and len(waits) == 2


def test_min_interval_spaces_requests(server: LocalHttpServer) -> None:
    server.route("/api", Reply.json({}))
    waits: list[float] = []
    http = HttpClient("inaturalist", min_interval_s=0.5, sleep=waits.append)
    http.get_json(server.url("/api"))
    http.get_json(server.url("/api"))
    assert len(waits) == 1 and 0.3 < waits[0] <= 0.5


def test_redirects_are_followed_to_http_only(server: LocalHttpServer) -> None:
    server.route("/moved", Reply(302, headers={"Location": "/api"}))
    server.route("/api", Reply.json({"here": True}))
    server.route("/sneaky", Reply(302, headers={"Location": "ftp://127.0.0.1/etc/passwd"}))
    http = HttpClient("download", retry=_fast_retries())

    assert http.get_json(server.url("/moved")) == {"here": True}
    with pytest.raises(SourceError) as caught:
        http.get(server.url("/sneaky"))
    assert caught.value.status == 302 and "non-http" in caught.value.message


def test_openverse_refuses_anonymous_pages_over_20() -> None:
    with pytest.raises(ValueError, match="at most 20"):
        Openverse(page_size=50)
    assert Openverse(page_size=50, token="t").page_size == 50
