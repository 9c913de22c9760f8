"""The uploader when things die under it: the uploader itself between Kafka's acknowledgement
and the ledger write (SIGKILL), and the broker in the middle of a run (SIGKILL, restart).

Counted with a read_committed consumer: every image of the card in `trap.images` exactly
once, and in the ledger, after the reruns. The duplicate a naive ledger would make is real
here: the killed batch was acknowledged by Kafka and is missing from the ledger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers.topics import consume_all
from test_uploader import REPO_ROOT, settings_for, write_card

from snowtrap.devtools.kafka_broker import LocalKafkaBroker
from snowtrap.devtools.local_processes import free_port
from snowtrap.stream.contracts import H, headers_to_dict, image_id_of
from snowtrap.stream.ledger import UploadLedger
from snowtrap.stream.topics import TopicNames, ensure_topics
from snowtrap.stream.uploader import EXIT_INCOMPLETE, EXIT_OK, Uploader, UploaderSettings

pytestmark = pytest.mark.kafka

KILLED_BETWEEN_ACK_AND_LEDGER = textwrap.dedent(
    """
    import json, os, signal, sys
    from snowtrap.stream.ledger import UploadLedger
    from snowtrap.stream.uploader import Uploader, UploaderSettings

    args = json.loads(sys.argv[1])
    record_many = UploadLedger.record_many
    calls = []

    def record_or_die(self, acks, run_id=None):
        acks = list(acks)
        calls.append(len(acks))
        if len(calls) == args["kill_at"]:
            # Kafka acknowledged these; the ledger has not heard of them. Die like SIGKILL.
            print(json.dumps({"acknowledged_not_recorded": len(acks)}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return record_many(self, acks, run_id)

    UploadLedger.record_many = record_or_die
    summary = Uploader(UploaderSettings(**args["settings"])).run([args["card"]])
    sys.exit(summary.exit_code)
    """
)


def upload_killed_at(kill_at: int, card: Path, settings: UploaderSettings) -> int:
    """Run the uploader in a child that SIGKILLs itself at its `kill_at`-th batch of
    acknowledgements, after Kafka acknowledged them and before the ledger records them;
    returns how many acknowledged images the ledger missed."""
    args = {"kill_at": kill_at, "card": str(card), "settings": settings.model_dump(mode="json")}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_ACK_AND_LEDGER, json.dumps(args)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    return int(json.loads(child.stdout.strip().splitlines()[-1])["acknowledged_not_recorded"])


def images_on_topic(bootstrap: str, topic: str) -> Counter[str]:
    """Image id -> how many times a read_committed consumer sees it on `topic`."""
    return Counter(
        headers_to_dict(r.headers)[H.IMAGE_ID].decode() for r in consume_all(bootstrap, topic)
    )


def card_ids(card: Path, names: list[str]) -> set[str]:
    # The card's test images carry no GPS: the bytes sent are the bytes on the card.
    return {image_id_of((card / name).read_bytes()) for name in names}


def test_kill_between_ack_and_ledger_write_loses_nothing_and_sends_nothing_twice(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    card = tmp_path / "card"
    names = list(write_card(card, 30))
    ledger_path = tmp_path / "ledger.sqlite3"
    settings = settings_for(
        kafka_bootstrap, kafka_topics, ledger_path, max_in_flight=6, ledger_batch_size=4
    )

    # Killed twice in the window (the second time during the run that recovers the first),
    # then a clean rerun.
    missed_first = upload_killed_at(2, card, settings)
    assert missed_first >= 1
    with UploadLedger(ledger_path) as ledger:
        recorded = ledger.count(kafka_topics.images)
        assert ledger.pending(kafka_topics.images)  # the killed run's images, some in Kafka
    on_topic = images_on_topic(kafka_bootstrap, kafka_topics.images)
    assert sum(on_topic.values()) >= recorded + missed_first  # acknowledged, not recorded

    missed_second = upload_killed_at(3, card, settings)
    assert missed_second >= 1
    final = Uploader(settings).run([card])
    assert final.exit_code == EXIT_OK, final.failed
    assert final.recovered >= missed_second

    expected = card_ids(card, names)
    on_topic = images_on_topic(kafka_bootstrap, kafka_topics.images)
    assert set(on_topic) == expected  # 0 lost
    assert max(on_topic.values()) == 1  # 0 counted twice
    with UploadLedger(ledger_path) as ledger:
        assert ledger.image_ids(kafka_topics.images) == expected
        assert not ledger.pending(kafka_topics.images)
        assert ledger.scan_plan(kafka_topics.images) == {}


def test_broker_killed_and_restarted_mid_run(tmp_path: Path):
    """SIGKILL the broker JVM after the 5th acknowledgement, restart it on the same port and
    log dir; the uploader rides it out or exits incomplete, and a rerun finishes. Its own
    broker: the session's is shared with every other test."""
    broker = LocalKafkaBroker(tmp_path / "broker", port=free_port())
    broker.start()
    try:
        topics = TopicNames().with_suffix(".restart")
        ensure_topics(broker.bootstrap_servers, topics)
        card = tmp_path / "card"
        names = list(write_card(card, 40))
        settings = settings_for(
            broker.bootstrap_servers,
            topics,
            tmp_path / "ledger.sqlite3",
            max_in_flight=4,
            ledger_batch_size=4,
            request_timeout_s=10,
            delivery_timeout_s=90,
        )
        restarted = threading.Event()
        failures: list[BaseException] = []

        def restart() -> None:
            try:
                while broker.is_running():  # SIGKILL is delivered asynchronously
                    time.sleep(0.05)
                broker.start()
            except BaseException as error:  # surfaced by the assertion below
                failures.append(error)
            finally:
                restarted.set()

        acks = 0

        def kill_broker_at_fifth(outcome: object) -> None:
            nonlocal acks
            acks += 1
            if acks == 5:
                pid = broker.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                threading.Thread(target=restart, daemon=True).start()

        first = Uploader(settings, on_ack=kill_broker_at_fifth).run([card])
        assert restarted.wait(180) and not failures, failures
        assert first.exit_code in (EXIT_OK, EXIT_INCOMPLETE), first
        rerun = Uploader(settings).run([card])
        assert rerun.exit_code == EXIT_OK, rerun.failed

        expected = card_ids(card, names)
        on_topic = images_on_topic(broker.bootstrap_servers, topics.images)
        assert set(on_topic) == expected and max(on_topic.values()) == 1
        sent_twice = {o.image_id for o in first.sent} & {o.image_id for o in rerun.sent}
        assert not sent_twice
        assert len(first.sent) + len(rerun.sent) + rerun.recovered == len(expected)
    finally:
        broker.stop()
