"""`snowtrap demo` end to end: real broker, real trained bundle, real worker subprocess.

The demo runs in-process on a small survey against the session's broker and bundle; every
uploaded image must come back as a detection record or a dead letter, and the HTML report
must hold the pictures.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from snowtrap.demo import DemoSettings, run_demo


def test_demo_settings_take_the_broker_from_kafka_bootstrap_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SNOWTRAP_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert DemoSettings().bootstrap_servers is None
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092")
    assert DemoSettings().bootstrap_servers == "broker-a:9092"
    assert DemoSettings(bootstrap_servers="broker-b:9092").bootstrap_servers == "broker-b:9092"


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_accounts_for_every_image_and_writes_the_report(
    kafka_bootstrap: str, trained_bundle: Path, tmp_path: Path
) -> None:
    output = io.StringIO()
    settings = DemoSettings(bootstrap_servers=kafka_bootstrap, run_dir=tmp_path, images=10)
    result = run_demo(settings, bundle=trained_bundle, console=Console(file=output, width=120))
    text = output.getvalue()

    # 10 synthetic frames plus the corrupt JPEG were sent; the text file never left the station.
    assert len(result["sent"]) == 11
    assert result["rejected"] == ["station-notes.txt"]
    assert result["accounted"]
    assert result["sent"] == result["detected"] | result["dead"]
    assert not result["detected"] & result["dead"]
    assert result["dead_reasons"] == {"truncated": 1}
    assert result["leopards_truth"] >= 1
    assert "every uploaded image accounted for" in text and "images uploaded" in text

    report = result["report"]
    assert report == tmp_path / "report.html" and report.is_file()
    html = report.read_text()
    # one thumbnail per decodable image (the corrupt one has none), and the dead-letter list
    assert len(re.findall(r'src="data:image/jpeg;base64,[A-Za-z0-9+/=]{100,}"', html)) == 10
    assert "truncated" in html and "corrupt-card-write.jpg" in html
    assert (tmp_path / "worker.log").is_file()


def test_the_report_escapes_what_it_shows(tmp_path: Path) -> None:
    """File names and dead-letter reasons come from the field: the HTML report shows them as
    text (Jinja2 autoescape), with a thumbnail for each decodable image."""
    from types import SimpleNamespace

    from PIL import Image

    from snowtrap.demo.report import ImageRow, write_report

    picture = tmp_path / "frame.jpg"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(picture)
    detection = SimpleNamespace(
        detections=[SimpleNamespace(bbox=[0.1, 0.1, 0.5, 0.5], conf=0.91)],
        detector_ran=True,
        leopard_score=0.97,
    )
    letter = SimpleNamespace(reason="<script>bad()</script>", stage="decode", error="x & y")
    rows = [
        ImageRow(picture, "cam/<b>frame</b>.jpg", "a", [[5, 5, 20, 20]], (64, 48), detection),
        ImageRow(tmp_path / "gone.jpg", "cam/gone.jpg", "b", [], (0, 0), letter=letter),
    ]
    report = tmp_path / "out" / "report.html"
    write_report(report, rows, [("images <uploaded>", "2")], [("notes.txt", "not an image")])
    html = report.read_text()
    assert "<script>" not in html and "&lt;script&gt;bad()&lt;/script&gt;" in html
    assert "cam/&lt;b&gt;frame&lt;/b&gt;.jpg" in html and "images &lt;uploaded&gt;" in html
    assert "x &amp; y" in html and "notes.txt" in html
    assert len(re.findall(r'src="data:image/jpeg;base64,[A-Za-z0-9+/=]{100,}"', html)) == 1
    assert "P(leopard) 0.97 · 1 leopard box(es) · truth: 1" in html
    assert 'class="noimg"' in html
