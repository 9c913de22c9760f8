"""Faust's aiokafka transport, changed in the two places exactly-once needs.

- The group's offsets are committed only inside each batch's Kafka transaction
  (`stream.runtime.transactions`), never by Faust's own commit loop. Faust still tracks acks
  (so a rebalance waits for the batch in flight) but its commit is a no-op: a plain offset
  commit racing a transactional one could move the group back and redo committed work.
- The consumer reads `read_committed`: records of aborted transactions (the outputs of a
  worker killed mid-batch) are never seen, so the matcher never matches a crop twice.

Faust's own `processing_guarantee="exactly_once"` is not used: it maps each *output* partition
to the transactional producer of the input partition with the same number, which holds only
for co-partitioned topics (ours are keyed by camera in, by image out), and it commits offsets
on a timer rather than with the batch whose outputs they belong to.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import monotonic
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

READ_COMMITTED = "read_committed"


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer Faust builds, with `isolation_level="read_committed"`."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        # Faust's one switch for read_committed is `in_transaction`; it also changes how Faust
        # commits, so it is on only while the client is built.
        consumer = self.consumer
        previous = consumer.in_transaction
        consumer.in_transaction = True
        try:
            return super()._create_worker_consumer(transport)
        finally:
            consumer.in_transaction = previous


class TransactionalOffsetsConsumer(faust_aiokafka.Consumer):
    """Reads committed records only; leaves offset commits to the batch transactions."""

    def _new_consumer_thread(self) -> ReadCommittedConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """Nothing to send: each batch committed these offsets in its own transaction. Only
        noted, so Faust's stall detector does not report partitions as never committed."""
        now = monotonic()
        self._thread.tp_last_committed_at.update({tp: now for tp in offsets})
        return True


class TransactionalOffsetsTransport(faust_aiokafka.Transport):
    Consumer = TransactionalOffsetsConsumer


class StreamApp(faust.App):
    """A Faust app on `TransactionalOffsetsTransport`."""

    def _new_transport(self) -> Any:
        return TransactionalOffsetsTransport(self.conf.broker_consumer, self)
