"""The live page in a real browser, fed by the real pipeline.

The project's broker, `snowtrap worker` with the test bundle (its detector really boxes and
crops leopards), and `snowtrap live` behind a path prefix all run as processes; headless
Chromium opens the page first; then the camera-station uploader sends a card of synthetic trap
images and one corrupt JPEG. The test waits until the browser shows a crop that has loaded,
captioned with the camera the image came from, the camera's counts and the dead letter, and
keeps a screenshot (`$SNOWTRAP_ARTIFACTS_DIR`, default `artifacts/`) for CI. Without Chromium
it fails, naming the install step. Strings from the field (camera ids, names) must show as
text in the browser, never as markup.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from helpers.browser import (
    BrowserMissing,
    LiveProcess,
    headless_chromium,
    page_errors,
    save_screenshot,
    system_chromium,
)
from helpers.bundle import test_bundle
from helpers.messages import truncated_jpeg
from helpers.stream_run import start_worker
from helpers.topics import consume_all, produce
from helpers.trap_cards import make_trap_images, upload
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_live import live_settings

from snowtrap.devtools.sample_records import sample_crop, sample_identity
from snowtrap.stream.contracts import build_crop_message, parse_crop_message
from snowtrap.stream.contracts.identities import build_identity_message
from snowtrap.stream.live import LiveServer
from snowtrap.stream.topics import TopicNames

pytestmark = pytest.mark.kafka

ROOT_PATH = "/live"
FRAMES = 24
WAIT_S = 240
IMAGE_DECODED = "return arguments[0].complete && arguments[0].naturalWidth > 0"


def loaded_crop(driver, alive) -> tuple[str, str, str] | None:
    """(crop id, camera shown, img src) of a sighting whose JPEG the browser has decoded."""
    alive()
    for figure in driver.find_elements(By.CSS_SELECTOR, "#sightings figure.sighting"):
        image = figure.find_element(By.CSS_SELECTOR, "img.crop")
        if driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", image
        ):
            camera = figure.find_element(By.CSS_SELECTOR, ".camera").text
            if camera:
                return figure.get_attribute("data-crop-id"), camera, image.get_attribute("src")
    return None


def images_counted(driver) -> int:
    """The page's per-camera image counts, summed."""
    return sum(int(td.text) for td in driver.find_elements(By.CSS_SELECTOR, "#cameras td.images"))


def test_a_leopard_uploaded_at_a_station_appears_on_the_live_page(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    topics = kafka_topics
    frames = make_trap_images(tmp_path / "card", FRAMES, seed=11)
    assert any(frame.has_leopard for frame in frames)
    camera_of = {frame.image_id: frame.camera_id for frame in frames}
    cards: dict[str, list[Path]] = {}
    for frame in frames:
        cards.setdefault(frame.camera_id, []).append(frame.path)
    corrupt = tmp_path / "card" / "IMG_9001_truncated.jpg"
    corrupt.write_bytes(truncated_jpeg(frames[0].path.read_bytes(), 0.3))
    cards[frames[0].camera_id].append(corrupt)

    worker_log, live_log = tmp_path / "worker.log", tmp_path / "live.log"
    group = f"live-browser-{uuid.uuid4().hex[:8]}"
    with (
        start_worker(test_bundle("detector"), kafka_bootstrap, topics, group, worker_log) as worker,
        LiveProcess(kafka_bootstrap, topics, live_log, root_path=ROOT_PATH) as live,
        headless_chromium() as driver,
    ):

        def alive() -> None:
            worker.check_alive()
            live.check_alive()

        assert live.url.endswith(f"{ROOT_PATH}/")
        driver.get(live.url)
        wait = WebDriverWait(
            driver, WAIT_S, poll_frequency=0.5, ignored_exceptions=[StaleElementReferenceException]
        )
        # The page is open and following the (still empty) topics before anything is sent.
        wait.until(lambda d: alive() or d.find_element(By.ID, "status").text.startswith("live"))
        assert driver.find_element(By.ID, "no-sightings").is_displayed()

        sent, _ = upload(kafka_bootstrap, topics, cards, tmp_path / "ledger.sqlite")
        assert len(sent) == FRAMES + 1

        crop_id, camera, src = wait.until(lambda d: loaded_crop(d, alive))
        image_id = crop_id.split(":")[0]
        assert camera == camera_of[image_id], "the caption names the camera the image came from"
        assert src.split("/", 3)[3].startswith(f"{ROOT_PATH.lstrip('/')}/crops/")
        published = {
            parse_crop_message(r.value, r.headers).crop_id
            for r in consume_all(kafka_bootstrap, topics.crops)
        }
        assert crop_id in published, "the page shows a crop the worker published"

        # The camera's counts and the corrupt JPEG's dead letter reach the page too.
        wait.until(
            lambda d: (
                alive()
                or camera in [td.text for td in d.find_elements(By.CSS_SELECTOR, "#cameras td")]
            )
        )
        wait.until(lambda d: alive() or d.find_element(By.ID, "deadletter-total").text == "1")
        wait.until(lambda d: alive() or images_counted(d) == FRAMES)
        stage, reason, count = (
            td.text for td in driver.find_elements(By.CSS_SELECTOR, "#deadletters td")
        )
        assert (stage, reason, count) in {("decode", "truncated", "1"), ("decode", "corrupt", "1")}
        assert page_errors(driver) == []
        screenshot = save_screenshot(driver, "live-page.png")
        assert screenshot.stat().st_size > 10_000


def test_a_missing_chromium_fails_the_test_naming_the_install_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(BrowserMissing, match=r"install_system_tools\.sh"):
        system_chromium()


def test_field_strings_show_as_text_in_the_browser_never_as_markup(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    """A camera id or an individual's name is whatever a station or a biologist typed: the
    page must show it as text (textContent), not run or render it."""
    hostile = "<img src=x onerror=\"document.title='owned'\"><b>cam</b>"
    seen = replace(sample_crop("IMG_0001", "cam-a"), camera_id=hostile)
    named = {**sample_identity(seen, "F-01"), "individual_id": "<i>Shan</i>"}
    produce(kafka_bootstrap, kafka_topics.crops, [build_crop_message(seen)])
    produce(kafka_bootstrap, kafka_topics.identities, [build_identity_message(named)])

    settings = live_settings(kafka_bootstrap, kafka_topics, root_path="/live")
    with LiveServer(settings) as server, headless_chromium() as driver:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60, poll_frequency=0.3)
        wait.until(lambda d: "Shan" in d.find_element(By.ID, "sightings").text)
        assert driver.find_element(By.CSS_SELECTOR, "#sightings .camera").text == hostile
        individual = driver.find_element(By.CSS_SELECTOR, "#sightings .individual").text
        assert individual == "individual <i>Shan</i>"
        assert driver.find_elements(By.CSS_SELECTOR, "#sightings b, #sightings i") == []
        assert len(driver.find_elements(By.CSS_SELECTOR, "#sightings img")) == 1
        assert driver.title != "owned"
        assert page_errors(driver) == []
