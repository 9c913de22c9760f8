"""The Faust app of a stream process, configured from `StreamProcessSettings`.

Choices that matter for correctness, not just tuning:

- no internal topics: the leader topic is disabled (the process elects no leader and keeps no
  tables) and Faust declares nothing, because the cluster refuses automatic topic creation;
  the snowtrap topics come from `stream.topics.ensure_topics`;
- message size: images and crops go up to the topics' `max.message.bytes` (16 MiB), so the
  producer's request limit and the consumer's per-partition fetch size are raised to match;
- flow control: few records per poll and a short stream buffer, because each record may be
  megabytes and a batch is only `batch_size` messages anyway;
- exactly once: offsets are committed only inside each batch's transaction, with its
  outputs, and consumers read `read_committed` (`transport`, `transactions`);
- failover: a short session with frequent heartbeats from the consumer thread, so a killed
  member's partitions move on within seconds while busy members stay in the group.
"""

from __future__ import annotations

from typing import Any

import faust

from snowtrap.stream.runtime.settings import StreamProcessSettings
from snowtrap.stream.runtime.transport import StreamApp

MiB = 1024 * 1024

RAW_TOPIC: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
"""`app.topic(...)` keyword arguments for raw bytes in and out: the contracts do the parsing."""


def create_app(settings: StreamProcessSettings) -> faust.App:
    """A Faust app for these settings; each process adds its own topics and agent."""
    if settings.data_dir is None:
        raise ValueError("data_dir must be set (the CLI gives a temporary directory)")
    records_per_poll = max(2 * settings.batch_size, 8)
    return StreamApp(
        settings.group_id,
        broker=settings.faust_broker_urls(),
        broker_credentials=settings.faust_credentials(),
        broker_client_id=settings.client_id,
        autodiscover=False,
        datadir=str(settings.data_dir),
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        consumer_max_fetch_size=settings.max_message_bytes + MiB,
        broker_max_poll_records=records_per_poll,
        stream_buffer_maxsize=records_per_poll,
        broker_session_timeout=settings.session_timeout_s,
        # Heartbeats well inside the session, so a short session does not evict live members.
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 10),
        producer_acks=-1,
        producer_max_request_size=settings.max_message_bytes + MiB,
        producer_linger_ms=5,
        producer_request_timeout=settings.produce_timeout_s,
    )
