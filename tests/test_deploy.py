"""The Helm chart and the container image definition, checked with the real tools.

`helm lint` and `helm template` (helm built by tools/install_system_tools.sh) for the default
values, the GPU values file, the SASL/TLS values file and a values set that turns every
optional part on; the rendered manifests validated offline against the Kubernetes JSON
schemas (kubernetes-validate) of the oldest and newest supported Kubernetes; the worker's and
the matcher's environment checked against their settings classes; credentials never in what
is rendered. The matcher is one StatefulSet pod with its SQLite database on a PVC: it renders
by default, not at all with matcher.enabled=false, and never with more than one replica.

A missing helm fails these tests: `make test` installs it first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from snowtrap.stream.matcher.settings import MatcherSettings
from snowtrap.stream.settings import TopicsSettings
from snowtrap.stream.topics import TOPIC_SPECS, TopicNames
from snowtrap.stream.worker.settings import WorkerSettings

pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)
REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "helm" / "snowtrap"
VALUES_DIR = REPO_ROOT / "helm" / "values"
KUBE_VERSIONS = ("1.25.0", "1.37.0")
"""The chart's kubeVersion floor and the newest schemas kubernetes-validate ships."""
BOOTSTRAP = "kafka-bootstrap.kafka.svc:9092"
SECRET_SENTINEL = "hunter2-never-render-me"

CASES: dict[str, list[str]] = {
    "default": ["--set", f"kafka.bootstrapServers={BOOTSTRAP}"],
    "gpu": ["-f", str(VALUES_DIR / "gpu.yaml")],
    "sasl-tls": ["-f", str(VALUES_DIR / "sasl-tls.yaml")],
    # Every optional part on: init-container bundle, Strimzi topics, PodMonitor, KEDA with
    # mutual TLS, extra env; plus values that must NOT reach the output (a password).
    "everything": [
        "-f",
        str(VALUES_DIR / "sasl-tls.yaml"),
        "--set",
        "kafka.securityProtocol=SSL",
        "--set",
        "kafka.tls.clientCertSecret=snowtrap-client-tls",
        "--set",
        f"kafka.sasl.password={SECRET_SENTINEL}",
        "--set",
        "bundle.source=initContainer",
        "--set",
        "bundle.initContainer.image=ghcr.io/snowtrap/bundle:2026.11.1",
        "--set",
        "topics.provisioning.mode=strimzi",
        "--set",
        "topics.provisioning.strimziCluster=kafka",
        "--set",
        "metrics.serviceMonitor.enabled=false",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "autoscaling.maxReplicas=4",
        "--set",
        "worker.settings.claim_check_roots[0]=/claims",
        "--set",
        "worker.settings.gate_threshold=0.25",
        "--set",
        "gpu.enabled=true",
        "--set",
        "matcher.settings.known_threshold=5.5",
        "--set",
        "matcher.persistence.storageClass=fast-ssd",
        "--set",
        "matcher.persistence.size=20Gi",
    ],
}
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
}
"""Operator CRDs: not in the Kubernetes schemas; checked by the assertions below instead."""


def helm_binary() -> str:
    cached = REPO_ROOT / ".cache" / "bin" / "helm"
    found = str(cached) if cached.is_file() else shutil.which("helm")
    if found is None:
        pytest.fail(
            "helm not found (.cache/bin/helm or PATH): run `bash tools/install_system_tools.sh` "
            "(make test does)",
            pytrace=False,
        )
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def render(values: list[str], kube_version: str = KUBE_VERSIONS[-1]) -> list[dict[str, Any]]:
    out = helm(
        "template",
        "snow",
        str(CHART),
        "--namespace",
        "trap",
        "--kube-version",
        kube_version,
        "--include-crds",
        *values,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield request.param, render(CASES[request.param])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = by_kind(docs, kind)
    if component is not None:
        found = [
            d for d in found if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"
    ]
    return container


def matcher_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "StatefulSet", "matcher")["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "matcher"
    return container


def component_of(doc: dict[str, Any]) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


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


def render_notes(values: list[str], tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it (install needs a cluster; template skips NOTES)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}\n'
    )
    out = helm(
        "template",
        "snow",
        str(chart),
        "--namespace",
        "trap",
        "-s",
        "templates/zz-notes.yaml",
        *values,
    ).stdout
    return yaml.safe_load(out)["notes"]


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


def worker_environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The worker's SNOWTRAP_* env: ConfigMap (envFrom) + literal env; secrets as placeholders."""
    return container_environment(docs, worker_container(docs))


def matcher_environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    return container_environment(docs, matcher_container(docs))


def container_environment(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config_map,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
        env.update(config_map["data"])
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # a Secret or the pod's own fields: only the pod knows the value
            env[item["name"]] = f"<from {next(iter(item['valueFrom']))}>"
    return env


def assert_real_settings(env: dict[str, str], settings_class: type, monkeypatch) -> Any:
    """Every SNOWTRAP_* name is a field (nested with __), and the values validate."""
    fields = settings_class.model_fields
    for key in env:
        assert key.startswith("SNOWTRAP_"), key
        field, _, nested = key.removeprefix("SNOWTRAP_").lower().partition("__")
        assert field in fields, f"{key}: {settings_class.__name__} has no field {field!r}"
        if nested:
            assert field == "topics" and nested in {role for role, _ in TopicNames().items()}, key
    for key in [k for k in os.environ if k.startswith("SNOWTRAP_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_class.load()


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


# --- the matcher: one StatefulSet pod, its database on a PVC ---------------------------------


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
