"""SASL/SCRAM-SHA-512 over TLS against a real broker, with the settings the Helm chart renders.

The broker is the project's own (`SecureKafkaBroker`): its only client listener is SASL_SSL,
its certificate comes from a CA made for it alone, and it knows one SCRAM user. The chart is
rendered with `helm/values/sasl-tls.yaml` pointed at it; every process then starts as its pod
would (tests/helpers/pod_env.py): the env the chart gives the container, the password from the
Secret it names, the CA written where the Secret volume is mounted.

- `snowtrap topics` (the chart's provisioning Job) creates the topics, `snowtrap upload` sends
  frames, `snowtrap worker` turns them into detections and crops, `snowtrap matcher` matches
  the crops, `snowtrap export` reads the detections back: all over SASL_SSL;
- with a wrong password each of them exits non-zero, in bounded time, with one line that
  names the authentication failure and no traceback;
- a PLAINTEXT client, and a TLS client trusting another CA, get nothing from the broker.

The broker is always this module's own, also when KAFKA_BOOTSTRAP_SERVERS names another: a
cluster someone else runs knows neither the test's SCRAM user nor its CA.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import chart
from helpers.bundle import test_bundle
from helpers.frames import make_frames, write_frames
from helpers.live_processes import RunningProcess, metric_sum, processed_total
from helpers.pod_env import (
    Secrets,
    container_named,
    kafka_environment,
    pod_environment,
    process_environment,
)

from snowtrap.devtools.kafka_security import ScramUser, SecureKafkaBroker, write_broker_tls
from snowtrap.devtools.local_processes import free_port, list_topics, stop_process
from snowtrap.stream.settings import KafkaLoginError, KafkaSettings

pytestmark = pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")

SNOWTRAP = Path(sys.executable).with_name("snowtrap")
REPO_ROOT = Path(__file__).resolve().parents[1]
USER = "snowtrap"
"""The username helm/values/sasl-tls.yaml renders (a Strimzi KafkaUser name)."""
PASSWORD_SECRET = ("snowtrap-kafka-user", "password")
CA_SECRET = ("kafka-cluster-ca-cert", "ca.crt")
FRAMES = 6
COMMAND_TIMEOUT_S = 120
"""Bound on any one command: a client that hangs fails the test instead of stalling it."""
AUTH_FAILURE = "authentication failed"


@dataclass
class SecureCluster:
    """The running broker, the chart rendered for it, and the namespace's Secrets."""

    broker: SecureKafkaBroker
    docs: list[dict[str, Any]]
    password: str
    ca_pem: str

    def secrets(self, password: str | None = None) -> Secrets:
        return {
            PASSWORD_SECRET[0]: {PASSWORD_SECRET[1]: password or self.password},
            CA_SECRET[0]: {CA_SECRET[1]: self.ca_pem},
        }

    def env(
        self, kind: str, component: str, folder: Path, password: str | None = None
    ) -> dict[str, str]:
        """The SNOWTRAP_* env of a workload's container, as its pod gets it."""
        return pod_environment(
            self.docs,
            chart.one(self.docs, kind, component),
            component,  # the chart names each container after its component
            self.secrets(password),
            folder / "volumes",
            pod_name=f"snow-{component}-{uuid.uuid4().hex[:5]}",
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    password = uuid.uuid4().hex
    broker = SecureKafkaBroker(
        tmp_path_factory.mktemp("secure-broker"), users=[ScramUser(USER, password)]
    )
    broker.start()
    try:
        docs = chart.render(
            [
                "-f",
                str(chart.VALUES_DIR / "sasl-tls.yaml"),
                "--set",
                f"kafka.bootstrapServers={broker.bootstrap_servers}",
                # One broker: the values file's replication factor of 3 cannot be met.
                "--set",
                "topics.provisioning.replicationFactor=1",
            ]
        )
        yield SecureCluster(broker, docs, password, broker.tls.ca_file.read_text())
    finally:
        broker.stop()


def run_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SNOWTRAP), *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def start_process(args: list[str], env: dict[str, str], port: int, log: Path) -> RunningProcess:
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(SNOWTRAP), *args],
            env=env,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RunningProcess(process, port, log)


