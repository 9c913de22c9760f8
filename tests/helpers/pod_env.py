"""A container of the rendered Helm chart as a local process would see it in its pod.

The kubelet gives a container its env (literal values, ConfigMaps through `envFrom`, Secret
keys, the pod's own fields) and mounts Secret volumes as files. `pod_environment` does the
same on this machine: it resolves the env from the rendered documents and the Secrets a test
provides, writes each Secret volume the container mounts into a local folder, and points every
env value under a mount path at that folder. What a test then starts is the real command with
exactly the settings the chart renders, the cluster's address and secrets being the only
things that differ from a cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from snowtrap.stream.settings import KafkaSettings

Secrets = dict[str, dict[str, str]]
"""Secret name -> key -> value: the Secrets that exist in the namespace before the release."""


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment, StatefulSet or Job."""
    return workload["spec"]["template"]["spec"]


def container_named(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    return container


def pod_environment(
    docs: list[dict[str, Any]],
    workload: dict[str, Any],
    container_name: str,
    secrets: Secrets,
    volumes_dir: Path,
    pod_name: str,
) -> dict[str, str]:
    """The SNOWTRAP_* env the container gets, Secret volumes written under `volumes_dir`."""
    container = container_named(workload, container_name)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config_map,) = [
            d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
        ]
        env.update(config_map["data"])
    for item in container.get("env", []):
        env[item["name"]] = _env_value(item, secrets, pod_name)
    mounts = _write_secret_volumes(pod_spec(workload), container, secrets, volumes_dir)
    return {key: _under_local_mount(value, mounts) for key, value in env.items()}


def kafka_environment(env: dict[str, str]) -> dict[str, str]:
    """Only the Kafka connection of an env (`KafkaSettings` fields): what every client shares."""
    fields = set(KafkaSettings.model_fields)
    return {
        key: value
        for key, value in env.items()
        if key.removeprefix("SNOWTRAP_").split("__")[0].lower() in fields
    }


def process_environment(pod_env: dict[str, str], **local: str) -> dict[str, str]:
    """This process's env without any SNOWTRAP_*, then the pod's, then `local` overrides
    (SNOWTRAP_<NAME> for each name: ports and paths that a pod has from its image)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
    env.update(pod_env)
    env.update({f"SNOWTRAP_{name.upper()}": value for name, value in local.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _env_value(item: dict[str, Any], secrets: Secrets, pod_name: str) -> str:
    if "value" in item:
        return str(item["value"])
    source = item["valueFrom"]
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        try:
            return secrets[ref["name"]][ref["key"]]
        except KeyError:
            raise AssertionError(
                f"{item['name']} reads Secret {ref['name']!r} key {ref['key']!r}, "
                f"which the test does not provide"
            ) from None
    if source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
        return pod_name
    raise AssertionError(f"{item['name']}: no local value for {source}")


def _write_secret_volumes(
    spec: dict[str, Any], container: dict[str, Any], secrets: Secrets, volumes_dir: Path
) -> dict[str, Path]:
    """Mount path -> local folder for each Secret volume the container mounts."""
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        # Volumes not in the pod spec come from a StatefulSet's volumeClaimTemplates.
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        data = secrets.get(secret["secretName"])
        if data is None:
            raise AssertionError(f"volume {mount['name']} mounts Secret {secret['secretName']!r}")
        folder = volumes_dir / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        items = secret.get("items") or [{"key": key, "path": key} for key in data]
        for entry in items:
            (folder / entry["path"]).write_text(data[entry["key"]])
        mounts[mount["mountPath"].rstrip("/")] = folder
    return mounts


def _under_local_mount(value: str, mounts: dict[str, Path]) -> str:
    for mount_path, folder in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(folder) + value[len(mount_path) :]
    return value
