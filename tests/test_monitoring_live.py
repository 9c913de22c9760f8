"""The metrics the rules and the dashboard use, exported by a real worker and a real matcher
and scraped by a real Prometheus.

- every metric the rules and the dashboard use is exported by a running `snowtrap worker`
  (read from its /metrics after it processed a few images) or, for snowtrap_matcher_*, by a
  running `snowtrap matcher` (after it matched the worker's crops), so renaming a metric in
  stream/metrics.py or stream/matcher/metrics.py fails here;
- a real Prometheus server (Debian's package) on 127.0.0.1 scrapes that worker and that
  matcher with the rules loaded, and snowtrap metrics are read back through its HTTP API.

The rules and the dashboard checked statically: tests/test_monitoring.py. The processes:
tests/helpers/live_processes.py.

Missing prometheus fails these tests: `make test` installs it first.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import bundle as bundle_helpers
from helpers.live_processes import (
    SNOWTRAP,
    RunningMatcher,
    RunningWorker,
    delete_topics,
    http_get,
    metric_sum,
    process_env,
    processed_total,
    produce_images,
)
from helpers.monitoring import (
    LE_SELECTOR,
    MATCHER_PREFIX,
    METRIC_NAME,
    REPO_ROOT,
    RULES,
    alerts,
    dashboard_expressions,
    exported_names,
    rule_expressions,
    tool,
)
from prometheus_client.parser import text_string_to_metric_families

from snowtrap.devtools.local_processes import free_port, stop_process
from snowtrap.stream.topics import TopicNames, ensure_topics

WORKER_JOB = "snowtrap-worker"
"""The scrape job name; the rules select job=~".*snowtrap-worker.*"."""
MATCHER_JOB = "snowtrap-matcher"
"""The matcher's scrape job name; its rules select job=~".*snowtrap-matcher.*"."""
pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)


@pytest.fixture(scope="module")
def running_worker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningWorker]:
    """`snowtrap worker` as deployed (console script, SNOWTRAP_* env) after a few images."""
    bundle = bundle_helpers.test_bundle("detector")
    topics = TopicNames().with_suffix(f".mon-{uuid.uuid4().hex[:12]}")
    ensure_topics(kafka_bootstrap, topics)
    port = free_port()
    env = process_env(kafka_bootstrap, topics, port)
    env.update({"SNOWTRAP_GROUP_ID": f"mon-{uuid.uuid4().hex[:8]}", "SNOWTRAP_LAG_INTERVAL_S": "1"})
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(SNOWTRAP), "worker", "--bundle", str(bundle)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = RunningWorker(process, port, log, bundle, topics)
    try:
        worker.wait_ready()
        worker.images_sent = produce_images(kafka_bootstrap, topics.images)
        deadline = time.monotonic() + 120
        while processed_total(worker.metrics_text()) < worker.images_sent:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"images not processed in time:\n{worker.log_tail()}")
            time.sleep(0.5)
        yield worker
    finally:
        stop_process(process)
        delete_topics(kafka_bootstrap, list(topics))


@pytest.fixture(scope="module")
def running_matcher(
    running_worker: RunningWorker, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningMatcher]:
    """`snowtrap matcher` as the chart runs it (SNOWTRAP_DB_PATH, SNOWTRAP_* env) on the
    running worker's crops topic, after it finished every crop the worker published."""
    port = free_port()
    env = process_env(kafka_bootstrap, running_worker.topics, port)
    directory = tmp_path_factory.mktemp("matcher")
    env.update(
        {
            "SNOWTRAP_GROUP_ID": f"mon-matcher-{uuid.uuid4().hex[:8]}",
            "SNOWTRAP_DB_PATH": str(directory / "individuals.sqlite"),
            "SNOWTRAP_CREATE_TOPICS": "false",
        }
    )
    log = directory / "matcher.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(SNOWTRAP), "matcher"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    matcher = RunningMatcher(process, port, log)
    try:
        matcher.wait_ready()
        published = metric_sum(running_worker.metrics_text(), "snowtrap_crops_published_total")
        deadline = time.monotonic() + 120
        while True:
            matcher.check_alive()
            matcher.crops_matched = metric_sum(
                matcher.metrics_text(), "snowtrap_matcher_crops_total"
            )
            if matcher.crops_matched >= published:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{published} crops, {matcher.crops_matched} matched:\n{matcher.log_tail()}"
                )
            time.sleep(0.5)
        yield matcher
    finally:
        stop_process(process)


def used_metrics() -> dict[str, str]:
    """snowtrap_* metric name -> where it is used first (rules or dashboard)."""
    used: dict[str, str] = {}
    for source, exprs in (("rules", rule_expressions()), ("dashboard", dashboard_expressions())):
        for expr in exprs:
            for name in METRIC_NAME.findall(expr):
                used.setdefault(name, source)
    return used


def test_every_metric_in_rules_and_dashboard_is_exported_by_the_worker(running_worker):
    text = running_worker.metrics_text()
    exported = exported_names(text)
    used = {k: v for k, v in used_metrics().items() if not k.startswith(MATCHER_PREFIX)}
    assert len(used) >= 8, used
    missing = {name: source for name, source in used.items() if name not in exported}
    assert not missing, f"used but not exported by the worker: {missing}"
    # Bucket bounds the rules select (the latency SLO's le="30.0") exist as exported.
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    for expr in rule_expressions() + dashboard_expressions():
        for bucket, le in LE_SELECTOR.findall(expr):
            assert any(s.name == bucket and s.labels.get("le") == le for s in samples), (
                f"{bucket}{{le={le!r}}} is not a bucket the worker exports"
            )


