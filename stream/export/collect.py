"""Collecting records: the last detection record per image id, and the dead letters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from snowtrap.stream.contracts import (
    ContractError,
    DeadLetter,
    DetectionRecord,
    parse_deadletter_message,
    parse_detection_message,
)


@dataclass
class Collected:
    """Detection records and dead letters, one per image id, plus what was dropped."""

    detections: dict[str, DetectionRecord] = field(default_factory=dict)
    failures: dict[str, DeadLetter] = field(default_factory=dict)
    duplicates_dropped: int = 0
    bad_records: list[str] = field(default_factory=list)
    _positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_detection(self, record: DetectionRecord, partition: int, offset: int) -> None:
        """Keep the last record per image id: later offset in a partition; else later time."""
        earlier = self.detections.get(record.image_id)
        if earlier is not None:
            self.duplicates_dropped += 1
            earlier_partition, earlier_offset = self._positions[record.image_id]
            if earlier_partition == partition:
                if offset < earlier_offset:
                    return
            elif record.processed_at < earlier.processed_at:
                return
        self.detections[record.image_id] = record
        self._positions[record.image_id] = (partition, offset)

    def add_failure(self, letter: DeadLetter) -> None:
        if letter.image_id in self.failures:
            self.duplicates_dropped += 1
        self.failures[letter.image_id] = letter


def collect_detections(records: Iterable, collected: Collected) -> None:
    for record in records:
        try:
            detection = parse_detection_message(record.value)
        except ContractError as error:
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            collected.bad_records.append(f"{where}: {error}")
            continue
        collected.add_detection(detection, record.partition, record.offset)


def collect_failures(records: Iterable, collected: Collected) -> None:
    for record in records:
        collected.add_failure(parse_deadletter_message(record.key, record.value, record.headers))