def wait_for(what: str, done: Any, process: RunningProcess, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        process.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s:\n{process.log_tail()}")
        time.sleep(0.5)


@pytest.mark.kafka
def test_topics_upload_worker_matcher_export_over_sasl_ssl_with_the_chart_settings(
    cluster: SecureCluster, tmp_path: Path
):
    topics_env = cluster.env("Job", "topics", tmp_path / "topics")
    assert topics_env["SNOWTRAP_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert topics_env["SNOWTRAP_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert Path(topics_env["SNOWTRAP_SSL_CAFILE"]).read_text() == cluster.ca_pem
    job = chart.one(cluster.docs, "Job", "topics")
    created = run_command(container_named(job, "topics")["args"], process_environment(topics_env))
    assert created.returncode == 0, created.stdout + created.stderr
    assert "trap.images: created" in created.stdout

    client_env = process_environment(kafka_environment(topics_env))
    frames = make_frames(FRAMES, seed=2026, leopard_rate=0.5)
    write_frames(frames, tmp_path / "card")
    uploaded = run_command(
        [
            "upload",
            str(tmp_path / "card"),
            "--camera-id",
            "cam-secure",
            "--station-id",
            "station-secure",
            "--ledger",
            str(tmp_path / "ledger.sqlite"),
            "--no-progress",
        ],
        client_env,
    )
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr

    worker_port, matcher_port = free_port(), free_port()
    worker_env = process_environment(
        cluster.env("Deployment", "worker", tmp_path / "worker"),
        bundle_dir=str(test_bundle("detector")),
        metrics_host="127.0.0.1",
        metrics_port=str(worker_port),
    )
    matcher_env = process_environment(
        cluster.env("StatefulSet", "matcher", tmp_path / "matcher"),
        db_path=str(tmp_path / "individuals.sqlite"),
        metrics_host="127.0.0.1",
        metrics_port=str(matcher_port),
    )
    worker = start_process(["worker"], worker_env, worker_port, tmp_path / "worker.log")
    matcher = start_process(["matcher"], matcher_env, matcher_port, tmp_path / "matcher.log")
    try:
        worker.wait_ready()
        wait_for(
            f"{FRAMES} images processed",
            lambda: processed_total(worker.metrics_text()) >= FRAMES,
            worker,
        )
        crops = metric_sum(worker.metrics_text(), "snowtrap_crops_published_total")
        assert crops > 0, "no leopard crop: the matcher would have nothing to read"
        matcher.wait_ready()
        wait_for(
            f"{crops:g} crops matched",
            lambda: metric_sum(matcher.metrics_text(), "snowtrap_matcher_crops_total") >= crops,
            matcher,
        )
    finally:
        stop_process(worker.process)
        stop_process(matcher.process)

    output = tmp_path / "export.json"
    exported = run_command(["export", str(output), "--include-deadletter"], client_env)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    images = json.loads(output.read_text())["images"]
    assert sorted(Path(entry["file"]).name for entry in images) == sorted(f.name for f in frames)
    assert not [entry for entry in images if entry.get("failure")]


@pytest.mark.kafka
def test_a_wrong_password_stops_every_client_with_one_clear_line(
    cluster: SecureCluster, tmp_path: Path
):
    wrong = "not-the-password"
    topics_env = cluster.env("Job", "topics", tmp_path / "topics", wrong)
    client_env = process_environment(kafka_environment(topics_env), connect_timeout_s="20")
    write_frames(make_frames(2, seed=7), tmp_path / "card")
    card, ledger = str(tmp_path / "card"), str(tmp_path / "ledger.sqlite")
    upload = ["upload", card, "--camera-id", "c", "--station-id", "s", "--ledger", ledger]
    commands = {
        "topics": (["topics", "--replication-factor", "1"], process_environment(topics_env)),
        "upload": (
            [*upload, "--no-progress"],
            client_env,
        ),
        "worker": (
            ["worker"],
            process_environment(
                cluster.env("Deployment", "worker", tmp_path / "worker", wrong),
                bundle_dir=str(test_bundle("detector")),
                metrics_host="127.0.0.1",
                metrics_port=str(free_port()),
            ),
        ),
        "matcher": (
            ["matcher"],
            process_environment(
                cluster.env("StatefulSet", "matcher", tmp_path / "matcher", wrong),
                db_path=str(tmp_path / "individuals.sqlite"),
                metrics_host="127.0.0.1",
                metrics_port=str(free_port()),
            ),
        ),
        "export": (["export", str(tmp_path / "export.json")], client_env),
    }
    # All at once: each is bounded by COMMAND_TIMEOUT_S, none may wait for the others.
    running = {
        name: subprocess.Popen(
            [str(SNOWTRAP), *args],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for name, (args, env) in commands.items()
    }
    results: dict[str, tuple[int | None, str]] = {}
    for name, process in running.items():
        try:
            output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_process(process)  # type: ignore[arg-type]
            output, _ = process.communicate()
        results[name] = (process.returncode, output)

    for name, (code, output) in results.items():
        lines = [line for line in output.splitlines() if AUTH_FAILURE in line]
        assert code not in (0, None), f"{name} exited {code}:\n{output}"
        assert len(lines) == 1, f"{name}: {len(lines)} lines name the failure:\n{output}"
        assert f"user '{USER}'" in lines[0] and "SCRAM-SHA-512" in lines[0], lines[0]
        assert "Traceback" not in output, f"{name}:\n{output}"
        assert wrong not in output, f"{name} printed the password"
    assert not (tmp_path / "export.json").exists()


@pytest.mark.kafka
def test_plaintext_and_untrusted_tls_clients_are_refused(cluster: SecureCluster, tmp_path: Path):
    bootstrap = cluster.broker.bootstrap_servers
    assert list_topics(bootstrap, timeout_s=3) is None  # PLAINTEXT: no answer at all
    secure = KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password=cluster.password,
        ssl_cafile=str(cluster.broker.tls.ca_file),
    )
    secure.check_login(timeout_s=20)  # the right user and CA log in
    other_ca = write_broker_tls(tmp_path / "other").ca_file
    untrusted = secure.model_copy(update={"ssl_cafile": str(other_ca)})
    with pytest.raises(KafkaLoginError, match=r"TLS handshake failed.*CERTIFICATE_VERIFY_FAILED"):
        untrusted.check_login(timeout_s=20)


def test_the_broker_certificate_names_the_loopback_host_and_chains_to_its_own_ca(tmp_path: Path):
    from cryptography import x509

    tls = write_broker_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    leaf, chained_ca = x509.load_pem_x509_certificates(tls.keystore_file.read_bytes())
    assert chained_ca == ca
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert tls.keystore_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert tls.keystore_file.stat().st_mode & 0o077 == 0
    other = write_broker_tls(tmp_path / "other")
    assert other.ca_file.read_bytes() != tls.ca_file.read_bytes()  # a CA per broker


def test_scram_users_the_storage_tool_could_not_parse_are_refused():
    assert ScramUser("snowtrap", "s3cret").format_argument() == (
        "SCRAM-SHA-512=[name=snowtrap,password=s3cret]"
    )
    for name, password in (("a,b", "x"), ("user", "pa]ss"), ("user", ""), ("user", 'a"b')):
        with pytest.raises(ValueError, match="may not contain"):
            ScramUser(name, password)


def test_plaintext_settings_never_open_a_login_connection():
    # Port 9 (discard) on loopback: nothing listens, and a PLAINTEXT check must not even try.
    KafkaSettings(bootstrap_servers="127.0.0.1:9").check_login(timeout_s=0.01)


def test_a_ca_file_that_does_not_load_is_one_clear_error(tmp_path: Path):
    missing = tmp_path / "no-such-ca.crt"
    settings = KafkaSettings(
        bootstrap_servers="127.0.0.1:9",
        security_protocol="SASL_SSL",
        sasl_username=USER,
        sasl_password="x",
        ssl_cafile=str(missing),
    )
    with pytest.raises(KafkaLoginError, match=f"user '{USER}'.*TLS files.*No such file"):
        settings.check_login(timeout_s=5)
