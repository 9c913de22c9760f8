"""The Helm chart and the container image definition, checked with the real tools.

`helm lint` and `helm template` (helm built by tools/install_system_tools.sh) for the default
values, the GPU values file, the SASL/TLS values file and a values set that turns every
optional part on; the rendered manifests validated offline against the Kubernetes JSON
schemas (kubernetes-validate) of the oldest and newest supported Kubernetes; the worker's and
the matcher's environment checked against their settings classes; credentials never in what
is rendered. The matcher is one StatefulSet pod with its SQLite database on a PVC: it renders
by default, not at all with matcher.enabled=false, and never with more than one replica
(tests/test_deploy_matcher.py). Rendering and the values cases: tests/helpers/chart.py.

A missing helm fails these tests: `make test` installs it first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import chart
from helpers.chart import (
    BOOTSTRAP,
    CASES,
    CHART,
    KUBE_VERSIONS,
    REPO_ROOT,
    SECRET_SENTINEL,
    assert_real_settings,
    by_kind,
    component_of,
    helm,
    one,
    render,
    render_notes,
    worker_container,
    worker_environment,
)

from snowtrap.stream.settings import TopicsSettings
from snowtrap.stream.topics import TOPIC_SPECS, TopicNames
from snowtrap.stream.worker.settings import WorkerSettings

pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)
case = chart.case
"""Every values case, rendered once per test module (a module-scoped fixture)."""
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
}
"""Operator CRDs: not in the Kubernetes schemas; checked by the assertions below instead."""


# --- helm lint / template / schemas ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_helm_lint(name: str):
    result = helm("lint", str(CHART), "--strict", "--namespace", "trap", *CASES[name])
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_manifests_match_the_kubernetes_schemas(case, kube_version: str):
    name, _ = case
    docs = render(CASES[name], kube_version)
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes "
                f"{kube_version}: {error.message} at {list(error.path)}"
            ) from None
        checked += 1
    assert checked >= 5


def test_the_release_has_what_an_operator_needs(case, tmp_path: Path):
    name, docs = case
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    pdb = one(docs, "PodDisruptionBudget")
    deployment = one(docs, "Deployment")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    container = worker_container(docs)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"] == ["worker"]
    notes = render_notes(CASES[name], tmp_path)
    assert f"replicas: {deployment['spec'].get('replicas', 1)}" in notes or "by KEDA" in notes
    assert "kubectl --namespace trap rollout status deployment/snow-snowtrap-worker" in notes
    assert "serving bundle" in notes and "/metrics on port 9400" in notes


def test_probes_and_scrape_annotations_point_at_the_worker_http_port(case):
    name, docs = case
    container = worker_container(docs)
    env = worker_environment(docs)
    port = int(env["SNOWTRAP_METRICS_PORT"])
    (metrics_port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert metrics_port["containerPort"] == port
    assert env["SNOWTRAP_METRICS_HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    if name in ("default", "gpu"):
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
    for monitor in by_kind(docs, "ServiceMonitor"):
        component = component_of(monitor)
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        service = one(docs, "Service", component)
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # The job name in the rules: .*snowtrap-worker.* / .*snowtrap-matcher.*
        assert service["metadata"]["name"].endswith(f"snowtrap-{component}-metrics")
    for monitor in by_kind(docs, "PodMonitor"):
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        assert monitor["metadata"]["name"].endswith(f"snowtrap-{component_of(monitor)}")
    assert by_kind(docs, "ServiceMonitor") or by_kind(docs, "PodMonitor") or annotations
    # Prometheus finds the matcher the same way as the workers.
    monitors = by_kind(docs, "ServiceMonitor") + by_kind(docs, "PodMonitor")
    assert {component_of(m) for m in monitors} in (set(), {"worker", "matcher"})


# --- the worker's environment is its settings class -----------------------------------------


def test_worker_env_names_are_real_settings_and_validate(case, monkeypatch):
    name, docs = case
    env = worker_environment(docs)
    settings = assert_real_settings(env, WorkerSettings, monkeypatch)
    assert str(settings.bundle_dir) == "/opt/snowtrap/bundle"
    assert settings.group_id == "snowtrap-worker"
    # Topics are provisioned by the chart (Job or Strimzi): the workers need no CreateTopics.
    assert settings.create_topics is False
    assert settings.topics == TopicNames()
    if name == "everything":
        assert settings.claim_check_roots == [Path("/claims")]
        assert settings.gate_threshold == 0.25
    if name == "sasl-tls":
        assert settings.security_protocol == "SASL_SSL"
        assert settings.sasl_mechanism == "SCRAM-SHA-512"
        assert settings.sasl_username == "snowtrap"
        assert settings.ssl_cafile == "/etc/snowtrap/kafka-ca/ca.crt"


def test_topics_job_runs_snowtrap_topics_with_the_workers_kafka_settings(monkeypatch):
    docs = render(CASES["sasl-tls"])
    (job,) = by_kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["topics", "--replication-factor", "3"]
    env = {e["name"]: e.get("value", "<secret>") for e in container["env"]}
    settings = assert_real_settings(env, TopicsSettings, monkeypatch)
    assert settings.partitions == {role: spec.partitions for role, spec in TOPIC_SPECS.items()}
    worker_env = {e["name"]: e for e in worker_container(docs)["env"]}
    for item in container["env"]:  # the same connection, the same Secret references
        if item["name"] != "SNOWTRAP_PARTITIONS":
            assert worker_env[item["name"]] == item
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["kafka-ca"] == "/etc/snowtrap/kafka-ca"


def test_topic_provisioning_modes():
    docs = render(CASES["everything"])
    topics = by_kind(docs, "KafkaTopic")
    assert not by_kind(docs, "Job")
    assert {t["spec"]["topicName"]: t["spec"]["partitions"] for t in topics} == {
        getattr(TopicNames(), role): spec.partitions for role, spec in TOPIC_SPECS.items()
    }
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] == "kafka" for t in topics)
    none = render([*CASES["default"], "--set", "topics.provisioning.mode=none"])
    assert not by_kind(none, "Job") and not by_kind(none, "KafkaTopic")
    assert worker_environment(none)["SNOWTRAP_CREATE_TOPICS"] == "true"


# --- credentials ----------------------------------------------------------------------------


def test_credentials_come_from_existing_secrets_and_never_appear_rendered(case):
    name, docs = case
    text = json.dumps(docs)
    assert SECRET_SENTINEL not in text
    assert not by_kind(docs, "Secret"), "the chart must not create Secrets"
    for doc in docs:
        for container in containers_of(doc):
            for item in container.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", item["name"]):
                    assert "value" not in item, f"{name}: {item['name']} set literally"
                    assert "secretKeyRef" in item["valueFrom"]
    if name in ("sasl-tls", "everything"):
        env = {e["name"]: e for e in worker_container(docs)["env"]}
        if name == "sasl-tls":
            ref = env["SNOWTRAP_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "snowtrap-kafka-user", "key": "password"}
        for kind in ("Deployment", "StatefulSet"):
            volumes = {v["name"]: v for v in one(docs, kind)["spec"]["template"]["spec"]["volumes"]}
            assert volumes["kafka-ca"]["secret"]["secretName"] == "kafka-cluster-ca-cert"


def containers_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def test_values_with_credentials_or_missing_requirements_are_refused():
    refused = {
        "kafka.bootstrapServers is required": [],
        "kafka.sasl.existingSecret is required": [
            "--set",
            f"kafka.bootstrapServers={BOOTSTRAP}",
            "--set",
            "kafka.securityProtocol=SASL_SSL",
        ],
        "worker.settings.sasl_password is set by the chart": [
            *CASES["default"],
            "--set",
            f"worker.settings.sasl_password={SECRET_SENTINEL}",
        ],
        "bundle.pvc.claimName is required": [*CASES["default"], "--set", "bundle.source=pvc"],
        "matcher.settings.db_path is set by the chart": [
            *CASES["default"],
            "--set",
            "matcher.settings.db_path=/tmp/individuals.sqlite",
        ],
        "matcher.consumerGroup must differ from kafka.consumerGroup": [
            *CASES["default"],
            "--set",
            "matcher.consumerGroup=snowtrap-worker",
        ],
    }
    for message, values in refused.items():
        result = helm("template", "snow", str(CHART), *values, check=False)
        assert result.returncode != 0 and message in result.stderr, (message, result.stderr)
        assert SECRET_SENTINEL not in result.stdout


# --- GPU, bundle sources, autoscaling -------------------------------------------------------


def test_gpu_values_request_a_gpu_and_the_gpu_image():
    docs = render(CASES["gpu"])
    container = worker_container(docs)
    assert container["image"].endswith("-gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["bundle"]["persistentVolumeClaim"] == {
        "claimName": "snowtrap-bundles",
        "readOnly": True,
    }
    cpu = worker_container(render(CASES["default"]))
    assert not cpu["image"].endswith("-gpu") and "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_bundle_from_an_init_container():
    docs = render(CASES["everything"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "ghcr.io/snowtrap/bundle:2026.11.1"
    assert {"name": "BUNDLE_DIR", "value": "/opt/snowtrap/bundle"} in init["env"]
    assert {v["name"]: v for v in pod["volumes"]}["bundle"]["emptyDir"]["sizeLimit"] == "2Gi"
    mounts = {m["name"]: m for m in worker_container(docs)["volumeMounts"]}
    assert mounts["bundle"]["readOnly"] is True


def test_autoscaling_on_consumer_lag_is_capped_at_the_partition_count():
    for values, expected_max in (
        (CASES["sasl-tls"], TOPIC_SPECS["images"].partitions),  # asks for 12, 6 partitions
        (CASES["everything"], 4),
        ([*CASES["default"], "--set", "autoscaling.enabled=true"], 6),
        (
            [
                *CASES["default"],
                "--set",
                "autoscaling.enabled=true",
                "--set",
                "autoscaling.maxReplicas=40",
                "--set",
                "topics.specs.images.partitions=24",
            ],
            24,
        ),
    ):
        docs = render(values)
        scaled = one(docs, "ScaledObject")
        assert scaled["spec"]["maxReplicaCount"] == expected_max
        assert "replicas" not in one(docs, "Deployment")["spec"]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == "snowtrap-worker"
        assert trigger["metadata"]["topic"] == "trap.images"
    sasl = render(CASES["sasl-tls"])
    (trigger,) = one(sasl, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    auth = one(sasl, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert refs["password"]["name"] == "snowtrap-kafka-user"
    assert refs["ca"]["name"] == "kafka-cluster-ca-cert"
    assert auth["spec"]["env"] == [
        {"parameter": "username", "name": "SNOWTRAP_SASL_USERNAME", "containerName": "worker"}
    ]


# --- the Dockerfile agrees with the chart ---------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_cpu_and_gpu_variants():
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE)
    assert stages == ["build", "runtime-base", "bundled", "runtime"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{values['podSecurityContext']['runAsGroup']}$", text, re.M)
    assert "ARG VARIANT=cpu" in text and "onnxruntime-gpu[cuda,cudnn]==" in text
    gpu_pin = re.search(r"onnxruntime-gpu\[cuda,cudnn\]==([\d.]+)", text)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert gpu_pin and f'"onnxruntime-gpu=={gpu_pin.group(1)}"' in pyproject
    assert f"SNOWTRAP_BUNDLE_DIR={values['bundle']['path']}" in text
    assert f"SNOWTRAP_METRICS_PORT={values['worker']['metricsPort']}" in text
    assert 'CMD ["worker"]' in text


# --- the provisioning Job's command against a real broker ------------------------------------


def test_snowtrap_topics_reads_the_jobs_environment(kafka_bootstrap: str, kafka_topic_names):
    """`snowtrap topics` as the chart's Job runs it: names and partitions from SNOWTRAP_*."""
    from kafka import KafkaAdminClient

    docs = render(CASES["default"])
    (job,) = by_kind(docs, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNOWTRAP_", "KAFKA_"))}
    env.update({e["name"]: e["value"] for e in container["env"]})
    env["SNOWTRAP_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    for role, name in kafka_topic_names.items():
        env[f"SNOWTRAP_TOPICS__{role.upper()}"] = name
    env["SNOWTRAP_PARTITIONS"] = json.dumps({"images": 2, "deadletter": 1})
    snowtrap = Path(sys.executable).with_name("snowtrap")
    result = subprocess.run(
        [str(snowtrap), *container["args"]], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{kafka_topic_names.images}: created" in result.stdout
    again = subprocess.run(
        [str(snowtrap), *container["args"]], env=env, capture_output=True, text=True, timeout=120
    )
    assert f"{kafka_topic_names.images}: present" in again.stdout
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {
            t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(kafka_topic_names))
        }
    finally:
        admin.close()
    assert described[kafka_topic_names.images] == 2
    assert described[kafka_topic_names.deadletter] == 1
    assert described[kafka_topic_names.detections] == TOPIC_SPECS["detections"].partitions
