"""Settling a crashed run: which of its pending images Kafka actually has.

A run writes `pending` rows before it sends and `acknowledged` rows after Kafka answers
(`stream.ledger`). A crash (SIGKILL, power cut) between the answer and the ledger write, or
a link lost while sends were in flight, leaves pending rows whose records may or may not be
in the topic. Before sending anything, the next run reads the partitions from where those
runs could have written (the ledger's `scan_plan`) to their current end, matching the
`image-id` header, and settles every pending row: found means acknowledged (not sent again),
not found means it never arrived (sent again). The scan reads committed records only; the
uploader's own records are not transactional, so it sees them as soon as they are written.
"""

from __future__ import annotations

import logging
from typing import Any

from snowtrap.stream.contracts import H
from snowtrap.stream.ledger import UploadLedger
from snowtrap.stream.uploader.settings import MiB, UploaderSettings

log = logging.getLogger(__name__)

SCAN_POLL_MS = 500
SCAN_MAX_IDLE_POLLS = 120
"""Empty polls (of SCAN_POLL_MS) before a scan that has not reached the end gives up."""


class RecoveryError(RuntimeError):
    """The partitions could not be read back, so pending images cannot be settled yet."""


def open_consumer(settings: UploaderSettings) -> Any:
    """A group-less, read_committed consumer sized for image records."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **settings.kafka_python_config(),
        client_id=f"{settings.client_id}-recovery",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=max(settings.max_message_bytes, 1 * MiB),
        fetch_max_bytes=max(settings.max_message_bytes, 1 * MiB) * 2,
        request_timeout_ms=int(settings.request_timeout_s * 1000) + 5000,
    )


def partition_ends(consumer: Any, topic: str) -> dict[int, int]:
    """The next offset of every partition of `topic` (where a new record would go)."""
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic) or set()
    ends = consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
    return {tp.partition: int(offset) for tp, offset in ends.items()}


def find_sent(
    consumer: Any, topic: str, plan: dict[int, int], wanted: set[str]
) -> dict[str, tuple[int, int, float | None]]:
    """Image id -> (partition, offset, broker time) for each `wanted` id found on `topic`
    between the plan's start offsets and the partitions' current ends."""
    from kafka import TopicPartition

    ends = partition_ends(consumer, topic)
    todo = {p: start for p, start in plan.items() if start < ends.get(p, 0)}
    found: dict[str, tuple[int, int, float | None]] = {}
    if not todo or not wanted:
        return found
    assigned = [TopicPartition(topic, p) for p in sorted(todo)]
    consumer.assign(assigned)
    for tp in assigned:
        consumer.seek(tp, todo[tp.partition])
    key = H.IMAGE_ID
    idle = 0
    while any(consumer.position(tp) < ends[tp.partition] for tp in assigned):
        batches = consumer.poll(timeout_ms=SCAN_POLL_MS)
        idle = 0 if batches else idle + 1
        if idle > SCAN_MAX_IDLE_POLLS:
            raise RecoveryError(f"reading {topic} back stalled at {consumer.assignment()}")
        for records in batches.values():
            for record in records:
                image_id = next((v for k, v in record.headers or () if k == key), None)
                if image_id is not None and image_id.decode() in wanted:
                    when = record.timestamp / 1000 if record.timestamp not in (None, -1) else None
                    found.setdefault(image_id.decode(), (record.partition, record.offset, when))
    return found


def settle_pending(ledger: UploadLedger, settings: UploaderSettings, consumer: Any) -> int:
    """Settle the pending images of a crashed or cut-off run; returns how many were found
    in Kafka (and will not be sent again)."""
    topic = settings.topics.images
    pending = ledger.pending(topic)
    if not pending:
        return 0
    plan = ledger.scan_plan(topic)
    from kafka.errors import KafkaError

    try:
        found = find_sent(consumer, topic, plan, set(pending))
    except KafkaError as error:
        raise RecoveryError(f"reading {topic} back: {error}") from error
    recovered, forgotten = ledger.resolve_pending(topic, found)
    log.warning(
        "settled %d pending image(s) of an earlier run: %d already in Kafka, %d to send again",
        len(pending),
        recovered,
        forgotten,
    )
    return recovered
