"""The broker SIGKILLed and restarted mid-run, on the project's own broker (its own, not the
session's: the other tests must not see it go away).

The worker rides the outage out or exits non-zero; the test then starts it again, as
Kubernetes would. Either way every image ends with exactly one outcome, and a
`read_committed` consumer sees no record twice: a transaction the outage cut short is
aborted, and its batch is consumed again from the committed offsets.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from helpers.stream_run import assert_exactly_once, start_worker
from helpers.topics import collect_outcomes
from helpers.trap_cards import prepare_cards, upload_everything

from snowtrap.devtools.kafka_broker import LocalKafkaBroker
from snowtrap.stream.topics import TopicNames, ensure_topics

pytestmark = pytest.mark.kafka

OUTAGE_S = 4.0


def test_broker_killed_and_restarted_mid_run_every_image_ends_exactly_once(
    trained_bundle: Path, tmp_path: Path
):
    broker = LocalKafkaBroker(tmp_path / "broker")
    broker.start()
    try:
        bootstrap = broker.bootstrap_servers
        topics = TopicNames().with_suffix(f".restart-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topics)
        cards, uploaded = prepare_cards(tmp_path / "cards", n_good=73, seed=41)
        group = f"e2e-restart-{uuid.uuid4().hex[:8]}"
        settings = {"batch_size": 4, "produce_timeout_s": 30}
        runs = 1
        worker = start_worker(
            trained_bundle, bootstrap, topics, group, tmp_path / "w1.log", **settings
        )
        try:
            upload_everything(bootstrap, topics, cards, uploaded, tmp_path)
            total = len(uploaded.ids)
            deadline = time.monotonic() + 120
            while len(collect_outcomes(bootstrap, topics, crops=False).done_ids) < total // 4:
                worker.check_alive()
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.3)

            pid = broker.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            broker.stop()  # reaps the JVM, keeps the data directory
            time.sleep(OUTAGE_S)
            broker.start()  # same port, same log: the topics and committed offsets survive
            assert broker.bootstrap_servers == bootstrap

            deadline = time.monotonic() + 240
            exits = []
            while True:
                outcomes = collect_outcomes(bootstrap, topics)
                if uploaded.ids <= outcomes.done_ids:
                    break
                code = worker.returncode()
                if code is not None:  # gave up during the outage: must say so, then rerun
                    assert code != 0, worker.log_tail()
                    exits.append(code)
                    runs += 1
                    worker = start_worker(
                        trained_bundle, bootstrap, topics, group, tmp_path / f"w{runs}.log",
                        **settings,
                    )  # fmt: skip
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(1.0)
            assert worker.stop() == 0, worker.log_tail()
        finally:
            worker.stop()
    finally:
        broker.stop()

    assert_exactly_once(outcomes, uploaded)
    assert outcomes.detected_ids == set(uploaded.good)
    print(
        f"broker SIGKILLed after a quarter of {total} images, back after {OUTAGE_S:g} s: "
        + (
            f"the worker exited {exits} and finished on rerun"
            if exits
            else "the worker rode it out"
        )
        + f"; {len(outcomes.detections)} records + {len(outcomes.letters)} dead letters, "
        "0 duplicates"
    )
