"""Prometheus rules and the Grafana dashboard, checked with the real tools, a real worker and
a real matcher.

- `promtool check rules` and `promtool test rules` (a unit test for every alert);
- every dashboard query parses (promtool checks it as a rule) and every recording rule it
  uses exists;
- every metric the matcher's rules and panels use is one stream/matcher/metrics.py defines
  (snowtrap_matcher_*) or the worker's stream/metrics.py (the crops it publishes), checked
  without Kafka;
- every metric the rules and the dashboard use is exported by a running `snowtrap worker`
  (read from its /metrics after it processed a few images) or, for snowtrap_matcher_*, by a
  running `snowtrap matcher` (after it matched the worker's crops), so renaming a metric in
  stream/metrics.py or stream/matcher/metrics.py fails here;
- a real Prometheus server (Debian's package) on 127.0.0.1 scrapes that worker and that
  matcher with the rules loaded, and snowtrap metrics are read back through its HTTP API.

Missing promtool or prometheus fails these tests: `make test` installs them first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import bundle as bundle_helpers
from helpers.frames import make_frames
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from snowtrap.stream.contracts import TrapImage, build_image_message, image_id_of
from snowtrap.stream.matcher.metrics import MatcherMetrics
from snowtrap.stream.metrics import WorkerMetrics
from snowtrap.stream.topics import TopicNames, ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[1]
RULES = REPO_ROOT / "monitoring" / "prometheus" / "snowtrap-rules.yaml"
RULE_TESTS = sorted((REPO_ROOT / "monitoring" / "prometheus" / "tests").glob("*.yaml"))
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "snowtrap.json"
SNOWTRAP = Path(sys.executable).with_name("snowtrap")
WORKER_JOB = "snowtrap-worker"
"""The scrape job name; the rules select job=~".*snowtrap-worker.*"."""
MATCHER_JOB = "snowtrap-matcher"
"""The matcher's scrape job name; its rules select job=~".*snowtrap-matcher.*"."""
MATCHER_PREFIX = "snowtrap_matcher_"
MATCHER_ALERTS = {
    "SnowtrapMatcherDown",
    "SnowtrapMatcherNoIdentities",
    "SnowtrapMatcherLagGrowing",
    "SnowtrapMatcherDeadLetterRateHigh",
}

