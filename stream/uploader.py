"""The camera-station uploader: an SD card's images into `trap.images`, each exactly once.

`snowtrap upload PATH... --camera-id ID --station-id ID` walks the folders in sorted order,
sniffs every file, and publishes the images with an idempotent kafka-python producer
(acks=all, key = camera id, so one camera's bursts stay in order on one partition).

What makes it safe to run again and again on the same card:

- a local SQLite ledger (`stream.ledger`) records an image only once Kafka acknowledged it;
  a re-run after a crash or a lost link skips what the ledger has and sends the rest;
- the image id is the sha256 of the bytes, so a copy of an already-sent file under another
  name or folder is skipped too;
- files that are not images (no known signature), empty or unreadable are reported by name
  with the reason and skipped, never fatal. Files that look like images but are corrupt
  inside are sent: the worker decodes them properly and dead-letters them with a reason;
- images over the message limit travel as a claim-check URI (`file://` or `s3://`) with an
  empty value, so the broker never sees a record it would refuse.

Exit codes: 0 done (rejected files included), 1 Kafka could not be reached at all (nothing
sent), 2 bad settings, 3 incomplete: some images were not acknowledged (link lost), re-run;
130 interrupted (Ctrl-C, SIGTERM) after recording the sends that were in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import stat
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from pydantic import Field, model_validator

from snowtrap.core.settings import SettingsFileError, SnowtrapSettings
from snowtrap.models.decode import read_capture_time, sniff_image_format
from snowtrap.stream.contracts import TrapImage, build_image_message, image_id_of
from snowtrap.stream.ledger import Acknowledgement, LedgerError, UploadLedger, default_ledger_path
from snowtrap.stream.metrics import UploaderMetrics
from snowtrap.stream.settings import KafkaSettings
from snowtrap.stream.topics import MAX_MESSAGE_BYTES, TopicProvisioningError, ensure_topics

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

EXIT_OK = 0
EXIT_BROKER_UNREACHABLE = 1
EXIT_BAD_SETTINGS = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130

CONTENT_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "HEIF": "image/heif",
}
"""Content type per sniffed format. Formats the worker cannot decode are still sent: the
worker owns the format policy and dead-letters them with a reason, nothing is lost."""

CAPTURE_TIME_READ_BYTES = 4 * MiB
"""Files larger than this are searched for EXIF in their first bytes only (EXIF sits in
the header; the decoder refuses to open a very large file whole)."""

Result = Literal["sent", "skipped", "rejected", "failed"]


class UploaderSettings(SnowtrapSettings, KafkaSettings):
    """Everything `snowtrap upload` reads: Kafka connection fields plus the uploader's own.

    Env vars `SNOWTRAP_<FIELD>` (e.g. `SNOWTRAP_BOOTSTRAP_SERVERS`, `SNOWTRAP_TOPICS__IMAGES`)
    override the YAML file given with `--config`; command-line flags override both.
    """

    camera_id: str = ""
    station_id: str = ""
    ledger_path: Path = Field(default_factory=default_ledger_path)
    claim_check_store: str | None = None
    """Where images over the limit go: a directory (path or `file://` URI) or `s3://bucket/
    prefix`. None: the image stays where it is and the claim check is its own file:// URI."""
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=64 * KiB)
    """The images topic's `max.message.bytes`; a larger record would be refused."""
    header_room_bytes: int = Field(default=64 * KiB, ge=0)
    """Kept free under `max_message_bytes` for headers, key and batch framing."""
    max_in_flight: int = Field(default=32, ge=1)
    """Sends awaiting acknowledgement at once; bounds memory (images are large)."""
    max_pending_bytes: int = Field(default=64 * MiB, ge=1)
    """Bytes awaiting acknowledgement at once (at least one image is always allowed)."""
    connect_timeout_s: float = Field(default=30.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    delivery_timeout_s: float = Field(default=120.0, gt=0)
    """How long one image may spend in retries before the link counts as lost."""
    retry_backoff_ms: int = Field(default=200, ge=0)
    create_topics: bool = True
    """Create missing snowtrap topics first (needs CreateTopics rights on the cluster)."""
    client_id: str = "snowtrap-uploader"
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    metrics_textfile: Path | None = None
    """Write the final metrics here in Prometheus text format (node-exporter textfile)."""
    progress: bool = True

    @model_validator(mode="after")
    def _room_under_limit(self) -> UploaderSettings:
        if self.header_room_bytes >= self.max_message_bytes:
            raise ValueError("header_room_bytes must be smaller than max_message_bytes")
        return self

    @property
    def max_inline_bytes(self) -> int:
        """Largest image sent as the message value; anything larger goes as a claim check."""
        return self.max_message_bytes - self.header_room_bytes

    def producer_config(self) -> dict[str, Any]:
        """kafka-python KafkaProducer arguments: idempotent, acks=all, sized for images."""
        request_timeout_ms = int(self.request_timeout_s * 1000)
        linger_ms = 5
        return {
            **self.kafka_python_config(),
            "client_id": self.client_id,
            "enable_idempotence": True,
            "acks": "all",
            "retry_backoff_ms": self.retry_backoff_ms,
            "reconnect_backoff_max_ms": 10_000,
            "request_timeout_ms": request_timeout_ms,
            "delivery_timeout_ms": max(
                int(self.delivery_timeout_s * 1000), request_timeout_ms + linger_ms
            ),
            "linger_ms": linger_ms,
            # A batch must fit the topic limit; a single larger record gets a batch of its own.
            "batch_size": min(1 * MiB, self.max_inline_bytes),
            "max_request_size": max(self.max_message_bytes, MAX_MESSAGE_BYTES),
            "max_in_flight_requests_per_connection": 5,  # the most idempotence allows
            "allow_auto_create_topics": False,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
            "max_block_ms": int(self.connect_timeout_s * 1000),
        }


# --- finding files ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A path the uploader will look at; `problem` is set when it cannot even be tried."""

    path: Path
    file_name: str
    """Name sent in the `file-name` header: relative to the folder given on the command line
    (forward slashes), or the base name for a file given directly."""
    problem: str | None = None


def find_files(paths: Sequence[Path | str]) -> list[Candidate]:
    """Every file under `paths`, in a deterministic order (arguments as given, then sorted)."""
    found: list[Candidate] = []
    for raw in paths:
        root = Path(raw).expanduser()
        if root.is_dir():
            found.extend(_walk(root))
        elif root.exists():
            found.append(Candidate(root.absolute(), root.name))
        else:
            found.append(Candidate(root.absolute(), root.name, "no such file or directory"))
    return found


def _walk(root: Path) -> Iterator[Candidate]:
    errors: list[OSError] = []
    for directory, dirnames, filenames in os.walk(root, onerror=errors.append):
        dirnames.sort()
        here = Path(directory)
        for dirname in list(dirnames):
            if (here / dirname).is_symlink():
                # Not followed (loops); said out loud so nothing vanishes silently.
                dirnames.remove(dirname)
                yield _candidate(root, here / dirname, "directory symlink, not followed")
        for filename in sorted(filenames):
            yield _candidate(root, here / filename)
    for error in errors:
        path = Path(error.filename or root)
        yield _candidate(root, path, f"cannot list directory: {error.strerror or error}")


def _candidate(root: Path, path: Path, problem: str | None = None) -> Candidate:
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        name = path.name
    return Candidate(path.absolute(), name, problem)


# --- claim checks -------------------------------------------------------------------------


class ClaimCheckError(RuntimeError):
    """The claim-check store is misconfigured or an image could not be stored in it."""


class ClaimCheckStore(Protocol):
    def put(self, path: Path, image_id: str) -> str:
        """Store the image (if needed) and return the URI the worker fetches it from."""
        ...


class OwnPathStore:
    """No store configured: the image stays on disk and the claim check points at it."""

    def put(self, path: Path, image_id: str) -> str:
        return path.resolve().as_uri()


class DirectoryStore:
    """Copies into a directory (often a shared mount), named by image id: re-puts are free."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ClaimCheckError(f"claim-check directory {directory}: {error}") from error

    def put(self, path: Path, image_id: str) -> str:
        target = self.directory / f"{image_id}{path.suffix.lower()}"
        if not (target.is_file() and target.stat().st_size == path.stat().st_size):
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
            try:
                shutil.copyfile(path, partial)
                os.replace(partial, target)  # readers never see a half-copied image
            except OSError as error:
                partial.unlink(missing_ok=True)
                raise ClaimCheckError(f"copying {path} to {target}: {error}") from error
        return target.resolve().as_uri()


class S3Store:
    """Uploads to `s3://bucket/prefix/<image id><suffix>` with boto3 (an optional extra)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        try:
            import boto3  # type: ignore[import-not-found, unused-ignore]
        except ImportError as error:
            raise ClaimCheckError(
                "claim_check_store is an s3:// URI but boto3 is not installed "
                "(pip install boto3), or use a directory for claim checks"
            ) from error
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = boto3.client("s3")

    def put(self, path: Path, image_id: str) -> str:
        key = "/".join(part for part in (self.prefix, f"{image_id}{path.suffix.lower()}") if part)
        try:
            self._client.upload_file(str(path), self.bucket, key)
        except Exception as error:  # boto3's errors share no useful base class
            raise ClaimCheckError(
                f"uploading {path} to s3://{self.bucket}/{key}: {error}"
            ) from error
        return f"s3://{self.bucket}/{key}"


def claim_check_store_for(setting: str | None) -> ClaimCheckStore:
    """The store a `claim_check_store` setting names (None, a directory, file://, s3://)."""
    if not setting:
        return OwnPathStore()
    parsed = urlparse(setting)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ClaimCheckError(f"claim_check_store {setting!r}: no bucket in the s3:// URI")
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ClaimCheckError(f"claim_check_store {setting!r}: file:// URIs must be local")
        return DirectoryStore(Path(url2pathname(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ClaimCheckError(
            f"claim_check_store {setting!r}: use a directory, file:// or s3:// URI"
        )
    return DirectoryStore(Path(setting).expanduser())


# --- outcomes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file."""

    path: Path
    result: Result
    reason: str = ""
    image_id: str | None = None
    size_bytes: int = 0
    partition: int | None = None
    offset: int | None = None
    claim_check: str | None = None


@dataclass
class UploadSummary:
    """Per-file outcomes of one run, plus the error that stopped it before sending, if any."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    broker_error: str | None = None
    settings_error: str | None = None
    interrupted: bool = False

    def of(self, result: Result) -> list[FileOutcome]:
        return [outcome for outcome in self.outcomes if outcome.result == result]

    @property
    def sent(self) -> list[FileOutcome]:
        return self.of("sent")

    @property
    def skipped(self) -> list[FileOutcome]:
        return self.of("skipped")

    @property
    def rejected(self) -> list[FileOutcome]:
        return self.of("rejected")

    @property
    def failed(self) -> list[FileOutcome]:
        return self.of("failed")

    @property
    def exit_code(self) -> int:
        if self.settings_error:
            return EXIT_BAD_SETTINGS
        if self.broker_error:
            return EXIT_BROKER_UNREACHABLE
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.failed:
            return EXIT_INCOMPLETE
        return EXIT_OK


class BrokerUnreachableError(RuntimeError):
    """Kafka could not be reached (or the images topic is missing) before anything was sent."""


# --- the uploader -------------------------------------------------------------------------


@dataclass
class _InFlight:
    """A send awaiting its acknowledgement."""

    future: Any
    candidate: Candidate
    image: TrapImage
    size_bytes: int
    message_bytes: int


class Uploader:
    """One upload run; `run(paths)` returns the summary and never raises for a bad file."""

    def __init__(
        self,
        settings: UploaderSettings,
        *,
        metrics: UploaderMetrics | None = None,
        ledger: UploadLedger | None = None,
        on_ack: Callable[[FileOutcome], None] | None = None,
    ) -> None:
        if not settings.camera_id or not settings.station_id:
            raise ValueError("camera_id and station_id are required")
        self.settings = settings
        self.metrics = metrics or UploaderMetrics()
        self._ledger = ledger
        self._on_ack = on_ack
        self._topic = settings.topics.images

    def run(self, paths: Sequence[Path | str]) -> UploadSummary:
        summary = UploadSummary()
        candidates = find_files(paths)
        try:
            store = claim_check_store_for(self.settings.claim_check_store)
            ledger = self._ledger or UploadLedger(self.settings.ledger_path)
        except (ClaimCheckError, LedgerError) as error:
            summary.settings_error = str(error)
            return summary
        try:
            try:
                producer = self._connect()
            except BrokerUnreachableError as error:
                summary.broker_error = str(error)
                return summary
            try:
                _Run(self, producer, ledger, store, summary).upload(candidates)
            finally:
                close_producer(producer, timeout_s=self.settings.request_timeout_s)
        finally:
            if self._ledger is None:
                ledger.close()
        return summary

    def _connect(self) -> Any:
        """An idempotent producer whose cluster answers and has the images topic."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        settings = self.settings
        where = settings.bootstrap_servers
        try:
            if settings.create_topics:
                ensure_topics(
                    names=settings.topics,
                    timeout_s=settings.connect_timeout_s,
                    **settings.kafka_python_config(),
                )
            producer = KafkaProducer(**settings.producer_config())
        except (KafkaError, TopicProvisioningError, OSError) as error:
            raise BrokerUnreachableError(
                f"could not reach Kafka at {where}: {describe_error(error)}"
            ) from error
        try:
            partitions = producer.partitions_for(self._topic)
        except KafkaError as error:
            close_producer(producer, timeout_s=1)
            raise BrokerUnreachableError(
                f"Kafka at {where} did not give metadata for topic {self._topic!r} within "
                f"{settings.connect_timeout_s:g} s (missing topic? run 'snowtrap topics'): "
                f"{describe_error(error)}"
            ) from error
        if not partitions:
            close_producer(producer, timeout_s=1)
            raise BrokerUnreachableError(f"topic {self._topic!r} does not exist on {where}")
        return producer


class _Run:
    """The state of one run: sends in flight, ids claimed so far, the link's health."""

    def __init__(
        self,
        uploader: Uploader,
        producer: Any,
        ledger: UploadLedger,
        store: ClaimCheckStore,
        summary: UploadSummary,
    ) -> None:
        self.uploader = uploader
        self.settings = uploader.settings
        self.metrics = uploader.metrics
        self.topic = uploader._topic
        self.producer = producer
        self.ledger = ledger
        self.store = store
        self.summary = summary
        self.in_flight: deque[_InFlight] = deque()
        self.in_flight_bytes = 0
        self.claimed: dict[str, Path] = {}
        """Image id -> the path that carries it in this run (duplicates on the card)."""
        self.link_error: str | None = None
        self.link_lost_at: float | None = None
        """time.monotonic() when Kafka stopped acknowledging."""

    def upload(self, candidates: list[Candidate]) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=len(candidates),
            unit="file",
            desc=f"upload {self.settings.camera_id}",
            disable=None if self.settings.progress else True,
            file=sys.stderr,
        )
        self._bar = bar
        try:
            try:
                for candidate in candidates:
                    self._settle_acknowledged()
                    self._handle(candidate)
            except KeyboardInterrupt:
                # Ctrl-C or SIGTERM: send nothing more, but record what Kafka acknowledges
                # of the sends in flight, so the next run does not send them again.
                self.summary.interrupted = True
                log.warning("interrupted: settling %d send(s) in flight", len(self.in_flight))
            while self.in_flight:
                self._complete(self.in_flight.popleft())
        finally:
            bar.close()

    def _outcome(self, outcome: FileOutcome, *, advance: bool = True) -> None:
        self.summary.outcomes.append(outcome)
        self.metrics.files.labels(result=outcome.result).inc()
        if outcome.result in ("rejected", "failed"):
            log.info("%s %s: %s", outcome.result, outcome.path, outcome.reason)
        if advance:
            self._bar.update(1)

    def _handle(self, candidate: Candidate) -> None:
        if candidate.problem:
            self._outcome(FileOutcome(candidate.path, "rejected", candidate.problem))
            return
        if self.link_error:
            self._outcome(FileOutcome(candidate.path, "failed", f"not sent: {self.link_error}"))
            return
        data, problem = _read_image_file(candidate.path)
        if problem or data is None:
            self._outcome(FileOutcome(candidate.path, "rejected", problem or "unreadable"))
            return
        fmt = sniff_image_format(data)
        if fmt is None:
            self._outcome(
                FileOutcome(candidate.path, "rejected", "not an image (no known image signature)")
            )
            return
        image_id = image_id_of(data)
        if self._skip_if_sent(candidate, image_id, len(data)):
            return
        claim_check: str | None = None
        if len(data) > self.settings.max_inline_bytes:
            try:
                claim_check = self._store_claim_check(candidate.path, image_id)
            except ClaimCheckError as error:
                self._outcome(
                    FileOutcome(candidate.path, "failed", str(error), image_id, len(data))
                )
                return
        image = TrapImage(
            image_id=image_id,
            camera_id=self.settings.camera_id,
            station_id=self.settings.station_id,
            file_name=candidate.file_name,
            content_type=CONTENT_TYPES.get(fmt, "application/octet-stream"),
            capture_time=_capture_time(data),
            sent_at=time.time(),
            payload=None if claim_check else data,
            claim_check=claim_check,
            size_bytes=len(data),
        )
        self._send(candidate, image)

    def _store_claim_check(self, path: Path, image_id: str) -> str:
        uri = self.store.put(path, image_id)
        self.metrics.claim_checks.inc()
        return uri

    def _skip_if_sent(self, candidate: Candidate, image_id: str, size: int) -> bool:
        earlier = self.ledger.lookup(image_id, self.topic)
        if earlier is not None:
            where = "" if Path(earlier.path) == candidate.path else f" as {earlier.path}"
            reason = f"already sent{where} (partition {earlier.partition}, offset {earlier.offset})"
            self._outcome(FileOutcome(candidate.path, "skipped", reason, image_id, size))
            return True
        twin = self.claimed.get(image_id)
        if twin is not None:
            reason = f"same bytes as {twin}, sent in this run"
            self._outcome(FileOutcome(candidate.path, "skipped", reason, image_id, size))
            return True
        return False

    def _send(self, candidate: Candidate, image: TrapImage) -> None:
        from kafka.errors import KafkaError

        key, value, headers = build_image_message(image)
        message_bytes = len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)
        # Bound what waits for acknowledgement: count and bytes (one image always fits).
        while self.in_flight and (
            len(self.in_flight) >= self.settings.max_in_flight
            or self.in_flight_bytes + message_bytes > self.settings.max_pending_bytes
        ):
            self._complete(self.in_flight.popleft())
        if self.link_error:
            self._outcome(FileOutcome(candidate.path, "failed", f"not sent: {self.link_error}"))
            return
        started = time.monotonic()
        try:
            future = self.producer.send(self.topic, key=key, value=value, headers=headers)
        except KafkaError as error:
            self._failed(candidate, image, error)
            return
        latency = self.metrics.send_latency
        future.add_callback(lambda _meta: latency.observe(time.monotonic() - started))
        self.claimed[image.image_id] = candidate.path
        self.in_flight.append(
            _InFlight(future, candidate, image, image.size_bytes or 0, message_bytes)
        )
        self.in_flight_bytes += message_bytes

    def _settle_acknowledged(self) -> None:
        """Record the acknowledgements (or failures) that are already in, oldest first."""
        while self.in_flight and self.in_flight[0].future.is_done:
            self._complete(self.in_flight.popleft())

    def _complete(self, entry: _InFlight) -> None:
        from kafka.errors import KafkaError

        self.in_flight_bytes -= entry.message_bytes
        if self.link_lost_at is None:
            timeout = self.settings.delivery_timeout_s + 30
        else:
            # The link is gone and kafka-python may never settle some futures: the rest of
            # the in-flight sends share one request timeout instead of one each.
            deadline = self.link_lost_at + self.settings.request_timeout_s
            timeout = max(deadline - time.monotonic(), 0.0)
        try:
            metadata = entry.future.get(timeout=timeout)
        except KafkaError as error:
            self._failed(entry.candidate, entry.image, error)
            return
        broker_time = metadata.timestamp / 1000 if metadata.timestamp not in (None, -1) else None
        ack = Acknowledgement(
            image_id=entry.image.image_id,
            topic=metadata.topic,
            partition=metadata.partition,
            offset=metadata.offset,
            broker_time=broker_time,
            recorded_at=time.time(),
            path=str(entry.candidate.path),
            file_name=entry.candidate.file_name,
            camera_id=entry.image.camera_id,
            station_id=entry.image.station_id,
            size_bytes=entry.size_bytes,
            claim_check=entry.image.claim_check,
            bootstrap=self.settings.bootstrap_servers,
        )
        self.ledger.record(ack)
        self.metrics.bytes.inc(entry.size_bytes)
        self.metrics.last_ack.set(ack.recorded_at)
        outcome = FileOutcome(
            entry.candidate.path,
            "sent",
            "claim check" if entry.image.claim_check else "",
            entry.image.image_id,
            entry.size_bytes,
            metadata.partition,
            metadata.offset,
            entry.image.claim_check,
        )
        self._outcome(outcome)
        if self.uploader._on_ack is not None:
            self.uploader._on_ack(outcome)

    def _failed(self, candidate: Candidate, image: TrapImage, error: Exception) -> None:
        from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

        self.claimed.pop(image.image_id, None)
        text = describe_error(error)
        if isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError):
            # This record only: the topic's limit is below max_message_bytes. The rest go on.
            reason = (
                f"Kafka refused it as too large ({text}); lower max_message_bytes to the "
                "topic's max.message.bytes so such images go as claim checks"
            )
            self._outcome(
                FileOutcome(
                    candidate.path, "rejected", reason, image.image_id, image.size_bytes or 0
                )
            )
            return
        # Anything else means the cluster stopped acknowledging (retries and the delivery
        # timeout already covered transient errors): stop sending and tell the operator.
        if self.link_error is None:
            self.link_error = text
            self.link_lost_at = time.monotonic()
            log.error("Kafka stopped acknowledging: %s; sending nothing more this run", text)
        self._outcome(
            FileOutcome(
                candidate.path,
                "failed",
                f"not acknowledged: {text}",
                image.image_id,
                image.size_bytes or 0,
            )
        )


def close_producer(producer: Any, timeout_s: float) -> None:
    """Close a producer even when the link is gone.

    kafka-python 3.0.12's `close()` flushes first and, when batches are stuck on a dead
    connection (their futures already failed), raises KafkaTimeoutError without closing; the
    producer's `__del__` then raises again at exit. Every send has been settled by the time
    this runs, so nothing is lost by stopping the sender thread.
    """
    from kafka.errors import KafkaError

    try:
        producer.close(timeout=timeout_s)
    except KafkaError as error:
        log.debug("producer did not close cleanly (%s); forcing it", describe_error(error))
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True  # nothing left to flush; keeps __del__ from retrying


def describe_error(error: BaseException) -> str:
    """One line naming the error class once (kafka-python's messages sometimes include it)."""
    name = error.__class__.__name__
    text = " ".join(str(error).split())
    if text.startswith(name):
        return text
    return f"{name}: {text}" if text else name


def _read_image_file(path: Path) -> tuple[bytes | None, str | None]:
    """The file's bytes, or why they cannot be had (never raises for a bad file)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size == 0:
            return None, "empty file (0 bytes)"
        data = path.read_bytes()
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"
    if not data:
        return None, "empty file (0 bytes)"
    return data, None


def _capture_time(data: bytes) -> datetime | None:
    """EXIF DateTimeOriginal, or None. The time is optional metadata: never a reason to stop."""
    head = data if len(data) <= CAPTURE_TIME_READ_BYTES else data[:CAPTURE_TIME_READ_BYTES]
    try:
        return read_capture_time(head)
    except Exception:  # untrusted bytes: any parser error just means "no capture time"
        return None


# --- the summary --------------------------------------------------------------------------

MAX_LISTED = 200
"""Rejected/failed files listed by name in the summary; the rest are counted."""


def print_summary(summary: UploadSummary, settings: UploaderSettings, file: Any = None) -> None:
    """The end-of-run report: counts per result, then every problem file by name."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, soft_wrap=False)
    errors = Console(file=file or sys.stderr, soft_wrap=True)
    if summary.settings_error:
        errors.print(f"[bold red]snowtrap upload: {summary.settings_error}[/]")
        return
    if summary.broker_error:
        errors.print(f"[bold red]snowtrap upload: {summary.broker_error}[/]")
        errors.print("Nothing was sent; the ledger is unchanged. Re-run when Kafka answers.")
        return
    counts = Table(title=f"upload to {settings.topics.images} ({settings.bootstrap_servers})")
    counts.add_column("result")
    counts.add_column("files", justify="right")
    counts.add_column("MiB", justify="right")
    labels = {
        "sent": "sent (acknowledged)",
        "skipped": "skipped (already sent)",
        "rejected": "rejected",
        "failed": "failed (not acknowledged)",
    }
    for result, label in labels.items():
        outcomes = summary.of(result)  # type: ignore[arg-type]
        size = sum(outcome.size_bytes for outcome in outcomes) / MiB
        counts.add_row(label, str(len(outcomes)), f"{size:.1f}")
    console.print(counts)
    problems = summary.rejected + summary.failed
    if problems:
        table = Table(title="files not sent")
        table.add_column("file", overflow="fold")
        table.add_column("result")
        table.add_column("reason", overflow="fold")
        for outcome in problems[:MAX_LISTED]:
            table.add_row(str(outcome.path), outcome.result, outcome.reason)
        console.print(table)
        if len(problems) > MAX_LISTED:
            console.print(f"... and {len(problems) - MAX_LISTED} more")
    if summary.interrupted:
        console.print("[bold yellow]Interrupted; run the same command again to send the rest.[/]")
    if summary.failed:
        console.print(
            f"[bold yellow]{len(summary.failed)} file(s) were not acknowledged by Kafka; "
            "run the same command again to send them.[/]"
        )


# --- command line -------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap upload PATH... --camera-id ID --station-id ID [...]`."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument("--camera-id", help="camera id (the Kafka key of every image)")
    parser.add_argument("--station-id", help="camera station id")
    parser.add_argument("--config", type=Path, help="YAML settings file (UploaderSettings)")
    parser.add_argument("--ledger", type=Path, help="SQLite ledger of acknowledged images")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port,...")
    parser.add_argument(
        "--claim-check-store", help="directory, file:// or s3:// URI for oversized images"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port while running"
    )
    parser.add_argument("--metrics-textfile", type=Path, help="write final metrics to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every file and Kafka")
    parser.set_defaults(run=_cli_upload)


def stop_on_sigterm() -> None:
    """Make SIGTERM (how a station's service manager stops us) act like Ctrl-C, so the sends
    in flight are settled and recorded before the process ends (see `_Run.upload`)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _cli_upload(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    overrides = {
        "camera_id": args.camera_id,
        "station_id": args.station_id,
        "ledger_path": args.ledger,
        "bootstrap_servers": args.bootstrap_servers,
        "claim_check_store": args.claim_check_store,
        "metrics_port": args.metrics_port,
        "metrics_textfile": args.metrics_textfile,
        "progress": False if args.no_progress else None,
    }
    try:
        settings = UploaderSettings.load(
            args.config, **{k: v for k, v in overrides.items() if v is not None}
        )
    except (SettingsFileError, ValidationError) as error:
        print(f"snowtrap upload: bad settings: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if not settings.camera_id or not settings.station_id:
        print("snowtrap upload: --camera-id and --station-id are required", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kafka-python logs every refused connection; the summary says what matters.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    metrics = UploaderMetrics()
    server = None
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_address, registry=metrics.registry
        )
    stop_on_sigterm()
    try:
        summary = Uploader(settings, metrics=metrics).run(args.paths)
    except KeyboardInterrupt:
        print("snowtrap upload: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    if settings.metrics_textfile is not None:
        from prometheus_client import write_to_textfile

        with contextlib.suppress(OSError):
            settings.metrics_textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(settings.metrics_textfile), metrics.registry)
    print_summary(summary, settings)
    return summary.exit_code
