"""`snowtrap demo` starts the live sightings page, prints its address before anything is sent,
and the page shows the run's sightings while the demo runs (real broker, worker, page).

The demo runs in-process with the test bundle (its detector really crops leopards) on a small
survey; the full demo with its trained bundle is tests/test_demo.py.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.bundle import test_bundle
from rich.console import Console

from snowtrap.demo import DemoSettings, run_demo
from snowtrap.demo.settings import DEMO_CAMERA

pytestmark = pytest.mark.kafka


def test_the_demo_prints_the_live_page_early_and_the_page_shows_its_sightings(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    output = io.StringIO()
    settings = DemoSettings(bootstrap_servers=kafka_bootstrap, run_dir=tmp_path, images=8)
    result = run_demo(
        settings, bundle=test_bundle("detector"), console=Console(file=output, width=200)
    )
    text = output.getvalue()

    live = result["live_page"]
    assert f"live sightings: {live['url']}" in text
    assert text.index("live sightings:") < text.index("6. Upload"), "printed before the upload"
    assert f"Live page: {live['url']} shows" in text

    snapshot = live["snapshot"]
    (camera,) = snapshot["cameras"]
    assert camera["camera_id"] == DEMO_CAMERA
    assert camera["images"] == len(result["detected"])
    assert camera["crops"] == result["crops"] > 0
    assert snapshot["deadletters"]["total"] == len(result["dead"]) == 1
    assert len(live["sightings"]) == min(result["crops"], 24)
    assert all(s["url"].startswith("/crops/") for s in live["sightings"])
    assert (tmp_path / "live.log").is_file()

    # The page stops with the demo.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(live["url"], timeout=5)
