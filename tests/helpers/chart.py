"""The Helm chart rendered with the real `helm`, and what the deploy tests read from it.

`helm template` / `helm lint` (helm built by tools/install_system_tools.sh, .cache/bin/helm or
PATH), the values cases the tests render (default, GPU, SASL/TLS, everything on), the `case`
fixture that renders each of them once per test module, and small lookups into the rendered
documents: one object of a kind, the worker's and matcher's containers and environments, and
the check that an environment is real settings of a settings class.

Test modules take the `case` fixture by name: `case = chart.case` at module level.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from snowtrap.stream.topics import TopicNames

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def objects_of(docs: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    """The rendered objects of one component (serve, live, matcher...)."""
    return [doc for doc in docs if component_of(doc) == component]


def deployment_container(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The one container of a component's Deployment."""
    (container,) = one(docs, "Deployment", component)["spec"]["template"]["spec"]["containers"]
    return container


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
