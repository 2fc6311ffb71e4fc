"""Two workers, many kill -9s of either and of both, in quick succession and during rebalances,
while kcat streams the input: every window must equal the ground truth counted from the input,
and every hostile message must be dead-lettered.

This is the scenario that lost events before positions (streams/ordered.py): an internal
message Faust's stream acked without handing it to the agent, just after a rebalance."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest

from tests.support import truth
from tests.support.worker import Worker, free_port, topic_names


def _config(prefix: str) -> dict:
    return {**truth.CONFIG, "topics": topic_names(prefix) | {"partitions": 4}}


@pytest.mark.timeout(900)
def test_two_workers_killed_many_times_together_and_apart_lose_and_duplicate_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    rng = random.Random(11)
    prefix = f"many{uuid.uuid4().hex[:6]}"
    evs = truth.events(200_000, seed=8)
    want = truth.truth(evs)
    preload, stream = evs[:80_000], evs[80_000:]
    # One config file for both; each worker's port and bind address come from its environment.
    shared = tmp_path / "kpimon.yaml"
    workers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        env = {"KPIMON_METRICS_PORT": str(free_port()), "KPIMON_METRICS_HOST": "127.0.0.1"}
        workers.append(Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path / name, env=env, config_path=shared))
    assert "metrics_port" not in shared.read_text()
    a, b = workers
    # Started together, so they split the partitions in their first rebalance (docs/reliability.md:
    # a second worker joining a first that has written changelog records was once seen to hang
    # Faust's recovery). Every later kill and restart is a real join under load.
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready(90)
    b.wait_ready(90)
    hostile = 200
    truth.KcatFeed(kafka_bootstrap, prefix, truth.kcat_lines(preload, hostile=hostile // 2), seconds=0).join()
    feed = truth.KcatFeed(kafka_bootstrap, prefix, truth.kcat_lines(stream, hostile=hostile - hostile // 2, offset=len(preload)), seconds=50)
    # Twelve kill events 1.5-4.5 s apart while the stream runs; three of them kill both at
    # the same moment. Victims restart at once, without waiting: the next kill may hit a
    # worker that is still restoring its state or in the middle of a rebalance.
    plan = ["a", "b", "both", "a", "a", "b", "both", "b", "a", "both", "b", "a"]
    try:
        for victim in plan:
            time.sleep(rng.uniform(1.5, 4.5))
            targets = [a, b] if victim == "both" else [a if victim == "a" else b]
            for w in targets:
                w.kill()
            for w in targets:
                w.start(wait=False)
        feed.join()
        for w in workers:
            w.wait_ready(120)
        truth.close_with_kcat(kafka_bootstrap, prefix, evs)
        got = list(truth.snapshots(kafka_bootstrap, f"{prefix}-kpi-snapshots", expect=len(want), timeout=300))
        problems = truth.compare(got, want)
        assert problems == [], f"{len(problems)} windows differ, e.g.:\n" + "\n".join(problems[:10])
        dead = truth.dead_letter_sources(kafka_bootstrap, f"{prefix}-dead-letters", expect=hostile)
        assert len(dead) == hostile
    finally:
        for w in workers:
            w.stop()
