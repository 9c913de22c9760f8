"""The chart's matcher, checked with the real tools: one StatefulSet pod, its database on a PVC.

Rendered with `helm template` (tests/helpers/chart.py) for the same values cases as
tests/test_deploy.py: the matcher renders by default, not at all with matcher.enabled=false,
never with more than one replica; its environment is its settings class (MatcherSettings) with
the workers' Kafka connection; its probes and headless metrics Service; its persistence
options validated against the Kubernetes JSON schemas (kubernetes-validate).

A missing helm fails these tests: `make test` installs it first.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
from helpers import chart
from helpers.chart import (
    CASES,
    CHART,
    KUBE_VERSIONS,
    REPO_ROOT,
    assert_real_settings,
    by_kind,
    component_of,
    helm,
    matcher_container,
    matcher_environment,
    one,
    render,
    render_notes,
    worker_container,
    worker_environment,
)

from snowtrap.stream.matcher.settings import MatcherSettings
from snowtrap.stream.topics import TopicNames

pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)
case = chart.case
"""Every values case, rendered once per test module (a module-scoped fixture)."""


MATCHER_DB = Path("/var/lib/snowtrap/individuals.sqlite")


def test_matcher_is_one_statefulset_pod_with_its_database_on_a_pvc(case):
    name, docs = case
    statefulset = one(docs, "StatefulSet", "matcher")
    spec = statefulset["spec"]
    assert statefulset["metadata"]["name"] == "snow-snowtrap-matcher"
    assert spec["replicas"] == 1
    assert spec["podManagementPolicy"] == "OrderedReady"
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["fsGroup"] == 10001  # the PVC is writable by the uid
    # The database volume: the StatefulSet's own claim, mounted where SNOWTRAP_DB_PATH points.
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "db"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    size = "20Gi" if name == "everything" else "5Gi"
    assert claim["spec"]["resources"]["requests"]["storage"] == size
    if name == "everything":
        assert claim["spec"]["storageClassName"] == "fast-ssd"
    else:
        assert "storageClassName" not in claim["spec"]  # the cluster's default class
    container = matcher_container(docs)
    assert container["args"] == ["matcher"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["db"]["mountPath"] == str(MATCHER_DB.parent)
    assert not mounts["db"].get("readOnly")
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert "db" not in volumes  # it comes from the claim template
    # The CPU image even for a GPU release; no GPU, its own resources.
    assert container["image"] == "ghcr.io/snowtrap/snowtrap:0.1.0"
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]
    assert container["resources"]["limits"]["memory"] == "2Gi"
    # Nothing scales it: no HPA, and the KEDA ScaledObject targets the worker Deployment.
    assert not by_kind(docs, "HorizontalPodAutoscaler")
    for scaled in by_kind(docs, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "snow-snowtrap-worker")
    # The worker's objects never select the matcher's pod (and the other way round).
    matcher_labels = pod["metadata"]["labels"]
    worker_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for doc in docs:
        selector = doc.get("spec", {}).get("selector")
        if doc["kind"] in ("Service", "PodDisruptionBudget", "ServiceMonitor", "PodMonitor"):
            selector = selector.get("matchLabels", selector) if selector else None
            if selector is None:
                continue
            selects_matcher = selector.items() <= matcher_labels.items()
            selects_worker = selector.items() <= worker_labels.items()
            assert selects_matcher != selects_worker, doc["metadata"]["name"]
            assert selects_matcher == (component_of(doc) == "matcher"), doc["metadata"]["name"]


def test_matcher_probes_and_metrics_service(case):
    name, docs = case
    container = matcher_container(docs)
    env = matcher_environment(docs)
    # 9401, set explicitly: the image's ENV says SNOWTRAP_METRICS_PORT=9400 (the worker's).
    assert env["SNOWTRAP_METRICS_PORT"] == "9401"
    assert env["SNOWTRAP_METRICS_HOST"] == "0.0.0.0"
    assert "SNOWTRAP_METRICS_PORT=9400" in (REPO_ROOT / "Dockerfile").read_text()
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": 9401, "protocol": "TCP"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Building the index of a big database happens before the HTTP server answers.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    service = one(docs, "Service", "matcher")
    assert service["metadata"]["name"] == "snow-snowtrap-matcher-metrics"
    assert one(docs, "StatefulSet", "matcher")["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"  # headless: the StatefulSet's governing Service
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9401, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod = one(docs, "StatefulSet", "matcher")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    annotations = pod["metadata"]["annotations"]
    assert "checksum/config" in annotations
    if name in ("default", "gpu"):
        assert annotations["prometheus.io/port"] == "9401"


def test_matcher_env_names_are_real_settings_and_validate(case, monkeypatch):
    name, docs = case
    env = matcher_environment(docs)
    settings = assert_real_settings(env, MatcherSettings, monkeypatch)
    assert settings.db_path == MATCHER_DB
    assert settings.group_id == "snowtrap-matcher"
    assert settings.group_id != worker_environment(docs)["SNOWTRAP_GROUP_ID"]
    assert settings.metrics_port == 9401
    assert settings.create_topics is False  # provisioned by the chart's Job or Strimzi
    assert settings.topics == TopicNames()
    assert settings.batch_size == 8
    if name == "everything":
        assert settings.known_threshold == 5.5
    # The same Kafka connection as the workers: the same env items, Secret references included.
    worker_env = {e["name"]: e for e in worker_container(docs)["env"]}
    matcher_env = {e["name"]: e for e in matcher_container(docs)["env"]}
    kafka_names = {n for n in worker_env if n.startswith(("SNOWTRAP_BOOTSTRAP", "SNOWTRAP_SASL_"))}
    kafka_names |= {n for n in worker_env if n.startswith(("SNOWTRAP_SSL_", "SNOWTRAP_TOPICS__"))}
    kafka_names |= {"SNOWTRAP_SECURITY_PROTOCOL", "SNOWTRAP_CLIENT_ID"}
    assert kafka_names <= matcher_env.keys()
    for item in kafka_names:
        assert matcher_env[item] == worker_env[item], item
    worker_mounts = {m["name"]: m for m in worker_container(docs)["volumeMounts"]}
    matcher_mounts = {m["name"]: m for m in matcher_container(docs)["volumeMounts"]}
    for volume in ("kafka-ca", "kafka-client"):
        assert matcher_mounts.get(volume) == worker_mounts.get(volume)


def test_matcher_gets_the_sasl_tls_connection(monkeypatch):
    docs = render(CASES["sasl-tls"])
    env = matcher_environment(docs)
    assert env["SNOWTRAP_BOOTSTRAP_SERVERS"] == "kafka-kafka-bootstrap.kafka.svc:9093"
    settings = assert_real_settings(env, MatcherSettings, monkeypatch)
    assert settings.bootstrap_servers == "kafka-kafka-bootstrap.kafka.svc:9093"
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.sasl_username == "snowtrap"
    assert settings.ssl_cafile == "/etc/snowtrap/kafka-ca/ca.crt"
    items = {e["name"]: e for e in matcher_container(docs)["env"]}
    ref = items["SNOWTRAP_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "snowtrap-kafka-user", "key": "password"}
    mounts = {m["name"]: m["mountPath"] for m in matcher_container(docs)["volumeMounts"]}
    assert mounts["kafka-ca"] == "/etc/snowtrap/kafka-ca"
    (monitor,) = [m for m in by_kind(docs, "ServiceMonitor") if component_of(m) == "matcher"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_matcher_disabled_renders_no_matcher_objects(tmp_path: Path):
    values = [*CASES["sasl-tls"], "--set", "metrics.podMonitor.enabled=true"]
    enabled = render(values)
    disabled = render([*values, "--set", "matcher.enabled=false"])
    assert {component_of(d) for d in enabled} >= {"worker", "matcher"}
    assert not [d for d in disabled if component_of(d) == "matcher"]
    assert not by_kind(disabled, "StatefulSet")
    assert "matcher" not in json.dumps(disabled)
    # Everything else is the same release.
    rest = [d for d in enabled if component_of(d) != "matcher"]
    assert rest == disabled
    # Even replicas above 1 do not matter when the matcher is off.
    assert render([*values, "--set", "matcher.enabled=false", "--set", "matcher.replicas=3"])
    assert "Matcher:" not in render_notes(
        [*CASES["default"], "--set", "matcher.enabled=false"], tmp_path
    )


def test_matcher_replicas_cannot_exceed_one(tmp_path: Path):
    for replicas in ("2", "5"):
        result = helm(
            "template",
            "snow",
            str(CHART),
            *CASES["default"],
            "--set",
            f"matcher.replicas={replicas}",
            check=False,
        )
        assert result.returncode != 0
        assert f"matcher.replicas is {replicas} but must be 0 or 1" in result.stderr
        assert "SQLite database (/var/lib/snowtrap/individuals.sqlite) allows one writer" in (
            result.stderr
        )
    # (helm lint reports `fail` only as [INFO]: install, upgrade and template refuse it.)
    stopped = render([*CASES["default"], "--set", "matcher.replicas=0"])
    assert one(stopped, "StatefulSet", "matcher")["spec"]["replicas"] == 0
    notes = render_notes(CASES["default"], tmp_path)
    assert "Matcher: StatefulSet snow-snowtrap-matcher" in notes
    assert "replicas: 1 (never more" in notes
    assert "kubectl --namespace trap rollout status statefulset/snow-snowtrap-matcher" in notes
    assert "db-snow-snowtrap-matcher-0" in notes


def test_matcher_persistence_options():
    existing = render(
        [*CASES["default"], "--set", "matcher.persistence.existingClaim=restored-individuals"]
    )
    spec = one(existing, "StatefulSet", "matcher")["spec"]
    assert "volumeClaimTemplates" not in spec
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["db"]["persistentVolumeClaim"] == {"claimName": "restored-individuals"}
    static = render(
        [
            *CASES["default"],
            "--set",
            "matcher.persistence.storageClass=-",
            "--set",
            "matcher.persistence.mountPath=/data",
            "--set",
            "matcher.persistence.dbFile=leopards.db",
        ]
    )
    (claim,) = one(static, "StatefulSet", "matcher")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == ""
    assert matcher_environment(static)["SNOWTRAP_DB_PATH"] == "/data/leopards.db"
    mounts = {m["name"]: m["mountPath"] for m in matcher_container(static)["volumeMounts"]}
    assert mounts["db"] == "/data"
    for kube_version in KUBE_VERSIONS:
        for docs in (existing, static):
            kubernetes_validate.validate(one(docs, "StatefulSet"), kube_version, strict=True)
