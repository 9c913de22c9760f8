"""The worker's Faust topics: raw bytes in, raw bytes out.

Keys and values are bytes on every snowtrap topic (`stream.contracts` owns the encoding), so
every topic uses Faust's `raw` serializer: Faust must never try to decode an image as JSON.
Empty values are allowed on the images topic: a claim-check message has no bytes, and a
tombstone must reach the worker to be dead-lettered rather than vanish.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import TopicT

from snowtrap.stream.runtime.app import RAW_TOPIC as _RAW
from snowtrap.stream.topics import TopicNames


@dataclass(frozen=True)
class WorkerTopics:
    """The topic the worker consumes and the three it produces to."""

    images: TopicT
    detections: TopicT
    crops: TopicT
    deadletter: TopicT


def declare_topics(app: faust.App, names: TopicNames) -> WorkerTopics:
    """Faust topic objects for the snowtrap topics named in the settings."""
    return WorkerTopics(
        images=app.topic(names.images, allow_empty=True, **_RAW),
        detections=app.topic(names.detections, **_RAW),
        crops=app.topic(names.crops, **_RAW),
        deadletter=app.topic(names.deadletter, **_RAW),
    )
