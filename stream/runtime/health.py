"""A stream process's HTTP side: `/metrics`, `/healthz` and `/readyz` on the metrics port.

A small aiohttp server on the process's own event loop (one process, one loop): if the loop
stalls, the probes stall with it, which is what a liveness probe should see. Faust's own web
server stays off; it would expose table and router views nobody here needs.

- `/healthz` (liveness): 200 while the event loop ticks and the process has not crashed.
- `/readyz` (readiness): 200 once what the process serves is loaded (the worker's model
  bundle, the matcher's individual database: `bundle_loaded`) and the consumer holds an
  assignment (possibly empty: a replica beyond the partition count is ready, just idle).
- `/metrics`: the process's Prometheus registry in text format.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


@dataclass
class ProcessHealth:
    """What the probes report; written by the process, read by the HTTP handlers."""

    bundle_loaded: bool = False
    assigned: bool = False
    partitions: int = 0
    partition_ids: list[int] = field(default_factory=list)
    """The consumed topic's partitions this process holds (what stalls if it dies)."""
    last_tick: float = field(default_factory=time.monotonic)
    fatal_error: str | None = None

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def alive(self, stall_s: float) -> bool:
        return self.fatal_error is None and time.monotonic() - self.last_tick < stall_s

    @property
    def ready(self) -> bool:
        return self.bundle_loaded and self.assigned and self.fatal_error is None


class HealthServer(Service):
    """Serves the probes and metrics; started and stopped with the Faust worker."""

    def __init__(
        self,
        health: ProcessHealth,
        registry: CollectorRegistry,
        host: str,
        port: int,
        stall_s: float,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.health = health
        self.registry = registry
        self.host = host
        self.port = port
        self.stall_s = stall_s
        self._runner: web.AppRunner | None = None

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.web_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info(
            "metrics and probes on http://%s:%d (/metrics /healthz /readyz)", self.host, self.port
        )

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @Service.timer(1.0)
    async def _tick(self) -> None:
        """The liveness heartbeat: runs only while the event loop does."""
        self.health.tick()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        if self.health.alive(self.stall_s):
            return web.json_response({"status": "alive"})
        return web.json_response(
            {"status": "failing", "error": self.health.fatal_error}, status=503
        )

    async def _readyz(self, _: web.Request) -> web.Response:
        body = {
            "bundle_loaded": self.health.bundle_loaded,
            "assigned": self.health.assigned,
            "partitions": self.health.partitions,
            "partition_ids": self.health.partition_ids,
        }
        return web.json_response(body, status=200 if self.health.ready else 503)
