"""The web side of the page: a Starlette app over `LiveState`.

- `/`               the page (static HTML, its links carrying the path prefix)
- `/static/NAME`    its one script and one stylesheet, served by the app itself (no CDN)
- `/events`         server-sent events: the whole state on connect, again on every change
- `/api/snapshot`   the same state as one JSON document
- `/crops/ID.jpg`   a crop's JPEG, from memory, while it is among the newest
- `/healthz`        200 with the Kafka status

Every route answers under `root_path` (a proxy that passes the prefix through) and without it
(a proxy that strips it); the links the page holds always carry the prefix.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from snowtrap.stream.live.settings import LiveSettings
from snowtrap.stream.live.state import LiveState

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
}
"""The only files `/static/` serves: no path from the request ever reaches the file system."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Nothing from another origin, no inline script: what the browser enforces on the page."""


def render_page(root_path: str) -> str:
    """index.html with the path prefix written into its links (HTML-escaped)."""
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return template.replace("{{root}}", html.escape(root_path, quote=True))


def sse_event(name: str, data: object) -> str:
    """One server-sent event; JSON has no raw newlines, so it fits one `data:` line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def build_app(settings: LiveSettings, state: LiveState) -> Starlette:
    """The page's app; `state` is filled by a `TopicFollower` (or by a test)."""
    root = settings.live.root_path
    page = render_page(root)
    static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={**headers, "Cache-Control": "no-cache"})

    async def to_index(request: Request) -> Response:
        return RedirectResponse(f"{root}/", status_code=308)

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return Response(static[name], media_type=STATIC_FILES[name], headers=headers)

    async def snapshot(request: Request) -> Response:
        return JSONResponse(state.snapshot(root), headers={"Cache-Control": "no-store"})

    async def crop(request: Request) -> Response:
        jpeg = state.crop_jpeg(request.path_params["crop_id"])
        if jpeg is None:
            return Response("crop not kept any more\n", status_code=404, media_type="text/plain")
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse(state.snapshot(root)["kafka"])

    async def events(request: Request) -> Response:
        return StreamingResponse(
            _event_stream(state, settings),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    routes: list[Route] = []
    for prefix in dict.fromkeys([root, ""]):
        routes += [
            Route(f"{prefix}/", index),
            Route(prefix + "/static/{name}", static_file),
            Route(f"{prefix}/events", events),
            Route(f"{prefix}/api/snapshot", snapshot),
            Route(prefix + "/crops/{crop_id}.jpg", crop),
            Route(f"{prefix}/healthz", healthz),
        ]
    if root:
        routes.append(Route(root, to_index))
    return Starlette(routes=routes)


async def _event_stream(state: LiveState, settings: LiveSettings) -> AsyncIterator[str]:
    """The state on connect, then whenever it changed (at most every `push_interval_s`), and
    at least every `keepalive_s` (which also lets counts age out of the window)."""
    sent_version = -1
    sent_at = 0.0
    while True:
        now = time.monotonic()
        if state.version != sent_version or now - sent_at >= settings.live.keepalive_s:
            data = state.snapshot(settings.live.root_path)
            yield sse_event("snapshot", data)
            sent_version, sent_at = data["version"], now
        await asyncio.sleep(settings.live.push_interval_s)
