"""Exactly once: each batch's outputs and its input offsets in one Kafka transaction.

One transactional producer per consumed partition, with a stable transactional id
(`<group>.<topic>.<partition>`). Whoever owns a partition next starts a producer with the same
id; the broker then fences the previous owner (a zombie's late commit fails) and aborts its
open transaction at once, so a killed worker's half-written batch is never visible to a
`read_committed` consumer and does not hold back the partitions it wrote to. Per batch and
partition: begin, send every output, add the next input offset for the group, commit. A batch
that fails is aborted (or left to be aborted by the next owner): nothing of it is visible and
its input is consumed again.

The producers are aiokafka clients on the process's event loop, started when a partition is
assigned (or first used) and stopped when it goes elsewhere or when the agent ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import TP

from snowtrap.stream.runtime.settings import StreamProcessSettings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
RETRY_BACKOFF_S = 0.2
CLOSE_TIMEOUT_S = 10

Output = tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]
"""One message to produce: (topic name, key, value, headers)."""


def transactional_id(group_id: str, tp: TP) -> str:
    """The id every owner of this input partition uses, so the next one fences the last."""
    return f"{group_id}.{tp.topic}.{tp.partition}"


def next_offsets(offsets: Iterable[tuple[TP, int]]) -> dict[TP, int]:
    """Per partition, the offset to commit after these consumed ones (highest + 1)."""
    result: dict[TP, int] = {}
    for tp, offset in offsets:
        result[tp] = max(result.get(tp, 0), offset + 1)
    return result


class PartitionTransactions:
    """The transactional producers of the partitions this process consumes."""

    def __init__(self, settings: StreamProcessSettings) -> None:
        self.settings = settings
        self.group_id = settings.group_id
        self.producers: dict[TP, AIOKafkaProducer] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._admin_lock = asyncio.Lock()
        """One offsets request at a time: the batch and the lag timer share the client."""

    def producer_config(self, tp: TP) -> dict[str, Any]:
        settings = self.settings
        return {
            **self._client_config(f"{settings.client_id}-{tp.partition}"),
            "transactional_id": transactional_id(self.group_id, tp),
            "transaction_timeout_ms": int(settings.transaction_timeout_s * 1000),
            "acks": "all",
            "enable_idempotence": True,
            "max_request_size": settings.max_message_bytes + MiB,
            # A batch's outputs are all sent before the commit waits for them: lingering only
            # delays the commit (a 16-frame batch's 2 transactions: 18.7-21.5 ms with 5 ms,
            # 9.8-12.0 without; bench/transaction_commit.py).
            "linger_ms": 0,
        }

    def _client_config(self, client_id: str) -> dict[str, Any]:
        settings = self.settings
        return {
            "bootstrap_servers": settings.bootstrap_servers.split(","),
            "client_id": client_id,
            "request_timeout_ms": int(settings.produce_timeout_s * 1000),
            **credentials_to_aiokafka_auth(settings.faust_credentials()),
        }

    async def producer_for(self, tp: TP) -> AIOKafkaProducer:
        """The partition's producer, started (and the previous owner fenced) if new."""
        producer = self.producers.get(tp)
        if producer is None:
            producer = AIOKafkaProducer(**self.producer_config(tp))
            try:  # InitProducerId: fences and aborts the last owner's open transaction
                await asyncio.wait_for(producer.start(), self.settings.produce_timeout_s)
            except BaseException:  # never wait silently for a broker that does not answer
                await _quietly(producer.stop())
                raise
            self.producers[tp] = producer
        return producer

    async def committed_offsets(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        """The group's committed offset of each partition as the broker holds it (None: never
        committed).

        Faust keeps its own copy (from its acks, with gaps filled in as if read); what the
        last transaction committed is the only safe place to resume from. Read it after
        `producer_for` fenced the partition's last owner, so no late commit can move it."""
        wanted = sorted(set(tps))
        if not wanted:
            return {}
        partitions = [KafkaTP(tp.topic, tp.partition) for tp in wanted]
        async with self._admin_lock, asyncio.timeout(self.settings.produce_timeout_s):
            while True:  # until the timeout: a coordinator moving or metadata not loaded yet
                try:
                    admin = await self._started_admin()
                    found = await admin.list_consumer_group_offsets(
                        self.group_id, partitions=partitions
                    )
                    break
                except KafkaError as error:
                    await self._close_admin()  # a fresh client, fresh metadata, next try
                    if not error.retriable:
                        raise
                    log.info("committed offsets not read yet (%s); trying again", error)
                    await asyncio.sleep(RETRY_BACKOFF_S)
        offsets = {TP(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
        return {tp: offset if (offset := offsets.get(tp, -1)) >= 0 else None for tp in wanted}

    async def assign(self, assigned: Iterable[TP]) -> None:
        """Own exactly these partitions: stop the producers of the others, start the new."""
        wanted = set(assigned)
        for tp in [tp for tp in self.producers if tp not in wanted]:
            await self._drop(tp)
        await asyncio.gather(*(self.producer_for(tp) for tp in wanted))
        if wanted:
            log.info("transactional producers ready for %d partition(s)", len(wanted))

    async def commit(self, tp: TP, outputs: Sequence[Output], next_offset: int) -> None:
        """One transaction: every output plus the group's offset `next_offset` on `tp`.

        Raises when the transaction could not be committed within `produce_timeout_s` (the
        broker gone for longer, the producer fenced...); it is then aborted (or left to the
        broker and the partition's next owner to abort) and its producer dropped.
        """
        producer = await self.producer_for(tp)
        began = committed = False
        try:
            async with asyncio.timeout(self.settings.produce_timeout_s):
                await producer.begin_transaction()
                began = True
                pending = [
                    await producer.send(topic, value=value, key=key, headers=list(headers))
                    for topic, key, value, headers in outputs
                ]
                await asyncio.gather(*pending)
                await producer.send_offsets_to_transaction(
                    {KafkaTP(tp.topic, tp.partition): next_offset}, self.group_id
                )
                await producer.commit_transaction()
            committed = True
        finally:
            if not committed:
                await self._abort(tp, producer, began)

    async def commit_batch(
        self, offsets: Iterable[tuple[TP, int]], outputs: Iterable[tuple[TP, Output]]
    ) -> None:
        """A batch, one transaction per input partition it read from (in partition order)."""
        by_partition: dict[TP, list[Output]] = {}
        for tp, output in outputs:
            by_partition.setdefault(tp, []).append(output)
        for tp, next_offset in sorted(next_offsets(offsets).items()):
            await self.commit(tp, by_partition.get(tp, []), next_offset)

    async def _abort(self, tp: TP, producer: AIOKafkaProducer, began: bool) -> None:
        """Best effort: abort and forget the producer (the next use starts a fresh one).

        If the abort fails too (broker gone, producer fenced), the broker aborts the
        transaction when the partition's next owner starts its producer, or at the latest
        after `transaction_timeout_s`.
        """
        if began:
            await _quietly(producer.abort_transaction())
        if self.producers.get(tp) is producer:
            await self._drop(tp)

    async def _drop(self, tp: TP) -> None:
        producer = self.producers.pop(tp, None)
        if producer is not None:
            await _quietly(producer.stop())

    async def close(self) -> None:
        """Stop every producer (a batch cut short aborted its own transaction)."""
        for tp in list(self.producers):
            await self._drop(tp)
        await self._close_admin()

    async def _started_admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._client_config(f"{self.settings.client_id}-offsets"))
            try:
                await admin.start()
            except BaseException:
                await _quietly(admin.close())
                raise
            self._admin = admin
        return self._admin

    async def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await _quietly(admin.close())


async def _quietly(closing: Awaitable[Any]) -> None:
    """Best effort, bounded: a stop, close or abort that fails or hangs (broker gone, client
    fenced) must not keep a batch or a shutdown waiting; the broker cleans up after it."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closing, timeout=CLOSE_TIMEOUT_S)
