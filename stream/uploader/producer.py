"""`Uploader`: one upload run, the idempotent producer, the ledger, acks settled in order."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snowtrap.models.decode import sniff_image_format
from snowtrap.stream.contracts import TrapImage, build_image_message, image_id_of
from snowtrap.stream.ledger import Acknowledgement, LedgerError, UploadLedger
from snowtrap.stream.metrics import UploaderMetrics
from snowtrap.stream.topics import TopicProvisioningError, ensure_topics
from snowtrap.stream.uploader.claim_checks import (
    ClaimCheckError,
    ClaimCheckStore,
    claim_check_store_for,
)
from snowtrap.stream.uploader.files import (
    CONTENT_TYPES,
    Candidate,
    capture_time,
    find_files,
    read_image_file,
)
from snowtrap.stream.uploader.outcomes import BrokerUnreachableError, FileOutcome, UploadSummary
from snowtrap.stream.uploader.settings import UploaderSettings

log = logging.getLogger(__name__)


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
        data, problem = read_image_file(candidate.path)
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
            capture_time=capture_time(data),
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
