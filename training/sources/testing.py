"""A real HTTP server on 127.0.0.1 that replays provider responses (tests, offline demos).

Nothing in this project may reach the internet from a test, yet the providers must be
exercised over real sockets: timeouts, 429s, truncated bodies and redirects only happen on a
wire. `LocalHttpServer` runs `http.server` in a background thread; each route maps a path to
a function of the recorded request that returns a `Reply`, and every request is recorded so
tests can assert what the client sent and how often.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "LocalHttpServer",
    "RecordedRequest",
    "Reply",
    "bing_item",
    "bing_v7_route",
    "inaturalist_observation",
    "inaturalist_observations_route",
    "inaturalist_taxa_route",
    "openverse_item",
    "openverse_route",
    "pattern_image",
]


@dataclass(frozen=True)
class RecordedRequest:
    """What the client sent; `query` keeps the last value of each parameter."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


@dataclass(frozen=True)
class Reply:
    """What to answer. `delay_s` sleeps before the status line (to provoke timeouts);
    `send_length=False` omits Content-Length and ends the body by closing the connection."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    send_length: bool = True

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        """A JSON body with the right Content-Type."""
        return cls(
            status=status,
            body=json.dumps(data).encode(),
            headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
        )


Route = Callable[[RecordedRequest], Reply]


class LocalHttpServer:
    """`with LocalHttpServer() as server: server.route("/x", fn); ... server.url("/x")`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._routes: dict[str, Route] = {}
        self._prefix_routes: list[tuple[str, Route]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, path: str, handler: Route | Reply, *, prefix: bool = False) -> None:
        """Answer GETs to `path` (or every path under it when `prefix`)."""
        fn: Route = (lambda _request: handler) if isinstance(handler, Reply) else handler
        with self._lock:
            if prefix:
                self._prefix_routes.append((path, fn))
                self._prefix_routes.sort(key=lambda item: -len(item[0]))
            else:
                self._routes[path] = fn

    def requests_to(self, path: str, *, prefix: bool = False) -> list[RecordedRequest]:
        """Requests received for `path` (or under it), oldest first."""
        with self._lock:
            return [
                r for r in self.requests if (r.path.startswith(path) if prefix else r.path == path)
            ]

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> LocalHttpServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                recorded = RecordedRequest(
                    method="GET",
                    path=split.path,
                    query=dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
                    headers={key: value for key, value in self.headers.items()},
                    at=time.monotonic(),
                )
                with server._lock:
                    server.requests.append(recorded)
                    route = server._routes.get(split.path) or next(
                        (fn for p, fn in server._prefix_routes if split.path.startswith(p)), None
                    )
                try:
                    reply = route(recorded) if route else Reply(404, b"not found")
                except Exception as exc:  # a broken test route must answer, not hang
                    reply = Reply(500, f"route failed: {exc!r}".encode())
                try:
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    if reply.send_length:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (that is what timeout tests provoke)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="local-http-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalHttpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# images and provider-shaped responses


