"""Model bundles: how a trained model travels from training to the stream.

A bundle is a directory holding `manifest.json` (see `models.manifest`) and the files it
lists, each with its sha256. `write_bundle` builds the directory next to its destination
and renames it into place, so a reader never sees half a bundle. `load_bundle` refuses a
bundle whose format version it does not know or whose files do not match their hashes, and
opens one ONNX Runtime session per model. Neither imports torch.

CLI: `snowtrap bundle verify DIR` (hashes, sessions and a dry run), `snowtrap bundle
show DIR` (a summary of the manifest) and `snowtrap bundle zero-shot OUT` (the day-one bundle
from the pretrained backbone alone, `models.zero_shot`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from snowtrap.models.boxes import Detection
from snowtrap.models.inference import ImageBatch, create_session, run_classifier, run_detector
from snowtrap.models.manifest import FORMAT_VERSION, MANIFEST_NAME, BundleManifest, FileRecord

__all__ = [
    "BundleError",
    "ModelBundle",
    "current_git_commit",
    "file_sha256",
    "load_bundle",
    "read_manifest",
    "verify_bundle_files",
    "write_bundle",
]


class BundleError(Exception):
    """A bundle that cannot be used; `path` names the offending file."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def current_git_commit(directory: Path | None = None) -> str | None:
    """HEAD of the git checkout holding `directory` (for provenance), or None."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def _safe_member_name(name: str) -> str:
    """Bundle members are plain file names: no directories, no way out of the bundle."""
    if not name or name != Path(name).name or name in (".", "..", MANIFEST_NAME):
        raise ValueError(f"bad bundle file name {name!r}")
    return name


def write_bundle(
    directory: Path,
    manifest: BundleManifest,
    files: Mapping[str, Path | bytes],
    *,
    overwrite: bool = False,
) -> BundleManifest:
    """Write `files` (bundle name -> source path or bytes) and the manifest into `directory`.

    Fills in the sha256 and size of every file and of every model entry, checks that each
    model's file is among `files`, and returns the manifest as written.
    """
    directory = Path(directory)
    names = {_safe_member_name(name) for name in files}
    for role, entry in manifest.models.items():
        if entry.file not in names:
            raise ValueError(f"{role} file {entry.file!r} is not among the bundle files")
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        records: dict[str, FileRecord] = {}
        for name, source in files.items():
            target = staging / name
            if isinstance(source, bytes | bytearray):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
            records[name] = FileRecord(sha256=file_sha256(target), size_bytes=target.stat().st_size)
        models = {
            role: entry.model_copy(update={"sha256": records[entry.file].sha256})
            for role, entry in manifest.models.items()
        }
        final = manifest.model_copy(update={"files": records, "models": models})
        final = BundleManifest.model_validate(final.model_dump())  # re-check the whole thing
        (staging / MANIFEST_NAME).write_text(final.model_dump_json(indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def read_manifest(directory: Path) -> BundleManifest:
    """Parse and validate `manifest.json`; the format version is checked before anything else."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(path, "missing: not a model bundle") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"unreadable manifest: {exc}") from exc
    if not isinstance(raw, dict):
        raise BundleError(path, "manifest is not a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            path, f"unsupported format_version {version!r} (this code reads {FORMAT_VERSION})"
        )
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(path, f"invalid manifest: {exc}") from exc


def verify_bundle_files(directory: Path, manifest: BundleManifest) -> None:
    """Every listed file exists with its recorded size and sha256; model entries agree."""
    directory = Path(directory)
    for role, entry in manifest.models.items():
        record = manifest.files.get(entry.file)
        if record is None:
            raise BundleError(directory / entry.file, f"{role} file is not listed in 'files'")
        if entry.sha256 is not None and entry.sha256 != record.sha256:
            raise BundleError(directory / entry.file, f"{role} sha256 disagrees with 'files'")
    for name, record in manifest.files.items():
        path = directory / _safe_member_name(name)
        if not path.is_file():
            raise BundleError(path, "listed in the manifest but missing")
        if path.stat().st_size != record.size_bytes:
            raise BundleError(
                path, f"size {path.stat().st_size} bytes, manifest says {record.size_bytes}"
            )
        actual = file_sha256(path)
        if actual != record.sha256:
            raise BundleError(path, f"sha256 {actual} does not match manifest {record.sha256}")


@dataclass
class ModelBundle:
    """A verified bundle with open ONNX Runtime sessions, ready to classify and detect."""

    directory: Path
    manifest: BundleManifest
    sessions: dict[str, Any]
    providers: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def has_detector(self) -> bool:
        return "detector" in self.sessions

    def classify(self, images: ImageBatch, batch_size: int = 32) -> np.ndarray:
        """P(snow leopard) per RGB uint8 image (H, W, 3) of any size: float32 (N,)."""
        probabilities, _ = run_classifier(
            self.sessions["classifier"], self.manifest.models["classifier"], images, batch_size
        )
        return probabilities

    def classify_with_features(
        self, images: ImageBatch, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and pooled backbone features; needs a classifier exported with them."""
        probabilities, features = run_classifier(
            self.sessions["classifier"], self.manifest.models["classifier"], images, batch_size
        )
        if features is None:
            raise BundleError(self.directory, "this classifier was exported without features")
        return probabilities, features

    def detect(self, images: ImageBatch, min_score: float | None = None) -> list[list[Detection]]:
        """Detections per image, boxes normalised (x, y, w, h) on each image as given.

        Uses the detector's `io` contract from the manifest; `min_score` defaults to the
        bundle's `thresholds.detection_confidence`.
        """
        if not self.has_detector:
            raise BundleError(self.directory / MANIFEST_NAME, "this bundle has no detector")
        threshold = (
            self.manifest.thresholds.detection_confidence if min_score is None else min_score
        )
        return run_detector(
            self.sessions["detector"],
            self.manifest.models["detector"],
            self.manifest.class_names,
            images,
            threshold,
        )


def load_bundle(
    directory: Path,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
) -> ModelBundle:
    """Verify a bundle (format version, every sha256) and open its ONNX Runtime sessions.

    `providers` defaults to CUDA first when onnxruntime offers it, then CPU.
    `intra_op_threads` defaults to the CPUs this process may use (cgroup quota included).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_bundle_files(directory, manifest)
    sessions: dict[str, Any] = {}
    for role, entry in manifest.models.items():
        path = directory / entry.file
        try:
            sessions[role] = create_session(path, providers, intra_op_threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(path, f"ONNX Runtime cannot load the {role}: {exc}") from exc
        graph_inputs = [i.name for i in sessions[role].get_inputs()]
        graph_outputs = {o.name for o in sessions[role].get_outputs()}
        declared_inputs = [spec.name for spec in entry.inputs]
        if graph_inputs != declared_inputs:
            raise BundleError(path, f"graph inputs {graph_inputs}, manifest {declared_inputs}")
        missing = {spec.name for spec in entry.outputs} - graph_outputs
        if missing:
            raise BundleError(path, f"manifest outputs {sorted(missing)} not in the graph")
    used = sessions["classifier"].get_providers()
    return ModelBundle(directory, manifest, sessions, used)
