"""Shared pytest fixtures: one Kafka broker per test session and unique names per test."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpimon.broker import LocalBroker, bootstrap_servers

ROOT = Path(__file__).resolve().parent.parent
INTEGRATION_DIR = ROOT / "tests" / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration``."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that are free on 127.0.0.1 right now."""
    # All sockets stay bound until every port is chosen, so the OS cannot hand one out twice.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Yield a bootstrap address: $KAFKA_BOOTSTRAP_SERVERS, or a private broker started for this session."""
    external = bootstrap_servers()
    if external:
        yield external
        return
    port, controller_port = _free_ports(2)
    # A per-session name and free ports keep tests away from a developer's broker on 9092.
    broker = LocalBroker(ROOT, port=port, controller_port=controller_port, name=f"test-{os.getpid()}")
    # If startup fails the data dir is kept: the error names its broker.log.
    bootstrap = broker.up(timeout=120)
    try:
        yield bootstrap
    finally:
        broker.down()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


@pytest.fixture
def unique_prefix() -> str:
    """Return a short unique string for topic names and consumer group ids."""
    return f"t{uuid.uuid4().hex[:10]}"
