"""`snowtrap serve` under pressure and at its edges: bodies refused before they are read whole,
a full queue answered 503 with Retry-After, the API key, readiness while the bundle loads and
when it cannot load, the path prefix, the batcher itself, and the command as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers.bundle import test_bundle
from helpers.frames import make_frame
from helpers.live_processes import SNOWTRAP, metric_sum
from helpers.serve import raw_exchange, running_server, status_of, wait_ready

from snowtrap.stream.serve.app import load_detector
from snowtrap.stream.serve.batching import DynamicBatcher, QueueFull
from snowtrap.stream.serve.cli import ADDRESS_LINE
from snowtrap.stream.serve.detection import Detector
from snowtrap.stream.serve.server import ServeServer
from snowtrap.stream.serve.settings import ServeSettings

MiB = 1024 * 1024
KEY = "s3cret-key"
FRAME = make_frame(5, leopard=True, night=False)  # 640 x 480
BIG_FRAME = make_frame(5, leopard=False, night=False, size=(1280, 960))


@pytest.fixture(scope="module")
def tight() -> Iterator[ServeServer]:
    """Batches of one, a queue of one, a 1 MiB body, 1 MP images, an API key, a prefix."""
    settings = ServeSettings(
        bundle_dir=test_bundle("detector"),
        port=0,
        inference_threads=1,
        max_batch=1,
        max_wait_ms=0,
        queue_size=1,
        max_body_bytes=MiB,
        max_image_pixels=1_000_000,
        max_images_per_request=2,
        api_key=KEY,
        root_path="/detector",
    )
    with running_server(settings) as running:
        yield running


def keyed(server: ServeServer, **kwargs: object) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60, **kwargs)


def head(port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_50_mb_content_length_is_refused_before_the_body_is_read():
    settings = ServeSettings(bundle_dir=test_bundle("detector"), port=0, inference_threads=1)
    assert settings.max_body_bytes < 50_000_000  # the defaults refuse it
    with running_server(settings) as server:
        request = head(server.port, "/v1/detect", {"Content-Type": "image/jpeg",
                                                   "Content-Length": "50000000"})  # fmt: skip
        # Only 64 KiB of the promised 50 MB ever leave: an answer proves it was not awaited.
        answer, sent = raw_exchange(server.port, request, iter([b"\xff" * 4096] * 16))

    assert status_of(answer) == 413, answer[:300]
    assert b'"reason":"too_large_bytes"' in answer
    assert sent <= 64 * 1024


def test_a_chunked_body_is_counted_and_refused_once_over_the_limit(tight: ServeServer):
    request = head(tight.port, "/detector/v1/detect", {"Content-Type": "image/jpeg",
                   "Transfer-Encoding": "chunked", "X-API-Key": KEY})  # fmt: skip
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"\x00" * 64 * 1024)
    # 8 MiB offered, never terminated: the answer must come after about 1 MiB.
    answer, sent = raw_exchange(tight.port, request, iter([chunk] * 128))

    assert status_of(answer) == 413, answer[:300]
    assert b'"reason":"too_large_bytes"' in answer
    assert sent < 8 * MiB


def test_too_many_pixels_and_too_many_images_are_413(tight: ServeServer):
    with keyed(tight) as client:
        pixels = client.post("/v1/detect", content=BIG_FRAME.jpeg)
        files = [("images", (f"{i}.jpg", FRAME.jpeg, "image/jpeg")) for i in range(3)]
        images = client.post("/v1/detect", files=files)

    assert pixels.status_code == 413
    assert pixels.json()["error"]["reason"] == "too_many_pixels"
    assert images.status_code == 413
    assert images.json()["error"]["reason"] == "too_many_images"


def test_a_full_queue_answers_503_with_retry_after(tight: ServeServer):
    with keyed(tight) as client:
        # Two images never fit a queue of one.
        files = [("images", (f"{i}.jpg", FRAME.jpeg, "image/jpeg")) for i in range(2)]
        too_big = client.post("/v1/detect", files=files)
        # A burst of single images: some are served, the rest told to come back.
        with ThreadPoolExecutor(16) as pool:
            burst = list(pool.map(lambda _: client.post("/v1/detect", content=FRAME.jpeg),
                                  range(32)))  # fmt: skip

    assert too_big.status_code == 503 and too_big.headers["Retry-After"] == "1"
    assert too_big.json()["error"]["reason"] == "queue_full"
    statuses = [response.status_code for response in burst]
    assert set(statuses) == {200, 503}, statuses
    for response in burst:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["error"]["reason"] == "queue_full"
        else:
            assert len(response.json()["images"][0]["detections"]) == 1


def test_the_api_key_is_required_on_detect_only(tight: ServeServer):
    url = f"{tight.url}/v1/detect"
    missing = httpx.post(url, content=FRAME.jpeg)
    wrong = httpx.post(url, content=FRAME.jpeg, headers={"X-API-Key": "guess"})
    bearer = httpx.post(url, content=FRAME.jpeg, headers={"Authorization": f"Bearer {KEY}"},
                        timeout=60)  # fmt: skip

    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["reason"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert bearer.status_code == 200
    for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(tight.url + probe).status_code == 200, probe


def test_every_route_answers_with_and_without_the_prefix(tight: ServeServer):
    base = f"http://127.0.0.1:{tight.port}"
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(f"{base}/detector{path}").status_code == 200, path
        assert httpx.get(f"{base}{path}").status_code == 200, path
    assert httpx.get(f"{base}/openapi.json").json()["servers"] == [{"url": "/detector"}]


def test_ready_only_once_the_bundle_is_loaded():
    release = threading.Event()

    def slow_loader(settings: ServeSettings):
        release.wait(60)
        return load_detector(settings)

    settings = ServeSettings(bundle_dir=test_bundle("classifier"), port=0, inference_threads=1)
    with ServeServer(settings, loader=slow_loader) as server:
        loading = httpx.get(f"{server.url}/readyz")
        alive = httpx.get(f"{server.url}/healthz")
        early = httpx.post(f"{server.url}/v1/detect", content=FRAME.jpeg)
        release.set()
        wait_ready(server.url)
        served = httpx.post(f"{server.url}/v1/detect", content=FRAME.jpeg, timeout=60)

    assert loading.status_code == 503 and loading.json()["ready"] is False
    assert alive.status_code == 200
    assert early.status_code == 503 and early.json()["error"]["reason"] == "not_ready"
    assert early.headers["Retry-After"] == "1"
    assert served.status_code == 200
    (entry,) = served.json()["images"]
    assert entry["detections"] == [] and entry["detector_ran"] is False  # no detector here


def test_a_bundle_that_cannot_load_fails_the_probes(tmp_path: Path):
    settings = ServeSettings(bundle_dir=tmp_path, port=0)
    with ServeServer(settings) as server:
        while (ready := httpx.get(f"{server.url}/readyz")).json()["reason"].startswith("loading"):
            threading.Event().wait(0.05)
        health = httpx.get(f"{server.url}/healthz")

    assert ready.status_code == 503 and "manifest" in ready.json()["reason"]
    assert health.status_code == 500 and "manifest" in health.json()["error"]


def test_the_batcher_batches_concurrent_items_in_order_and_refuses_what_does_not_fit():
    batches: list[list[int]] = []

    def double(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [2 * item for item in items]

    async def scenario() -> tuple[list[int], list[int]]:
        batcher = DynamicBatcher[int, int](double, max_batch=3, max_wait_s=0.05, queue_size=7)
        batcher.start()
        first = batcher.submit([1, 2])
        second = batcher.submit([3, 4, 5])
        with pytest.raises(QueueFull):
            batcher.submit([6, 7, 8])  # 5 waiting + 3 > 7: none of them is queued
        gone = batcher.submit([9])
        gone[0].cancel()  # its caller gave up: never run
        results = await asyncio.gather(*first, *second)
        last = await asyncio.gather(*batcher.submit([10]))
        await batcher.stop()
        return results, last

    results, last = asyncio.run(scenario())

    assert results == [2, 4, 6, 8, 10] and last == [20]
    assert batches[:2] == [[1, 2, 3], [4, 5]]
    assert [9] not in batches and all(len(batch) <= 3 for batch in batches)


def test_the_command_serves_until_sigterm(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
    env.update(SNOWTRAP_SERVE_PORT="0", SNOWTRAP_SERVE_INFERENCE_THREADS="1", PYTHONUNBUFFERED="1")
    bundle = str(test_bundle("detector"))
    process = subprocess.Popen([SNOWTRAP, "serve", "--bundle", bundle], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().decode() for _ in range(1)]
        assert lines[0].startswith(ADDRESS_LINE), lines
        url = lines[0].removeprefix(ADDRESS_LINE).strip()
        wait_ready(url)
        response = httpx.post(f"{url}/v1/detect", content=FRAME.jpeg, timeout=60)
        assert response.status_code == 200
        assert len(response.json()["images"][0]["detections"]) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown

    missing = subprocess.run([SNOWTRAP, "serve", "--bundle", str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 3 and "manifest" in missing.stderr
    no_bundle = subprocess.run([SNOWTRAP, "serve"], env=env, capture_output=True, text=True,
                               timeout=60)  # fmt: skip
    assert no_bundle.returncode == 2 and "no model bundle" in no_bundle.stderr


def test_connections_are_tcp_without_nagle(tight: ServeServer):
    """asyncio turns Nagle off only on sockets created as TCP; with it on, every answer after
    the first on a keep-alive connection waits for the client's delayed ACK."""
    assert tight.http.socket.proto == socket.IPPROTO_TCP
    assert tight.http.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    with socket.create_connection(("127.0.0.1", tight.port)) as client:
        for _ in range(3):  # the same keep-alive connection answers each time
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                answer += client.recv(4096)
            assert status_of(answer) == 200


