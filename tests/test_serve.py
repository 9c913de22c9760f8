"""`snowtrap serve`: the real API on uvicorn, on 127.0.0.1, with the real test bundle.

What a client gets: boxes and scores for a leopard frame and none for an empty one, crops as
JPEGs without metadata, several images in one multipart request, the worker's dead-letter
reasons with their status codes for the bad-input corpus (and the server still answering
afterwards), a MegaDetector document, the metrics, and the OpenAPI document as checked in.
Limits, the queue, auth, readiness and the command are in test_serve_limits.py.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.bundle import test_bundle
from helpers.frames import make_frame
from helpers.live_processes import metric_sum
from helpers.messages import garbled_jpeg, pdf_bytes, text_file_bytes, truncated_jpeg
from helpers.serve import running_server
from PIL import Image

from snowtrap.models.boxes import box_iou, xywh_to_xyxy
from snowtrap.stream.megadetector import validate_megadetector_file
from snowtrap.stream.serve.app import OPENAPI_PATH, build_app
from snowtrap.stream.serve.server import ServeServer
from snowtrap.stream.serve.settings import ServeSettings

LEOPARD = make_frame(3, leopard=True, night=False, size=(1280, 960))
EMPTY = make_frame(3, leopard=False, night=False, size=(1280, 960))
NIGHT_LEOPARD = make_frame(8, leopard=True, night=True)
APP1_EXIF = b"\xff\xe1"


@pytest.fixture(scope="module")
def server() -> Iterator[ServeServer]:
    settings = ServeSettings(bundle_dir=test_bundle("detector"), port=0, inference_threads=1)
    with running_server(settings) as running:
        yield running


@pytest.fixture
def client(server: ServeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def detect(client: httpx.Client, data: bytes, query: str = "", **headers: str) -> httpx.Response:
    headers = {"content-type": "image/jpeg", **headers}
    return client.post(f"/v1/detect{query}", content=data, headers=headers)


def test_a_leopard_frame_gets_a_box_and_an_empty_frame_none(client: httpx.Client):
    leopard = detect(client, LEOPARD.jpeg, "?name=IMG_0042.JPG")
    empty = detect(client, EMPTY.jpeg)

    assert leopard.status_code == 200, leopard.text
    assert empty.status_code == 200, empty.text
    document = leopard.json()
    assert document["info"]["format_version"] == "1.4"
    assert "snowtrap-test" in document["info"]["detector"]
    assert document["detection_categories"] == {"1": "snow leopard"}
    (entry,) = document["images"]
    assert entry["file"] == "IMG_0042.JPG"
    assert entry["detector_ran"] is True and entry["leopard_score"] >= entry["gate_threshold"]
    assert (entry["width"], entry["height"]) == (1280, 960)
    assert entry["model_version"] == document["info"]["snowtrap_serve"]["model_version"]
    (box,) = entry["detections"]
    assert box["category"] == "1" and box["conf"] >= 0.5
    assert _overlap(box["bbox"], LEOPARD.box) > 0  # on the leopard (a coarse stand-in box)
    assert "crop_jpeg_base64" not in box  # crops only when asked for
    assert entry["datetime"] == LEOPARD.capture_time.isoformat()

    (empty_entry,) = empty.json()["images"]
    assert empty_entry["detections"] == []
    assert empty_entry["leopard_score"] < empty_entry["gate_threshold"]
    assert empty_entry["detector_ran"] is False
    # The answer loads in the tools that read MegaDetector files.
    assert validate_megadetector_file(document) == []


def test_crops_are_jpegs_without_exif_or_gps(client: httpx.Client):
    assert APP1_EXIF in LEOPARD.jpeg[:64]  # the frame itself carries EXIF with GPS

    response = detect(client, LEOPARD.jpeg, "?crops=true")

    assert response.status_code == 200, response.text
    (entry,) = response.json()["images"]
    (box,) = entry["detections"]
    jpeg = base64.b64decode(box["crop_jpeg_base64"])
    crop = Image.open(io.BytesIO(jpeg))
    assert crop.format == "JPEG"
    assert not crop.getexif() and "exif" not in crop.info
    assert APP1_EXIF not in jpeg
    # Cut from the full-resolution frame, around the box (plus a margin).
    assert crop.width >= box["bbox"][2] * 1280 * 0.95
    assert crop.height >= box["bbox"][3] * 960 * 0.95


def test_multipart_with_several_images_answers_each_in_order(client: httpx.Client):
    files = [
        ("images", ("leopard.jpg", LEOPARD.jpeg, "image/jpeg")),
        ("images", ("empty.jpg", EMPTY.jpeg, "image/jpeg")),
        ("images", ("night.jpg", NIGHT_LEOPARD.jpeg, "image/jpeg")),
        ("images", ("notes.jpg", text_file_bytes(), "image/jpeg")),
    ]
    response = client.post("/v1/detect", files=files)

    assert response.status_code == 200, response.text
    entries = response.json()["images"]
    assert [e["file"] for e in entries] == ["leopard.jpg", "empty.jpg", "night.jpg", "notes.jpg"]
    assert len(entries[0]["detections"]) == 1 and entries[1]["detections"] == []
    assert entries[2]["is_night"] is True and len(entries[2]["detections"]) == 1
    assert entries[3] == {
        "file": "notes.jpg",
        "failure": "decode: not_an_image",
        "detections": None,
    }


MULTIPART_X = "multipart/form-data; boundary=x"
UNNAMED_PART = b'--x\r\nContent-Disposition: form-data; filename="a.jpg"\r\n\r\nabc\r\n--x--\r\n'
TEXT_PART = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--x--\r\n'
BAD_INPUTS = {
    # name: (bytes, Content-Type, status, reason): the worker's dead-letter corpus
    "truncated": (truncated_jpeg(EMPTY.jpeg), "image/jpeg", 400, "truncated"),
    "garbled": (garbled_jpeg(EMPTY.jpeg, 1), "image/jpeg", 400, "corrupt"),
    "text": (text_file_bytes(), "image/jpeg", 415, "not_an_image"),
    "pdf": (pdf_bytes(), "application/octet-stream", 415, "not_an_image"),
    "empty": (b"", "image/jpeg", 400, "empty_payload"),
    "gif": (b"GIF89a" + bytes(64), "image/gif", 415, "unsupported_format"),
    "wrong content type": (EMPTY.jpeg, "text/plain", 415, "unsupported_content_type"),
    "part without name": (UNNAMED_PART, MULTIPART_X, 400, "bad_multipart"),
    "no file part": (TEXT_PART, MULTIPART_X, 400, "no_images"),
    "no boundary": (b"--x\r\n", "multipart/form-data", 400, "bad_multipart"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_inputs_get_their_status_and_the_workers_reason(client: httpx.Client, name: str):
    data, content_type, status, reason = BAD_INPUTS[name]

    response = detect(client, data, **{"content-type": content_type})

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["status"], error["reason"]) == (status, reason)
    assert error["message"]
    # ... and the server goes on answering.
    assert detect(client, EMPTY.jpeg).status_code == 200


def test_a_bad_query_flag_is_refused(client: httpx.Client):
    response = detect(client, EMPTY.jpeg, "?crops=maybe")
    assert response.status_code == 400
    assert response.json()["error"]["reason"] == "bad_query"


def test_one_multipart_request_is_one_model_batch(server: ServeServer, client: httpx.Client):
    batches_before = _metric(client, "snowtrap_serve_batch_size_count")
    images_before = _metric(client, "snowtrap_serve_batch_size_sum")
    files = [("images", (f"e{i}.jpg", EMPTY.jpeg, "image/jpeg")) for i in range(4)]

    assert client.post("/v1/detect", files=files).status_code == 200

    assert _metric(client, "snowtrap_serve_batch_size_count") == batches_before + 1
    assert _metric(client, "snowtrap_serve_batch_size_sum") == images_before + 4


def test_metrics_count_requests_images_failures_and_batches(client: httpx.Client):
    detect(client, LEOPARD.jpeg)
    detect(client, truncated_jpeg(EMPTY.jpeg))

    text = client.get("/metrics").text
    route = "/v1/detect"
    latency = "snowtrap_serve_request_duration_seconds_count"
    assert metric_sum(text, latency, route=route, status="200") >= 1
    assert metric_sum(text, latency, route=route, status="400") >= 1
    assert metric_sum(text, "snowtrap_serve_images_total", outcome="leopard") >= 1
    assert metric_sum(text, "snowtrap_serve_images_total", outcome="failed") >= 1
    assert metric_sum(text, "snowtrap_serve_failures_total", reason="truncated", status="400") >= 1
    assert metric_sum(text, "snowtrap_serve_batch_size_count") >= 2
    for gauge in ("snowtrap_serve_queue_depth", "snowtrap_serve_in_flight_requests"):
        assert f"# TYPE {gauge} gauge" in text
    assert 'snowtrap_serve_model_bundle_info{detector="yes"' in text


def test_health_and_readiness(client: httpx.Client):
    assert client.get("/healthz").json() == {"alive": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_the_served_openapi_document_is_the_checked_in_one_and_describes_every_route(
    client: httpx.Client,
):
    checked_in = json.loads(OPENAPI_PATH.read_text())
    assert client.get("/openapi.json").json() == checked_in

    app = build_app(ServeSettings(bundle_dir=Path("unused"), root_path="/detector"))
    served = {(route.path.removeprefix("/detector"), method.lower())
              for route in app.routes for method in route.methods - {"HEAD"}}  # fmt: skip
    described = {(path, method) for path, item in checked_in["paths"].items() for method in item}
    assert served == described
    post = checked_in["paths"]["/v1/detect"]["post"]
    assert {"200", "400", "401", "413", "415", "503", "504"} <= set(post["responses"])


def _metric(client: httpx.Client, name: str) -> float:
    return metric_sum(client.get("/metrics").text, name)


def _overlap(a: list[float], b: tuple[float, float, float, float] | None) -> float:
    """Intersection over union of two normalised (x, y, w, h) boxes."""
    assert b is not None
    return float(box_iou(xywh_to_xyxy(np.array([a])), xywh_to_xyxy(np.array([b])))[0, 0])
