"""`snowtrap topics`: create the snowtrap topics on a cluster, with the settings the processes
use (`stream.topics` says what the topics are; this module only runs it from the command line)."""

from __future__ import annotations

import argparse
import os

from snowtrap.stream.settings import KafkaLoginError, TopicsSettings
from snowtrap.stream.topics import TOPIC_SPECS, TopicProvisioningError, ensure_topics

__all__ = ["configure_cli"]


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap topics [--bootstrap-servers HOST:PORT] [--partitions N] [--replication-factor N]`.

    The connection (SASL/TLS) and the topic names come from the same `SNOWTRAP_*` settings
    as the worker's (`SNOWTRAP_SECURITY_PROTOCOL`, `SNOWTRAP_SASL_PASSWORD`,
    `SNOWTRAP_TOPICS__IMAGES`...), so the Helm chart's provisioning Job shares the workers'
    configuration and Secrets. `SNOWTRAP_PARTITIONS` (JSON, role -> count) sets partition
    counts per topic role.
    """
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka bootstrap servers (default: $SNOWTRAP_BOOTSTRAP_SERVERS, "
        "$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--partitions", type=int, default=None, help="partition count for every topic"
    )
    parser.add_argument(
        "--replication-factor",
        type=int,
        default=None,
        help="replication factor of new topics (default: the brokers' default)",
    )
    parser.set_defaults(run=_cli_topics)


def _cli_topics(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError
    from pydantic import ValidationError

    try:
        settings = TopicsSettings.load()
    except ValidationError as error:
        print(f"snowtrap topics: bad settings: {error}")
        return 2
    bootstrap = (
        args.bootstrap_servers
        or os.environ.get("SNOWTRAP_BOOTSTRAP_SERVERS")
        or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        or settings.bootstrap_servers
    )
    try:
        settings.model_copy(update={"bootstrap_servers": bootstrap}).check_login()
    except KafkaLoginError as error:
        print(f"snowtrap topics: {error}")
        return 1
    client = settings.kafka_python_config()
    client.pop("bootstrap_servers")
    unknown = sorted(set(settings.partitions) - set(TOPIC_SPECS))
    if unknown:
        print(f"snowtrap topics: unknown topic roles in partitions: {unknown}")
        return 2
    try:
        created = ensure_topics(
            bootstrap,
            settings.topics,
            partitions=args.partitions,
            replication_factor=args.replication_factor or settings.replication_factor,
            partitions_by_role=settings.partitions,
            **client,
        )
    except (KafkaError, TopicProvisioningError, OSError) as error:
        print(f"snowtrap topics: {bootstrap}: {error}")
        return 1
    for name in settings.topics:
        print(f"{name}: {'created' if name in created else 'present'}")
    return 0