def test_a_request_not_answered_in_time_gets_504_and_the_server_goes_on():
    release = threading.Event()

    class HeldDetector(Detector):
        """The real detector, held until the test lets it run."""

        def run(self, images):  # type: ignore[no-untyped-def]
            release.wait(60)
            return super().run(images)

    def held(settings: ServeSettings) -> Detector:
        loaded = load_detector(settings)
        return HeldDetector(loaded.bundle, loaded.config)

    settings = ServeSettings(
        bundle_dir=test_bundle("classifier"), port=0, inference_threads=1, request_timeout_s=0.5
    )
    with running_server(settings, loader=held) as server:
        late = httpx.post(f"{server.url}/v1/detect", content=FRAME.jpeg, timeout=60)
        release.set()
        served = httpx.post(f"{server.url}/v1/detect", content=FRAME.jpeg, timeout=60)
        metrics = httpx.get(f"{server.url}/metrics").text

    assert late.status_code == 504 and late.json()["error"]["reason"] == "timeout"
    assert served.status_code == 200
    assert metric_sum(metrics, "snowtrap_serve_failures_total", reason="timeout") == 1


def test_a_client_that_hangs_up_mid_body_is_counted_and_the_server_goes_on(tight: ServeServer):
    with socket.create_connection(("127.0.0.1", tight.port)) as client:
        headers = {"Content-Type": "image/jpeg", "Content-Length": "100000", "X-API-Key": KEY}
        client.sendall(head(tight.port, "/v1/detect", headers) + FRAME.jpeg[:1000])
    with keyed(tight) as http:
        for _ in range(100):  # the server notices the hang-up on its own time
            metrics = http.get("/metrics").text
            if metric_sum(metrics, "snowtrap_serve_failures_total", reason="client_disconnected"):
                break
            threading.Event().wait(0.05)
        served = http.post("/v1/detect", content=FRAME.jpeg)

    assert metric_sum(metrics, "snowtrap_serve_failures_total", reason="client_disconnected") == 1
    assert served.status_code == 200