def test_the_worker_exports_the_series_the_dashboard_plots(running_worker):
    samples = [
        s for f in text_string_to_metric_families(running_worker.metrics_text()) for s in f.samples
    ]

    def values(name: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for s in samples if s.name == name]

    cameras = {labels["camera_id"] for labels, _ in values("snowtrap_camera_images_total")}
    assert {"cam-mon-a", "cam-mon-b"} <= cameras
    assert {
        labels["camera_id"] for labels, _ in values("snowtrap_camera_last_image_timestamp_seconds")
    } >= cameras
    assert sum(v for _, v in values("snowtrap_deadletter_total")) >= 1
    assert {labels["stage"] for labels, _ in values("snowtrap_stage_latency_seconds_count")} >= {
        "decode",
        "classify",
        "produce",
    }
    assert sum(v for _, v in values("snowtrap_end_to_end_latency_seconds_count")) >= 1
    (info,) = values("snowtrap_model_bundle_info")
    manifest = json.loads((running_worker.bundle / "manifest.json").read_text())
    assert info[0]["version"] == manifest["version"]
    deadline = time.monotonic() + 15  # the lag timer runs every second
    while not values("snowtrap_consumer_lag_messages"):
        assert time.monotonic() < deadline, "no consumer lag measured"
        time.sleep(1)
        samples = [
            s
            for f in text_string_to_metric_families(running_worker.metrics_text())
            for s in f.samples
        ]


def test_every_matcher_metric_in_rules_and_dashboard_is_exported_by_the_matcher(
    running_matcher,
):
    text = running_matcher.metrics_text()
    exported = exported_names(text)
    used = {k: v for k, v in used_metrics().items() if k.startswith(MATCHER_PREFIX)}
    assert len(used) >= 6, used
    missing = {name: source for name, source in used.items() if name not in exported}
    assert not missing, f"used but not exported by the matcher: {missing}"
    outcomes = {
        s.labels.get("outcome")
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "snowtrap_matcher_crops_total"
    }
    assert outcomes == {"matched", "deadletter"}  # both there from the start, at 0 if need be
    # It really matched the worker's leopard crops (frames with leopards, seed 77).
    assert running_matcher.crops_matched >= 1
    matched = metric_sum(text, "snowtrap_matcher_crops_total", outcome="matched")
    assert metric_sum(text, "snowtrap_matcher_decisions_total") == matched
    assert metric_sum(text, "snowtrap_matcher_query_latency_seconds_count") == matched


# --- a real Prometheus server ---------------------------------------------------------------


def prometheus_query(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    body = json.loads(http_get(url))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_worker_and_matcher_and_answers_queries(
    running_worker, running_matcher, tmp_path: Path
):
    binary = tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": WORKER_JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{running_worker.port}"]}],
                    },
                    {
                        "job_name": MATCHER_JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{running_matcher.port}"]}],
                    },
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def until(query: str, accept, timeout_s: float = 60.0) -> list[dict[str, Any]]:
            deadline = time.monotonic() + timeout_s
            result: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    raise AssertionError(f"prometheus exited:\n{log.read_text()[-3000:]}")
                try:
                    result = prometheus_query(base, query)
                    if accept(result):
                        return result
                except (OSError, urllib.error.HTTPError):
                    pass
                time.sleep(0.5)
            raise AssertionError(f"{query}: {result}\n{log.read_text()[-3000:]}")

        up = until(f'up{{job="{WORKER_JOB}"}}', lambda r: r and r[0]["value"][1] == "1")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{running_worker.port}"
        processed = until(
            "sum(snowtrap_images_processed_total)",
            lambda r: r and float(r[0]["value"][1]) >= running_worker.images_sent,
        )
        assert float(processed[0]["value"][1]) >= running_worker.images_sent
        manifest = json.loads((running_worker.bundle / "manifest.json").read_text())
        (info,) = until("snowtrap_model_bundle_info", lambda r: len(r) == 1)
        assert info["metric"]["version"] == manifest["version"]
        assert info["metric"]["job"] == WORKER_JOB
        # The rules loaded and evaluate against the scraped worker.
        until("snowtrap:config:camera_silence_threshold_seconds", lambda r: len(r) == 1)
        rules = json.loads(http_get(f"{base}/api/v1/rules"))["data"]["groups"]
        loaded = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
        assert loaded == set(alerts())
        until(
            'ALERTS{alertname="SnowtrapNoWorkerUp"} or vector(0)',
            lambda r: r and "alertname" not in r[0]["metric"],
        )
        # The matcher: scraped under its job, its counters read back, its rules evaluated.
        up = until(f'up{{job="{MATCHER_JOB}"}}', lambda r: r and r[0]["value"][1] == "1")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{running_matcher.port}"
        crops = until(
            "sum(snowtrap_matcher_crops_total)",
            lambda r: r and float(r[0]["value"][1]) >= running_matcher.crops_matched,
        )
        assert float(crops[0]["value"][1]) == running_matcher.crops_matched
        until("snowtrap:matcher_crops:rate5m", lambda r: len(r) == 2)  # matched, deadletter
        until("snowtrap:matcher_crops_backlog:increase30m", lambda r: len(r) == 1)
        # Evaluated in the same group pass as the recording rules above: with the matcher's
        # job matched by the rule's selector, the down alert is not even pending.
        down = prometheus_query(base, 'ALERTS{alertname="SnowtrapMatcherDown"}')
        assert down == [], down
    finally:
        stop_process(server)
