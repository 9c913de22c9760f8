"""The chart's live sightings page (`live.enabled`): Deployment, Service and ConfigMap, checked
with the real `helm` and the Kubernetes JSON schemas (kubernetes-validate).

Off by default (nothing rendered); on, its environment is real `LiveSettings` (the shared Kafka
connection as SNOWTRAP_*, the page's own fields as SNOWTRAP_LIVE__*) that validates, SASL/TLS
reach it as they reach the worker, its probes and Service point at the page's port.
"""

from __future__ import annotations

import os

import kubernetes_validate
import pytest
from helpers.chart import (
    BOOTSTRAP,
    CASES,
    CHART,
    KUBE_VERSIONS,
    SECRET_SENTINEL,
    component_of,
    container_environment,
    deployment_container,
    helm,
    objects_of,
    one,
    render,
)

from snowtrap.stream.live.settings import LivePage, LiveSettings

pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)
ON = [*CASES["default"], "--set", "live.enabled=true"]


def test_off_by_default_and_the_rest_of_the_release_unchanged():
    default = render(CASES["default"])
    enabled = render(ON)
    assert not objects_of(default, "live")
    assert sorted(doc["kind"] for doc in objects_of(enabled, "live")) == [
        "ConfigMap", "Deployment", "Service",
    ]  # fmt: skip
    assert [d for d in enabled if component_of(d) != "live"] == default


def test_deployment_service_and_config_follow_the_kubernetes_schemas():
    cases = {"plain": ON, "sasl-tls": [*CASES["everything"], "--set", "live.enabled=true"]}
    for name, values in cases.items():
        for kube_version in KUBE_VERSIONS:
            for doc in objects_of(render(values, kube_version), "live"):
                try:
                    kubernetes_validate.validate(doc, kube_version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    problem = f"{name}, {doc['kind']} on {kube_version}: {error}"
                    raise AssertionError(problem) from error


def test_the_pod_runs_snowtrap_live_with_probes_and_service_on_the_page_port():
    docs = render(ON)
    deployment = one(docs, "Deployment", "live")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 1
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    container = deployment_container(docs, "live")
    assert container["args"] == ["live"]
    assert container["image"] == "ghcr.io/snowtrap/snowtrap:0.1.0"  # the CPU image
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8470)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = one(docs, "Service", "live")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (80, "http")


def test_the_environment_is_real_live_settings_that_validate(monkeypatch: pytest.MonkeyPatch):
    docs = render([*ON, "--set", "live.settings.root_path=/live",
                   "--set", "live.settings.sightings=48"])  # fmt: skip
    env = container_environment(docs, deployment_container(docs, "live"))
    for key in env:
        field, _, nested = key.removeprefix("SNOWTRAP_").lower().partition("__")
        assert key.startswith("SNOWTRAP_") and field in LiveSettings.model_fields, key
        if field == "live":
            assert nested in LivePage.model_fields, key
    env.pop("SNOWTRAP_LIVE__CLIENT_ID")  # the pod's name, known only in the pod
    for key in [k for k in os.environ if k.startswith("SNOWTRAP_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = LiveSettings.load()
    assert settings.bootstrap_servers == BOOTSTRAP
    assert settings.topics.crops == "trap.crops"
    page = settings.live
    assert (page.host, page.port, page.root_path, page.sightings) == ("0.0.0.0", 8470, "/live", 48)


def test_sasl_and_tls_reach_the_page_as_they_reach_the_worker_and_no_password_is_rendered():
    sasl = render([*CASES["sasl-tls"], "--set", "live.enabled=true"])
    env = {item["name"]: item for item in deployment_container(sasl, "live")["env"]}
    assert env["SNOWTRAP_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert "secretKeyRef" in env["SNOWTRAP_SASL_PASSWORD"]["valueFrom"]
    assert "/etc/snowtrap/kafka-ca" in {
        m["mountPath"] for m in deployment_container(sasl, "live")["volumeMounts"]
    }
    mutual = deployment_container(
        render([*CASES["everything"], "--set", "live.enabled=true"]), "live"
    )
    assert {m["mountPath"] for m in mutual["volumeMounts"]} >= {
        "/etc/snowtrap/kafka-ca", "/etc/snowtrap/kafka-client",
    }  # fmt: skip
    rendered = helm("template", "snow", str(CHART), *CASES["everything"],
                    "--set", "live.enabled=true").stdout  # fmt: skip
    assert SECRET_SENTINEL not in rendered


def test_host_and_port_come_only_from_the_chart_values():
    refused = helm("template", "snow", str(CHART), *ON, "--set", "live.settings.port=1234",
                   check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "live.settings.port is set by the chart" in refused.stderr
