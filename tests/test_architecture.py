"""The layers hold: `lint-imports` with the contracts in pyproject.toml, on the package laid out
as a wheel installs it (models/, training/ and stream/ mapped into snowtrap/).

import-linter walks the package's folder on disk, and in a checkout those three folders sit
beside `snowtrap/` rather than in it; so the test stages the wheel's layout (the same
package-dir mapping setuptools applies) in a temporary folder and lints that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]


def _stage_wheel_layout(out: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package, source in config["tool"]["setuptools"]["package-dir"].items():
        target = out.joinpath(*package.split("."))
        for path in (ROOT / source).rglob("*.py"):
            relative = path.relative_to(ROOT / source)
            if package == "snowtrap" or not relative.parts[0].startswith("."):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / relative)
    shutil.copy2(ROOT / "pyproject.toml", out / "pyproject.toml")


def _lint_imports(folder: Path) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), "--no-cache"],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layer_and_cycle_contracts_are_kept(tmp_path: Path) -> None:
    _stage_wheel_layout(tmp_path)
    assert (tmp_path / "snowtrap" / "models" / "bundle.py").is_file()
    result = _lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_the_contracts_catch_an_upward_import(tmp_path: Path) -> None:
    """A models module importing stream breaks the layers contract: the check can fail."""
    _stage_wheel_layout(tmp_path)
    with (tmp_path / "snowtrap" / "models" / "boxes.py").open("a") as handle:
        handle.write("\nfrom snowtrap.stream import contracts  # noqa: E402\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "snowtrap.models.boxes -> snowtrap.stream.contracts" in result.stdout


def test_serving_code_never_imports_torch(tmp_path: Path) -> None:
    """The worker image installs `.[serve]`, without torch: an import of it anywhere the
    serving entry points reach, even inside a function, breaks the `forbidden` contract."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (serving,) = [
        c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "forbidden"
    ]
    assert {"snowtrap.stream.worker.cli", "snowtrap.stream.matcher.app"} <= set(
        serving["source_modules"]
    )
    assert {"torch", "torchvision", "onnxscript"} <= set(serving["forbidden_modules"])
    serve = config["project"]["optional-dependencies"]["serve"]
    base = config["project"]["dependencies"]
    assert not [d for d in serve + base if d.startswith(("torch", "onnxscript", "onnx="))]

    _stage_wheel_layout(tmp_path)
    with (tmp_path / "snowtrap" / "models" / "decode.py").open("a") as handle:
        handle.write("\n\ndef _lazy() -> None:\n    import torch  # noqa: F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "snowtrap.models.decode -> torch" in result.stdout


def test_the_wheel_installs_one_namespace(tmp_path: Path) -> None:
    """Nothing named `models`, `training` or `stream` lands in site-packages: one `snowtrap`."""
    import zipfile

    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env["PIP_CONFIG_FILE"] = os.devnull
    subprocess.run(
        [*PIP_WHEEL, str(ROOT), "-w", str(tmp_path / "wheel")],
        check=True,
        env=env,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("snowtrap-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
        top_level = {name.split("/")[0] for name in archive.namelist()}
    assert top_level == {"snowtrap", wheel.name.split("-py3")[0] + ".dist-info"}
    assert (tmp_path / "site/snowtrap/training/report_template.html").is_file()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import snowtrap.models, snowtrap.stream, snowtrap.training, "
            "snowtrap.stream.worker.cli; print(snowtrap.models.__file__)",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "site/snowtrap/models/__init__.py")


def _installed_packages_on_disk() -> set[str]:
    """Every folder with an __init__.py under the package-dir mapping, as a package name."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = set()
    for package, source in config["tool"]["setuptools"]["package-dir"].items():
        for init in (ROOT / source).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / source)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            found.add(".".join([package, *relative.parts]))
    return found


def test_every_package_is_listed_in_pyproject_and_the_dockerfile() -> None:
    """A new package folder must be in `[tool.setuptools] packages` (else the wheel leaves it
    out) and in the Dockerfile's dependency-only install loop (else that install fails)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    on_disk = _installed_packages_on_disk()
    assert set(config["tool"]["setuptools"]["packages"]) == on_disk

    folder_to_package = {v: k for k, v in config["tool"]["setuptools"]["package-dir"].items()}
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    loop = dockerfile.split("RUN for p in ", 1)[1].split("; do", 1)[0].split()
    prepared = set()
    for folder in loop:
        top, *rest = folder.split("/")
        prepared.add(".".join([folder_to_package[top], *rest]))
    assert prepared == on_disk