def pattern_image(
    seed: int, size: tuple[int, int] = (96, 64), fmt: str = "PNG", quality: int = 90
) -> bytes:
    """A smooth random colour pattern: distinct perceptual hashes per seed, stable under
    re-encoding and resizing (as web copies of one photo are)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
    image = coarse.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def bing_item(content_url: str, index: int, width: int = 96, height: int = 64) -> dict[str, Any]:
    """One entry of a Bing v7 `Images.value` array."""
    return {
        "webSearchUrl": f"https://www.bing.com/images/search?id={index}",
        "name": f"result {index}",
        "thumbnailUrl": f"https://tse1.mm.bing.net/th?id=OIP.{index}",
        "datePublished": "2024-01-01T00:00:00.0000000Z",
        "contentUrl": content_url,
        "hostPageUrl": f"https://example.org/page/{index}",
        "contentSize": "12345 B",
        "encodingFormat": "jpeg",
        "hostPageDisplayUrl": f"example.org/page/{index}",
        "width": width,
        "height": height,
        "thumbnail": {"width": 300, "height": 200},
        "imageInsightsToken": f"ccid_{index}",
        "imageId": f"IMG{index:06d}",
        "accentColor": "7A6B5C",
    }


def bing_v7_route(
    results_by_query: dict[str, list[dict[str, Any]]],
    *,
    api_key: str | None = None,
    total_estimated: int | None = None,
) -> Route:
    """GET /images/search as a v7 service answers it (count/offset paging, key header)."""

    def handle(request: RecordedRequest) -> Reply:
        if api_key is not None and request.headers.get("Ocp-Apim-Subscription-Key") != api_key:
            error = {"code": "401", "message": "Access denied due to invalid subscription key."}
            return Reply.json({"error": error}, status=401)
        items = results_by_query.get(request.query.get("q", ""), [])
        count = int(request.query.get("count", "35"))
        offset = int(request.query.get("offset", "0"))
        page = items[offset : offset + count]
        return Reply.json(
            {
                "_type": "Images",
                "instrumentation": {"_type": "ResponseInstrumentation"},
                "readLink": "images/search?q=" + urllib.parse.quote(request.query.get("q", "")),
                "webSearchUrl": "https://www.bing.com/images/search",
                "totalEstimatedMatches": (
                    len(items) if total_estimated is None else total_estimated
                ),
                "nextOffset": offset + len(page),
                "value": page,
            }
        )

    return handle


def openverse_item(url: str, index: int, width: int = 96, height: int = 64) -> dict[str, Any]:
    """One entry of an Openverse `/v1/images/` `results` array."""
    identifier = f"00000000-0000-4000-8000-{index:012d}"
    return {
        "id": identifier,
        "title": f"Photo {index}",
        "indexed_on": "2024-01-01T00:00:00Z",
        "foreign_landing_url": f"https://www.flickr.com/photos/someone/{index}",
        "url": url,
        "creator": f"Photographer {index}",
        "creator_url": f"https://www.flickr.com/photos/someone{index}",
        "license": "by-sa",
        "license_version": "2.0",
        "license_url": "https://creativecommons.org/licenses/by-sa/2.0/",
        "provider": "flickr",
        "source": "flickr",
        "category": "photograph",
        "filesize": 12345,
        "filetype": "jpg",
        "tags": [{"name": "mountain", "accuracy": None}],
        "attribution": f'"Photo {index}" by Photographer {index} is licensed under CC BY-SA 2.0.',
        "fields_matched": ["title"],
        "mature": False,
        "height": height,
        "width": width,
        "thumbnail": f"https://api.openverse.org/v1/images/{identifier}/thumb/",
        "detail_url": f"https://api.openverse.org/v1/images/{identifier}/",
        "related_url": f"https://api.openverse.org/v1/images/{identifier}/related/",
        "unstable__sensitivity": [],
    }


def openverse_route(
    results_by_query: dict[str, list[dict[str, Any]]], *, token: str | None = None
) -> Route:
    """GET /v1/images/ as Openverse answers it (page/page_size, optional bearer token)."""

    def handle(request: RecordedRequest) -> Reply:
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return Reply.json({"detail": "Invalid token."}, status=401)
        items = results_by_query.get(request.query.get("q", ""), [])
        page_size = int(request.query.get("page_size", "20"))
        page = int(request.query.get("page", "1"))
        chunk = items[(page - 1) * page_size : page * page_size]
        return Reply.json(
            {
                "result_count": len(items),
                "page_count": max(1, math.ceil(len(items) / page_size)),
                "page_size": page_size,
                "page": page,
                "results": chunk,
                "warnings": [],
            }
        )

    return handle


def inaturalist_observation(
    observation_id: int,
    photo_urls: list[str],
    *,
    taxon: tuple[int, str, str] = (1, "Panthera uncia", "Snow Leopard"),
    license_code: str | None = "cc-by-nc",
    original: tuple[int, int] = (2048, 1365),
) -> dict[str, Any]:
    """One entry of `/v1/observations` `results`; photo URLs are the 'square' ones."""
    taxon_id, name, common = taxon
    photos = [
        {
            "id": observation_id * 10 + i,
            "license_code": license_code,
            "url": url,
            "attribution": f"(c) Observer {observation_id}, some rights reserved (CC BY-NC)",
            "original_dimensions": {"width": original[0], "height": original[1]},
            "flags": [],
        }
        for i, url in enumerate(photo_urls)
    ]
    return {
        "id": observation_id,
        "uri": f"https://www.inaturalist.org/observations/{observation_id}",
        "quality_grade": "research",
        "observed_on": "2023-03-01",
        "license_code": license_code,
        "taxon": {"id": taxon_id, "name": name, "rank": "species", "preferred_common_name": common},
        "user": {"id": observation_id, "login": f"observer{observation_id}", "name": None},
        "photos": photos,
    }


def inaturalist_taxa_route(taxa: list[tuple[int, str, str]]) -> Route:
    """GET /v1/taxa?q= : (id, scientific name, common name) entries containing q."""

    def handle(request: RecordedRequest) -> Reply:
        q = request.query.get("q", "").lower()
        results = [
            {
                "id": taxon_id,
                "name": name,
                "rank": "species",
                "preferred_common_name": common,
                "matched_term": name,
                "is_active": True,
            }
            for taxon_id, name, common in taxa
            if q in name.lower() or q in common.lower()
        ]
        return Reply.json(
            {"total_results": len(results), "page": 1, "per_page": 30, "results": results}
        )

    return handle


def inaturalist_observations_route(observations: dict[int, list[dict[str, Any]]]) -> Route:
    """GET /v1/observations by taxon_id, id order, `id_above` paging, `total_results` left."""

    def handle(request: RecordedRequest) -> Reply:
        items = sorted(
            observations.get(int(request.query.get("taxon_id", "0")), []), key=lambda o: o["id"]
        )
        id_above = int(request.query.get("id_above", "0"))
        per_page = int(request.query.get("per_page", "30"))
        remaining = [item for item in items if item["id"] > id_above]
        return Reply.json(
            {
                "total_results": len(remaining),
                "page": 1,
                "per_page": per_page,
                "results": remaining[:per_page],
            }
        )

    return handle