METRIC_NAME = re.compile(r"(?<![\w:])(snowtrap_[A-Za-z0-9_]+)")
RECORDED_NAME = re.compile(r"(?<![\w:])(snowtrap:[A-Za-z0-9_:]+)")
LE_SELECTOR = re.compile(r"(snowtrap_[A-Za-z0-9_]+_bucket)\{[^}]*le=\"([^\"]+)\"")
SELECTOR_NAME = re.compile(r"(?<![\w:])([A-Za-z_][A-Za-z0-9_]*)\s*\{")
"""Metric names written with a label selector (`up{...}`): catches names outside snowtrap_."""
pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)
GRAFANA_VARIABLES = {"$__range": "1h", "$__rate_interval": "1m", "$stage": ".*", "$camera": ".*"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found on PATH: run `bash tools/install_system_tools.sh` (make test "
            "does; Debian package prometheus)",
            pytrace=False,
        )
    return found


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


# --- rules and dashboard, statically --------------------------------------------------------


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def rule_expressions() -> list[str]:
    return [r["expr"] for g in rule_groups() for r in g["rules"]]


def matcher_rules() -> list[dict[str, Any]]:
    """The matcher's rules: its group, and its thresholds in the config group."""
    return [
        r
        for g in rule_groups()
        for r in g["rules"]
        if g["name"].startswith("snowtrap.matcher") or "matcher" in r.get("record", "")
    ]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and query variables."""
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard()["panels"])
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"unexpected variable query {query!r}"
            exprs.append(match.group(1))
    return exprs


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no rule unit tests in monitoring/prometheus/tests"
    result = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_has_a_firing_unit_test_and_a_runbook():
    tested_firing: set[str] = set()
    tested_quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                target = tested_firing if check["exp_alerts"] else tested_quiet
                target.add(check["alertname"])
    assert set(alerts()) == tested_firing, "alerts without a test that makes them fire"
    assert set(alerts()) == tested_quiet, "alerts without a test that keeps them quiet"
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        assert len(annotations["runbook"]) > 80, f"{name}: runbook too thin"


def test_required_alerts_exist():
    assert set(alerts()) >= {
        "SnowtrapNoWorkerUp",
        "SnowtrapConsumerLagGrowing",
        "SnowtrapDeadLetterRateHigh",
        "SnowtrapLatencySLOBurnFast",
        "SnowtrapLatencySLOBurnSlow",
        "SnowtrapCameraSilent",
        "SnowtrapModelBundleMismatch",
        *MATCHER_ALERTS,
    }


def registry_names(metrics: WorkerMetrics | MatcherMetrics) -> set[str]:
    """What a process with these metrics can export (no Kafka, no process needed)."""
    return exported_names(generate_latest(metrics.registry).decode())


def test_matcher_rules_and_panels_use_only_metrics_the_matcher_defines():
    """Every metric a matcher rule names is in stream/matcher/metrics.py (snowtrap_matcher_*),
    the workers' stream/metrics.py (crops published, the other end of the crops topic) or
    Prometheus' own `up` for the matcher's scrape job; the same for the dashboard's matcher
    queries."""
    matcher = registry_names(MatcherMetrics())
    worker = registry_names(WorkerMetrics())
    rules = matcher_rules()
    assert {r["alert"] for r in rules if "alert" in r} == MATCHER_ALERTS
    exprs = [r["expr"] for r in rules]
    exprs += [e for e in dashboard_expressions() if MATCHER_PREFIX in e or "snowtrap:matcher" in e]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    matcher_used = {name for name in used if name.startswith(MATCHER_PREFIX)}
    assert len(matcher_used) >= 4, matcher_used
    assert matcher_used <= matcher, f"not in stream/matcher/metrics.py: {matcher_used - matcher}"
    assert used - matcher_used <= worker, (
        f"not in stream/metrics.py: {used - matcher_used - worker}"
    )
    for expr in exprs:
        for name in SELECTOR_NAME.findall(expr):
            assert name.startswith("snowtrap_") or name == "up", f"{name} in {expr!r}"
        if "up{" in expr:
            assert 'up{job=~".*snowtrap-matcher.*"}' in expr, expr
        for bucket, le in LE_SELECTOR.findall(expr):
            assert not bucket.startswith(MATCHER_PREFIX), f"le={le} is not a matcher bucket"
    # Thresholds are recording rules of their own, as for the workers.
    recorded = {name for r in rules for name in RECORDED_NAME.findall(r["expr"])}
    assert {
        "snowtrap:config:matcher_deadletter_ratio_threshold",
        "snowtrap:config:matcher_backlog_growth_threshold_crops",
    } <= recorded


def test_dashboard_queries_parse_and_use_defined_recording_rules(tmp_path: Path):
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    rules = []
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    check = tmp_path / "dashboard-queries.yaml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(check))
    assert result.returncode == 0, result.stdout + result.stderr
    used = {name for expr in exprs for name in RECORDED_NAME.findall(expr)}
    assert used <= recorded_names(), f"undefined recording rules: {used - recorded_names()}"
    for expr in rule_expressions():  # rules use only rules that exist, too
        assert set(RECORDED_NAME.findall(expr)) <= recorded_names(), expr


def test_dashboard_covers_what_operators_look_at():
    titles = " / ".join(p["title"].lower() for p in dashboard()["panels"] if p["type"] != "row")
    for topic in ("throughput", "stage latency", "leopards per camera", "dead letters", "lag"):
        assert topic in titles, topic
    assert "model bundle" in titles
    exprs = " ".join(dashboard_expressions())
    assert "snowtrap_model_bundle_info" in exprs
    assert "histogram_quantile(0.95, sum by (stage, le)" in exprs
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert "Matcher" in rows
    for topic in ("matcher up", "matcher crops in and out", "matcher query latency"):
        assert topic in titles, topic
    assert "snowtrap:matcher_crops_backlog:increase30m" in exprs
    assert "snowtrap_matcher_individuals" in exprs


# --- a running worker -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@dataclass
class RunningProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics_text(self) -> str:
        return http_get(self.url("/metrics")).decode()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"{self.log.stem} exited with {code}:\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                http_get(self.url("/readyz"), timeout=2)
                return
            except (OSError, urllib.error.HTTPError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.log.stem} never ready:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.5)


@dataclass
class RunningWorker(RunningProcess):
    bundle: Path
    topics: TopicNames
    images_sent: int = 0


@dataclass
class RunningMatcher(RunningProcess):
    crops_matched: float = 0.0


def process_env(kafka_bootstrap: str, topics: TopicNames, port: int) -> dict[str, str]:
    """SNOWTRAP_* as the chart sets them (minus the chart's 0.0.0.0), nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
    env.update(
        {
            "SNOWTRAP_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "SNOWTRAP_METRICS_HOST": "127.0.0.1",
            "SNOWTRAP_METRICS_PORT": str(port),
            "SNOWTRAP_BATCH_TIMEOUT_MS": "100",
            "PYTHONUNBUFFERED": "1",
            **{f"SNOWTRAP_TOPICS__{role.upper()}": name for role, name in topics.items()},
        }
    )
    return env


def metric_sum(metrics_text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def processed_total(metrics_text: str) -> float:
    return metric_sum(metrics_text, "snowtrap_images_processed_total")


def produce_images(bootstrap: str, topic: str) -> int:
    """A few frames from two cameras plus one non-image (a dead letter); returns the count."""
    from kafka import KafkaProducer

    messages = []
    for i, frame in enumerate(make_frames(6, seed=77, leopard_rate=0.5)):
        camera = ("cam-mon-a", "cam-mon-b")[i % 2]
        messages.append((frame.jpeg, frame.name, camera))
    messages.append((b"this is not an image, it is a text file\n" * 20, "notes.jpg", "cam-mon-a"))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 << 20)
    try:
        for data, name, camera in messages:
            key, value, headers = build_image_message(
                TrapImage(
                    image_id=image_id_of(data),
                    camera_id=camera,
                    station_id="station-mon",
                    file_name=name,
                    content_type="image/jpeg",
                    capture_time=None,
                    sent_at=time.time(),
                    payload=data,
                )
            )
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(timeout=30)
    finally:
        producer.close()
    return len(messages)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="snowtrap-tests")
    except KafkaError:
        return
    try:
        admin.delete_topics([n for n in names if n in set(admin.list_topics())], timeout_ms=10_000)
    except KafkaError:
        pass
    finally:
        admin.close()


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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


def exported_names(metrics_text: str) -> set[str]:
    """Sample names a scrape can return, including those of label sets not yet seen."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


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
