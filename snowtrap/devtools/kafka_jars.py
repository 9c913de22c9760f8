"""The local broker's jars and settings: resolved from Maven Central once, cached.

`tools/kafka/pom.xml` names the Kafka version; the jars land in `$SNOWTRAP_CACHE_DIR/kafka/libs`
keyed by the pom's hash, so a changed pom resolves again and an unchanged one never does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.devtools.local_processes import file_lock

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


class LocalKafkaSettings(SnowtrapSettings):
    """Where the broker's jars are cached and which tools build and run it (SNOWTRAP_*)."""

    cache_dir: Path = REPO_ROOT / ".cache"
    java: str = "java"
    mvn: str = "mvn"
    kafka_pom: Path = REPO_ROOT / "tools" / "kafka" / "pom.xml"
    kafka_heap: str = "512m"

    @property
    def kafka_cache_dir(self) -> Path:
        return Path(self.cache_dir) / "kafka"


class KafkaBrokerError(RuntimeError):
    """The local broker could not be resolved, started or stopped."""


def resolve_kafka_classpath(settings: LocalKafkaSettings | None = None) -> str:
    """Resolve the broker's jars with Maven once per pom content; return a `java -cp` value.

    Concurrent callers (parallel test sessions, other engineers) serialise on a lock file, and
    the jars land in place only when Maven finished, so a half-copied directory is never used.
    """
    settings = settings or LocalKafkaSettings()
    pom = Path(settings.kafka_pom)
    if not pom.is_file():
        raise KafkaBrokerError(f"Kafka pom not found: {pom}")
    pom_hash = hashlib.sha256(pom.read_bytes()).hexdigest()
    cache = settings.kafka_cache_dir
    libs = cache / "libs"
    marker = libs / ".pom-sha256"
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / ".resolve.lock"):
        if marker.is_file() and marker.read_text().strip() == pom_hash:
            return f"{libs}{os.sep}*"
        if shutil.which(settings.mvn) is None:
            raise KafkaBrokerError(
                f"Maven ({settings.mvn!r}) is not on PATH; it is needed once to fetch the Kafka "
                f"jars into {libs} (or set KAFKA_BOOTSTRAP_SERVERS to use another broker)"
            )
        partial = cache / f"libs.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            settings.mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
        ]
        log.info("resolving Kafka jars: %s", " ".join(command))
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            shutil.rmtree(partial, ignore_errors=True)
            output = (result.stdout + result.stderr).strip()[-4000:]
            raise KafkaBrokerError(
                f"Maven could not resolve the Kafka jars (exit {result.returncode}):\n{output}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        marker.write_text(pom_hash + "\n")
        log.info("Kafka jars resolved in %.1f s into %s", time.monotonic() - started, libs)
    return f"{libs}{os.sep}*"
