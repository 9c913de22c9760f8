"""The one HTTP client every provider and the image downloader share: `requests`, plus a policy.

Transport is `requests` (connection pooling, redirects, proxies from the environment, streamed
bodies, connect/read timeouts). The retry *policy* stays here rather than in urllib3's `Retry`
because it does three things `Retry` does not: it refuses a 429 whose `Retry-After` exceeds
`max_retry_after_s` (urllib3 would sleep for an hour), it reports every failure as a
`SourceError` with the provider, reason and attempt count the gather log records, and its
sleep is injectable (tests observe waits without waiting). Providers expose a plain
`Iterator` and the pipeline around them is synchronous, so threads (one `requests.Session`
per thread) rather than an event loop.

What it guarantees:

- every attempt has a connect/read timeout (`timeout_s`, per blocking read) and a wall-clock
  `deadline_s` for the whole body, so a server that drips bytes cannot hold a worker forever;
- 5xx, 408, connection errors and timeouts are retried with exponential backoff and jitter;
- 429 waits for `Retry-After` (seconds or an HTTP date) before retrying, and gives up at once
  with `rate_limited` when the server asks for a longer wait than `max_retry_after_s`;
- 401/403 raise `SourceAuthError` after one request (a wrong key stays wrong);
- bodies are streamed in chunks and abandoned past `max_bytes` (checked against
  Content-Length first, when the server sends one);
- redirects are followed to http(s) URLs only;
- requests to loopback addresses bypass any proxy from the environment.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
import urllib3.exceptions

from snowtrap.training.sources.base import FailureReason, SourceAuthError, SourceError

__all__ = [
    "DEFAULT_USER_AGENT",
    "HttpClient",
    "HttpResponse",
    "RetryPolicy",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "snowtrap-gather/0.1 (camera-trap research; training-data collection)"
JSON_MAX_BYTES = 16 * 1024 * 1024
_CHUNK = 64 * 1024
_RETRYABLE_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; attempts count the first request too."""

    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 300.0

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay after failed attempt number `attempt` (1-based): doubling, capped, jittered.

        Jitter (50-100% of the step) keeps parallel workers from retrying in lockstep.
        """
        step = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return step * (0.5 + 0.5 * (rng or random).random())


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True)
class HttpResponse:
    """A successful (2xx) response; `url` is the final URL after redirects."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        """Media type without parameters, lower case ('' when the server sent none)."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying."""

    def __init__(
        self, reason: FailureReason, message: str, status: int | None, wait_s: float | None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.wait_s = wait_s


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").strip().replace("\n", " ")
    return text + ("..." if len(body) > limit else "")


class _NonWebRedirect(Exception):
    """Internal: a redirect pointed at something other than http(s) (ftp:, file:, ...)."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"HTTP {status}: redirect to a non-http(s) URL {location!r}")
        self.status = status


def _web_only_redirects(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Response hook: runs on every hop, before `requests` follows the redirect."""
    if response.is_redirect:
        location = urllib.parse.urljoin(response.url, response.headers.get("Location", ""))
        if urllib.parse.urlsplit(location).scheme.lower() not in ("http", "https"):
            response.close()
            raise _NonWebRedirect(response.status_code, location)


class HttpClient:
    """GET with timeouts, retries and rate-limit handling for one provider (thread-safe).

    `min_interval_s` spaces requests out (iNaturalist asks for about one per second);
    `sleep` is injectable so callers can observe waits.
    """

    def __init__(
        self,
        provider: str,
        *,
        timeout_s: float = 20.0,
        deadline_s: float = 120.0,
        retry: RetryPolicy | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        min_interval_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if timeout_s <= 0 or deadline_s <= 0:
            raise ValueError("timeout_s and deadline_s must be positive")
        self.provider = provider
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.retry = retry or RetryPolicy()
        self.user_agent = user_agent
        self.min_interval_s = min_interval_s
        self._sleep = sleep
        self._rng = random.Random()
        self._turn_lock = threading.Lock()
        self._next_turn = 0.0
        self._local = threading.local()

    def _session(self) -> requests.Session:
        """One pooled session per thread (`requests.Session` is not documented thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            session.hooks["response"].append(_web_only_redirects)
            self._local.session = session
        return session

    def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """GET and parse JSON; a body that is not JSON raises `SourceError(bad_json)`."""
        merged = {"Accept": "application/json", **(headers or {})}
        response = self.get(url, params=params, headers=merged, max_bytes=JSON_MAX_BYTES)
        try:
            return json.loads(response.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(
                self.provider,
                response.url,
                FailureReason.BAD_JSON,
                f"response is not JSON ({exc}); starts with {_snippet(response.body, 80)!r}",
                status=response.status,
            ) from exc

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = JSON_MAX_BYTES,
        allowed_content_types: Sequence[str] | None = None,
    ) -> HttpResponse:
        """GET with retries. `allowed_content_types` are prefixes ('image/'); a response whose
        Content-Type matches none is refused before its body is read (a missing header passes:
        the caller sniffs the bytes anyway)."""
        full_url = self._prepare_url(url, params)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(full_url, headers or {}, max_bytes, allowed_content_types)
            except _Retry as failure:
                out_of_attempts = attempt >= self.retry.max_attempts
                too_long = (
                    failure.wait_s is not None and failure.wait_s > self.retry.max_retry_after_s
                )
                if out_of_attempts or too_long:
                    detail = failure.message
                    if too_long:
                        detail += f"; server asks to wait {failure.wait_s:.0f} s, more than "
                        detail += f"max_retry_after_s={self.retry.max_retry_after_s:.0f}"
                    raise SourceError(
                        self.provider,
                        full_url,
                        failure.reason,
                        f"{detail} (after {attempt} attempt{'s' if attempt > 1 else ''})",
                        status=failure.status,
                        attempts=attempt,
                    ) from None
                wait_s = failure.wait_s
                if wait_s is None:
                    wait_s = self.retry.backoff_s(attempt, self._rng)
                log.info(
                    "%s: %s on %s; retry %d/%d in %.1f s",
                    self.provider,
                    failure.message,
                    full_url,
                    attempt + 1,
                    self.retry.max_attempts,
                    wait_s,
                )
                self._sleep(wait_s)

    def _prepare_url(self, url: str, params: Mapping[str, Any] | None) -> str:
        """The URL as it goes on the wire: query parameters (None dropped) and quoting."""
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise SourceError(self.provider, url, FailureReason.BAD_URL, "not an http(s) URL")
        try:
            prepared = requests.Request("GET", url, params=dict(params or {})).prepare()
        except (requests.exceptions.RequestException, ValueError) as exc:
            raise SourceError(self.provider, url, FailureReason.BAD_URL, str(exc)) from None
        return str(prepared.url)

    def _wait_turn(self) -> None:
        if self.min_interval_s <= 0:
            return
        with self._turn_lock:
            now = time.monotonic()
            start = max(now, self._next_turn)
            self._next_turn = start + self.min_interval_s
        if start > now:
            self._sleep(start - now)

    def _attempt(
        self,
        url: str,
        headers: Mapping[str, str],
        max_bytes: int,
        allowed_content_types: Sequence[str] | None,
    ) -> HttpResponse:
        self._wait_turn()
        # {"http": None, ...} overrides the environment's proxies for this request only.
        proxies = {"http": None, "https": None} if _is_loopback(url) else None
        started = time.monotonic()
        try:
            with self._session().get(
                url,
                headers=dict(headers),
                timeout=(self.timeout_s, self.timeout_s),
                stream=True,
                proxies=proxies,
            ) as response:
                if response.status_code >= 400:
                    raise self._http_failure(url, response)
                self._check_headers(
                    response.url, response.headers, max_bytes, allowed_content_types
                )
                body = self._read_body(response, max_bytes, started)
                return HttpResponse(response.url, response.status_code, response.headers, body)
        except _NonWebRedirect as exc:
            raise SourceError(
                self.provider, url, FailureReason.HTTP_STATUS, str(exc), status=exc.status
            ) from None
        except requests.Timeout:
            raise _Retry(FailureReason.TIMEOUT, "timed out", None, None) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
            raise SourceError(self.provider, url, FailureReason.BAD_URL, str(exc)) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if _is_read_timeout(exc):
                raise _Retry(FailureReason.TIMEOUT, "timed out", None, None) from None
            message = f"{type(exc).__name__}: {exc}"
            raise _Retry(FailureReason.CONNECTION, message, None, None) from None

    def _check_headers(
        self,
        url: str,
        headers: Mapping[str, str],
        max_bytes: int,
        allowed_content_types: Sequence[str] | None,
    ) -> None:
        length = headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > max_bytes:
            raise SourceError(
                self.provider,
                url,
                FailureReason.TOO_LARGE,
                f"Content-Length {int(length)} exceeds the limit of {max_bytes} bytes",
            )
        if allowed_content_types is not None:
            media_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media_type and not media_type.startswith(tuple(allowed_content_types)):
                raise SourceError(
                    self.provider,
                    url,
                    FailureReason.CONTENT_TYPE,
                    f"Content-Type {media_type!r} is not one of {list(allowed_content_types)}",
                )

    def _read_body(self, response: requests.Response, max_bytes: int, started: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(_CHUNK):
            if time.monotonic() - started > self.deadline_s:
                raise _Retry(
                    FailureReason.TIMEOUT,
                    f"body not complete within deadline_s={self.deadline_s}",
                    None,
                    None,
                )
            size += len(chunk)
            if size > max_bytes:
                raise SourceError(
                    self.provider,
                    response.url,
                    FailureReason.TOO_LARGE,
                    f"body exceeds the limit of {max_bytes} bytes",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _http_failure(self, url: str, response: requests.Response) -> Exception:
        status = response.status_code
        try:
            body = response.raw.read(4096, decode_content=True) or b""
        except (OSError, requests.RequestException, urllib3.exceptions.HTTPError):
            body = b""
        detail = f"HTTP {status} {response.reason or ''}".rstrip()
        detail += f": {_snippet(body)}" if body else ""
        if status in (401, 403):
            return SourceAuthError(
                self.provider,
                url,
                FailureReason.AUTH,
                detail + " (check the key/token)",
                status=status,
            )
        if status == 429:
            wait_s = parse_retry_after(response.headers.get("Retry-After"))
            return _Retry(FailureReason.RATE_LIMITED, detail, status, wait_s)
        if status >= 500 or status in _RETRYABLE_4XX:
            return _Retry(FailureReason.HTTP_STATUS, detail, status, None)
        return SourceError(self.provider, url, FailureReason.HTTP_STATUS, detail, status=status)


def _is_read_timeout(exc: BaseException) -> bool:
    """`requests` reports a read timeout while streaming the body as a ConnectionError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.NewConnectionError):
            return False  # a subclass of ConnectTimeoutError, but "refused" is not a timeout
        if isinstance(current, (TimeoutError, urllib3.exceptions.ReadTimeoutError)):
            return True
        inner = getattr(current, "reason", None) or (current.args[0] if current.args else None)
        current = inner if isinstance(inner, BaseException) else current.__context__
    return False
