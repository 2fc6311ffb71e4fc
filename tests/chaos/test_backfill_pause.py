"""A historical backfill whose producers all pause for longer than ``idle_timeout`` (seconds, and
minutes), with and without a kill -9 just before the input resumes: no event may turn late.

Before, the wall-clock idleness rule moved event time on to the clock during the pause and
closed every open window over data still to come (9,023 of 11,000 events late after a
five-minute pause), and stage 1 kept trusting a killed router's last "no backlog" report."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.support import truth
from tests.support.worker import Worker, topic_names


def _config(prefix: str) -> dict:
    return {**truth.CONFIG, "idle_timeout": "5s", "allowed_lateness": "5s", "topics": topic_names(prefix) | {"partitions": 4}}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("pause", [12, 130], ids=["12s", "2min"])
def test_a_backfill_that_pauses_loses_nothing_with_or_without_a_kill(kafka_bootstrap: str, tmp_path: Path, pause: int) -> None:
    evs = truth.events(20_000, seed=21)
    want = truth.truth(evs)
    first, rest = evs[:9_000], evs[9_000:]
    # Two pipelines side by side on the same input: one left alone, one with two workers,
    # one of which is killed (and restarted) just before the input resumes.
    runs: dict[str, list[Worker]] = {}
    for name, n in (("calm", 1), ("kill", 2)):
        prefix = f"{name}{uuid.uuid4().hex[:6]}"
        runs[prefix] = []
        for i in range(n):
            (tmp_path / f"{prefix}{i}").mkdir()
            # Started together (see test_many_kills.py), then all waited for.
            runs[prefix].append(Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp_path / f"{prefix}{i}").start(wait=False))
    for workers in runs.values():
        for w in workers:
            w.wait_ready(90)
    try:
        for prefix in runs:
            truth.KcatFeed(kafka_bootstrap, prefix, truth.kcat_lines(first), seconds=0).join()
        time.sleep(pause - 2)
        for workers in runs.values():
            if len(workers) > 1:
                workers[1].kill()
        time.sleep(1)
        for workers in runs.values():
            if len(workers) > 1:
                workers[1].start(wait=False)
        feeds = [truth.KcatFeed(kafka_bootstrap, prefix, truth.kcat_lines(rest, offset=len(first)), seconds=0) for prefix in runs]
        for feed in feeds:
            feed.join()
        for prefix, workers in runs.items():
            truth.close(kafka_bootstrap, prefix, evs)
        for prefix in runs:
            got = list(truth.snapshots(kafka_bootstrap, f"{prefix}-kpi-snapshots", expect=len(want), timeout=180))
            problems = truth.compare(got, want)
            assert problems == [], f"{prefix}: {len(problems)} windows differ, e.g.:\n" + "\n".join(problems[:10])
            assert truth.count(kafka_bootstrap, f"{prefix}-late-events") == 0
    finally:
        for workers in runs.values():
            for w in workers:
                w.stop()
