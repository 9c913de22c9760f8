"""`Uploader`: one upload run: settle what an earlier run left pending, then prepare, record
as pending, send (idempotent producer, sends pipelined) and record the acknowledgements, in
batches of `ledger_batch_size` images per ledger transaction, acks settled in order."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snowtrap.stream.contracts import build_image_message
from snowtrap.stream.ledger import Acknowledgement, LedgerError, UploadLedger
from snowtrap.stream.metrics import UploaderMetrics
from snowtrap.stream.settings import KafkaLoginError
from snowtrap.stream.topics import TopicProvisioningError, ensure_topics
from snowtrap.stream.uploader.claim_checks import (
    ClaimCheckError,
    ClaimCheckStore,
    claim_check_store_for,
)
from snowtrap.stream.uploader.files import Candidate, find_files
from snowtrap.stream.uploader.outcomes import BrokerUnreachableError, FileOutcome, UploadSummary
from snowtrap.stream.uploader.prepare import NotSent, PhaseTimes, Prepared, prepare
from snowtrap.stream.uploader.recovery import (
    RecoveryError,
    open_consumer,
    partition_ends,
    settle_pending,
)
from snowtrap.stream.uploader.settings import UploaderSettings

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    """A send awaiting its acknowledgement."""

    future: Any
    prepared: Prepared
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
            store = claim_check_store_for(self.settings.claim_check_store, self.settings.s3)
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
                run_id = self._begin(ledger, summary)
                if run_id is not None:
                    _Run(self, producer, ledger, store, summary, run_id).upload(candidates)
                    ledger.end_run(run_id)
            finally:
                close_producer(producer, timeout_s=self.settings.request_timeout_s)
        finally:
            if self._ledger is None:
                ledger.close()
        return summary

    def _begin(self, ledger: UploadLedger, summary: UploadSummary) -> str | None:
        """Settle an earlier run's pending images, then open this run in the ledger (None,
        with `summary.broker_error` set, when the topic cannot be read back)."""
        from kafka.errors import KafkaError

        try:
            consumer = open_consumer(self.settings)
        except (KafkaError, OSError) as error:
            summary.broker_error = f"could not read {self._topic} back: {describe_error(error)}"
            return None
        try:
            summary.recovered = settle_pending(ledger, self.settings, consumer)
            return ledger.begin_run(self._topic, partition_ends(consumer, self._topic))
        except (RecoveryError, KafkaError) as error:
            summary.broker_error = (
                f"could not settle the images an earlier run left pending: {describe_error(error)}"
            )
            return None
        finally:
            consumer.close()

    def _connect(self) -> Any:
        """An idempotent producer whose cluster answers and has the images topic."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        settings = self.settings
        where = settings.bootstrap_servers
        try:
            settings.check_login(settings.connect_timeout_s)
        except KafkaLoginError as error:
            raise BrokerUnreachableError(str(error)) from None
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
        run_id: str,
    ) -> None:
        self.uploader = uploader
        self.settings = uploader.settings
        self.metrics = uploader.metrics
        self.topic = uploader._topic
        self.producer = producer
        self.ledger = ledger
        self.store = store
        self.summary = summary
        self.run_id = run_id
        self.phases = PhaseTimes()
        self.in_flight: deque[_InFlight] = deque()
        self.in_flight_bytes = 0
        self.claimed: dict[str, Path] = {}
        """Image id -> the path that carries it in this run (duplicates on the card)."""
        self.unsent: set[str] = set()
        """Marked pending in the ledger but not handed to the producer (yet)."""
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
        size = self.settings.ledger_batch_size
        try:
            try:
                for start in range(0, len(candidates), size):
                    self._upload_batch(candidates[start : start + size])
            except KeyboardInterrupt:
                # Ctrl-C or SIGTERM: send nothing more, but record what Kafka acknowledges
                # of the sends in flight, so the next run does not send them again.
                self.summary.interrupted = True
                log.warning("interrupted: settling %d send(s) in flight", len(self.in_flight))
            while self.in_flight:
                self._settle(block=True)
        finally:
            if self.unsent:
                self.ledger.forget_pending(self.topic, self.unsent)
            self.summary.phases = dict(self.phases.seconds)
            bar.close()

    def _upload_batch(self, batch: list[Candidate]) -> None:
        """Prepare a batch, note it as pending in one transaction, then send it."""
        ready: list[Prepared] = []
        for candidate in batch:
            if self.link_error:
                self._outcome(FileOutcome(candidate.path, "failed", f"not sent: {self.link_error}"))
                continue
            result = prepare(candidate, self.settings, self.store, self.phases, self._already_sent)
            if isinstance(result, NotSent):
                self._outcome(
                    FileOutcome(
                        candidate.path,
                        result.result,
                        result.reason,
                        result.image_id,
                        result.size_bytes,
                    )
                )
                continue
            if result.image.claim_check:
                self.metrics.claim_checks.inc()
            self.claimed[result.image.image_id] = candidate.path
            ready.append(result)
        if not ready:
            return
        with self.phases.timing("ledger"):
            self.ledger.mark_pending(self.run_id, [self._acknowledgement(p) for p in ready])
        self.unsent.update(p.image.image_id for p in ready)
        for prepared in ready:
            self._send(prepared)  # waits for acknowledgements only when the window is full
        self._settle(block=False)  # one ledger transaction for what came in meanwhile

    def _already_sent(self, image_id: str, size: int) -> NotSent | None:
        earlier = self.ledger.lookup(image_id, self.topic)
        if earlier is not None:
            where = f" as {earlier.path}"
            reason = f"already sent{where} (partition {earlier.partition}, offset {earlier.offset})"
            return NotSent("skipped", reason, image_id, size)
        twin = self.claimed.get(image_id)
        if twin is not None:
            return NotSent("skipped", f"same bytes as {twin}, sent in this run", image_id, size)
        return None

    def _outcome(self, outcome: FileOutcome, *, advance: bool = True) -> None:
        self.summary.outcomes.append(outcome)
        self.metrics.files.labels(result=outcome.result).inc()
        if outcome.result in ("rejected", "failed"):
            log.info("%s %s: %s", outcome.result, outcome.path, outcome.reason)
        if advance:
            self._bar.update(1)

    def _acknowledgement(
        self,
        prepared: Prepared,
        partition: int = -1,
        offset: int = -1,
        broker_time: float | None = None,
    ) -> Acknowledgement:
        image, candidate = prepared.image, prepared.candidate
        return Acknowledgement(
            image_id=image.image_id,
            topic=self.topic,
            partition=partition,
            offset=offset,
            broker_time=broker_time,
            recorded_at=time.time(),
            path=str(candidate.path),
            file_name=candidate.file_name,
            camera_id=image.camera_id,
            station_id=image.station_id,
            size_bytes=image.size_bytes or 0,
            claim_check=image.claim_check,
            bootstrap=self.settings.bootstrap_servers,
        )

    def _send(self, prepared: Prepared) -> None:
        from kafka.errors import KafkaError

        image = prepared.image
        with self.phases.timing("send"):
            key, value, headers = build_image_message(image)
        message_bytes = len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)
        # Bound what waits for acknowledgement: count and bytes (one image always fits).
        while self.in_flight and (
            len(self.in_flight) >= self.settings.max_in_flight
            or self.in_flight_bytes + message_bytes > self.settings.max_pending_bytes
        ):
            self._settle(block=True)
        if self.link_error:
            outcome = FileOutcome(prepared.candidate.path, "failed", f"not sent: {self.link_error}")
            self._outcome(outcome)
            return
        started = time.monotonic()
        with self.phases.timing("send"):
            try:
                future = self.producer.send(self.topic, key=key, value=value, headers=headers)
            except KafkaError as error:  # refused before sending: never reached Kafka
                self._failed(prepared, error)
                return
        self.unsent.discard(image.image_id)
        latency = self.metrics.send_latency
        future.add_callback(lambda _meta: latency.observe(time.monotonic() - started))
        self.in_flight.append(_InFlight(future, prepared, message_bytes))
        self.in_flight_bytes += message_bytes

    def _settle(self, *, block: bool) -> None:
        """Record the acknowledgements that are in (waiting for the oldest when `block`),
        oldest first, in one ledger transaction; then report them."""
        from kafka.errors import KafkaError

        entries: list[_InFlight] = []
        if block and self.in_flight:
            entries.append(self.in_flight.popleft())
        while self.in_flight and self.in_flight[0].future.is_done:
            entries.append(self.in_flight.popleft())
        acks: list[tuple[_InFlight, Acknowledgement]] = []
        for entry in entries:
            self.in_flight_bytes -= entry.message_bytes
            try:
                with self.phases.timing("ack_wait"):
                    metadata = entry.future.get(timeout=self._ack_timeout())
            except KafkaError as error:
                self._failed(entry.prepared, error)
                continue
            broker_time = (
                metadata.timestamp / 1000 if metadata.timestamp not in (None, -1) else None
            )
            ack = self._acknowledgement(
                entry.prepared, metadata.partition, metadata.offset, broker_time
            )
            acks.append((entry, ack))
        if not acks:
            return
        with self.phases.timing("ledger"):
            self.ledger.record_many([ack for _, ack in acks], self.run_id)
        # Every outcome is counted before any on_ack hook runs (a hook may be interrupted).
        outcomes = [self._report_sent(entry.prepared, ack) for entry, ack in acks]
        if self.uploader._on_ack is not None:
            for outcome in outcomes:
                self.uploader._on_ack(outcome)

    def _ack_timeout(self) -> float:
        if self.link_lost_at is None:
            return self.settings.delivery_timeout_s + 30
        # The link is gone and kafka-python may never settle some futures: the rest of the
        # in-flight sends share one request timeout instead of one each.
        deadline = self.link_lost_at + self.settings.request_timeout_s
        return max(deadline - time.monotonic(), 0.0)

    def _report_sent(self, prepared: Prepared, ack: Acknowledgement) -> FileOutcome:
        self.metrics.bytes.inc(ack.size_bytes)
        self.metrics.last_ack.set(ack.recorded_at)
        claim_check = prepared.image.claim_check
        outcome = FileOutcome(
            prepared.candidate.path,
            "sent",
            "claim check" if claim_check else "",
            ack.image_id,
            ack.size_bytes,
            ack.partition,
            ack.offset,
            claim_check,
        )
        self._outcome(outcome)
        return outcome

    def _failed(self, prepared: Prepared, error: Exception) -> None:
        from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

        candidate, image = prepared.candidate, prepared.image
        self.claimed.pop(image.image_id, None)
        text = describe_error(error)
        size = image.size_bytes or 0
        if isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError):
            # This record only: the topic's limit is below max_message_bytes. The rest go on.
            self.ledger.forget_pending(self.topic, [image.image_id])
            self.unsent.discard(image.image_id)
            reason = (
                f"Kafka refused it as too large ({text}); lower max_message_bytes to the "
                "topic's max.message.bytes so such images go as claim checks"
            )
            self._outcome(FileOutcome(candidate.path, "rejected", reason, image.image_id, size))
            return
        # Anything else means the cluster stopped acknowledging (retries and the delivery
        # timeout already covered transient errors): stop sending and tell the operator. The
        # image stays pending: Kafka may have written it, and the next run finds out.
        if self.link_error is None:
            self.link_error = text
            self.link_lost_at = time.monotonic()
            log.error("Kafka stopped acknowledging: %s; sending nothing more this run", text)
        self._outcome(
            FileOutcome(candidate.path, "failed", f"not acknowledged: {text}", image.image_id, size)
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
