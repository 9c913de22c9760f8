"""The chart's detection API (`serve.enabled`): Deployment, Service and HPA, checked with the
real `helm` and the Kubernetes JSON schemas (kubernetes-validate).

Off by default (nothing rendered); on, its environment is real `ServeSettings` fields that
validate, its probes and Service point at the API's port, the API key comes only from a
Secret, the HPA scales on CPU and optionally on request latency, and the bundle comes from the
same sources as the workers'.
"""

from __future__ import annotations

import json
import os

import kubernetes_validate
import pytest
from helpers.chart import (
    CASES,
    CHART,
    KUBE_VERSIONS,
    SECRET_SENTINEL,
    by_kind,
    component_of,
    container_environment,
    deployment_container,
    helm,
    objects_of,
    one,
    render,
)

from snowtrap.stream.serve.settings import ServeSettings

pytestmark = pytest.mark.filterwarnings(
    "ignore:open_text is deprecated:DeprecationWarning"  # kafka-python 3.0.12's resources
)
ON = [*CASES["default"], "--set", "serve.enabled=true"]


def test_off_by_default_and_the_rest_of_the_release_unchanged():
    default = render(CASES["default"])
    enabled = render(ON)
    assert not objects_of(default, "serve")
    kinds = sorted(doc["kind"] for doc in objects_of(enabled, "serve"))
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"]
    assert [d for d in enabled if component_of(d) != "serve"] == default


def test_deployment_service_and_hpa_follow_the_kubernetes_schemas():
    cases = {
        "cpu": ON,
        "latency, key, pvc bundle": [
            *ON,
            "--set",
            "serve.autoscaling.latency.enabled=true",
            "--set",
            "serve.apiKey.existingSecret=snowtrap-api",
            "--set",
            "bundle.source=pvc",
            "--set",
            "bundle.pvc.claimName=bundles",
        ],
        "init container, no autoscaling": [
            *ON,
            "--set",
            "serve.autoscaling.enabled=false",
            "--set",
            "bundle.source=initContainer",
            "--set",
            "bundle.initContainer.image=ghcr.io/snowtrap/bundle:1",
        ],
    }
    for name, values in cases.items():
        for kube_version in KUBE_VERSIONS:
            for doc in objects_of(render(values, kube_version), "serve"):
                try:
                    kubernetes_validate.validate(doc, kube_version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    problem = f"{name}, {doc['kind']} on {kube_version}: {error}"
                    raise AssertionError(problem) from error


def test_the_pods_run_snowtrap_serve_with_probes_and_service_on_the_api_port():
    docs = render(ON)
    deployment = one(docs, "Deployment", "serve")
    pod = deployment["spec"]["template"]
    assert deployment["metadata"]["name"] == "snow-snowtrap-serve"
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    container = deployment_container(docs, "serve")
    assert container["args"] == ["serve"]
    assert container["image"] == "ghcr.io/snowtrap/snowtrap:0.1.0"  # the CPU image
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8480)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}  # bundle in image
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8480"
    service = one(docs, "Service", "serve")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (80, "http")
    # The API needs no Kafka: nothing of the cluster's connection reaches it.
    assert not any("BOOTSTRAP" in key for key in container_environment(docs, container))


def test_the_environment_is_real_serve_settings_that_validate(monkeypatch: pytest.MonkeyPatch):
    docs = render([*ON, "--set", "serve.settings.gate_threshold=0.25",
                   "--set", "serve.settings.root_path=/detector"])  # fmt: skip
    env = container_environment(docs, deployment_container(docs, "serve"))
    for key in env:
        assert key.startswith("SNOWTRAP_SERVE_"), key
        field = key.removeprefix("SNOWTRAP_SERVE_").lower()
        assert field in ServeSettings.model_fields, key
    for key in [k for k in os.environ if k.startswith("SNOWTRAP_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ServeSettings.load()
    assert str(settings.bundle_dir) == "/opt/snowtrap/bundle"
    assert (settings.host, settings.port) == ("0.0.0.0", 8480)
    assert (settings.max_batch, settings.max_wait_ms, settings.queue_size) == (8, 0.0, 64)
    assert settings.gate_threshold == 0.25 and settings.root_path == "/detector"
    assert settings.api_key is None


def test_the_api_key_comes_only_from_a_secret():
    docs = render([*ON, "--set", "serve.apiKey.existingSecret=snowtrap-api",
                   "--set", "serve.apiKey.key=token"])  # fmt: skip
    (item,) = [
        e
        for e in deployment_container(docs, "serve")["env"]
        if e["name"] == "SNOWTRAP_SERVE_API_KEY"
    ]
    assert item["valueFrom"] == {"secretKeyRef": {"name": "snowtrap-api", "key": "token"}}
    refused = helm("template", "snow", str(CHART), *ON, "--set",
                   f"serve.settings.api_key={SECRET_SENTINEL}", check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "serve.settings.api_key is set by the chart" in refused.stderr
    assert SECRET_SENTINEL not in refused.stdout


def test_the_hpa_scales_on_cpu_and_optionally_on_request_latency():
    cpu = one(render(ON), "HorizontalPodAutoscaler", "serve")["spec"]
    assert cpu["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "snow-snowtrap-serve",
    }
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (1, 6)
    (metric,) = cpu["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}

    latency = one(
        render([*ON, "--set", "serve.autoscaling.latency.enabled=true"]),
        "HorizontalPodAutoscaler",
        "serve",
    )["spec"]
    pods = [m["pods"] for m in latency["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "metric": {"name": "snowtrap_serve_request_duration_p99_seconds"},
            "target": {"type": "AverageValue", "averageValue": "40m"},
        }
    ]

    fixed = render([*ON, "--set", "serve.autoscaling.enabled=false", "--set", "serve.replicas=3"])
    assert not by_kind(objects_of(fixed, "serve"), "HorizontalPodAutoscaler")
    assert one(fixed, "Deployment", "serve")["spec"]["replicas"] == 3
    bad = helm("template", "snow", str(CHART), *ON, "--set", "serve.autoscaling.minReplicas=9",
               check=False)  # fmt: skip
    assert bad.returncode != 0 and "minReplicas must not exceed" in bad.stderr


def test_the_bundle_comes_from_the_workers_sources():
    pvc = render([*ON, "--set", "bundle.source=pvc", "--set", "bundle.pvc.claimName=bundles"])
    mounts = {m["name"]: m for m in deployment_container(pvc, "serve")["volumeMounts"]}
    assert mounts["bundle"] == {
        "name": "bundle",
        "mountPath": "/opt/snowtrap/bundle",
        "readOnly": True,
    }
    volumes = one(pvc, "Deployment", "serve")["spec"]["template"]["spec"]["volumes"]
    claims = [v["persistentVolumeClaim"] for v in volumes if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "bundles", "readOnly": True}]
    init = render([*ON, "--set", "bundle.source=initContainer",
                   "--set", "bundle.initContainer.image=ghcr.io/snowtrap/bundle:1"])  # fmt: skip
    pod = one(init, "Deployment", "serve")["spec"]["template"]["spec"]
    (copier,) = pod["initContainers"]
    assert copier["image"] == "ghcr.io/snowtrap/bundle:1"
    assert "serve" in json.dumps(pod["containers"][0]["args"])
