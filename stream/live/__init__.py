"""The live sightings page (`snowtrap live`): detections, crops and identities, pushed live.

A web page for the people watching a survey: the newest leopard crops with camera, time,
score and individual, per-camera counts over the last 24 h, and dead-letter counts by reason,
updated in the browser by server-sent events as the stream processors publish. Everything
(HTML, one script, one stylesheet, the crops) is served by the process itself; it works behind
a path prefix (`root_path`).

Modules: `settings` (what it reads), `window` (counts over a sliding window), `sightings`
(crops joined with detections and identities), `state` (everything the page shows, fed one
record at a time), `follower` (the Kafka thread), `app` (the Starlette routes and the event
stream), `server` (all of it started together), `cli` (the command); `static/` holds the page.
"""

from snowtrap.stream.live.app import build_app
from snowtrap.stream.live.server import LiveServer
from snowtrap.stream.live.settings import LiveSettings
from snowtrap.stream.live.state import LiveState

__all__ = ["LiveServer", "LiveSettings", "LiveState", "build_app"]
