"""Kafka over TLS and SASL for real: a private broker with a mutual-TLS listener and a SASL_SSL listener
(PLAIN and SCRAM), kpimon's kafka-python and aiokafka clients configured only through KafkaSecurity,
and a ``kpimon worker`` that computes KPIs over SASL_SSL without its password reaching the log."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from kafka import KafkaConsumer

from kpimon.broker import BrokerError, BrokerTls, LocalBroker, SecureListener, SecureProtocol, project_root
from kpimon.producer import connect, produce_file, send_markers
from kpimon.silences import SilenceStoreError, add_silence, ensure_topic, read_silences, topic_partitions
from streams.security import KafkaSecurity
from streams.silences import SilenceWatcher
from tests.streams.test_security import KEY_PASSWORD, Pki, make_pki
from tests.support.worker import ROOT, Worker, topic_names

pytestmark = pytest.mark.integration

SASL_USER = "kpimon"
SASL_PASSWORD = "Sasl-pw-9f3b1c-never-logged"
WRONG_PASSWORD = "Wrong-pw-5e1f"
T = 1_714_564_800_000  # 2024-05-01T12:00:00Z

# The worker builds its faust.App in streams/app.py; until that passes KafkaSecurity's
# credentials (broker_credentials=...faust_credentials()), its Faust consumer and producer
# speak PLAINTEXT and can't reach a TLS listener. Remove this skip once it does.


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[LocalBroker]:
    """A private broker: PLAINTEXT (its own use), SSL requiring a client certificate, and SASL_SSL."""
    port, controller, ssl_port, sasl_port = _free_ports(4)
    broker = LocalBroker(
        project_root(),
        port=port,
        controller_port=controller,
        name=f"tls-{os.getpid()}",
        listeners=[SecureListener("SSL", ssl_port, require_client_cert=True), SecureListener("SASL_SSL", sasl_port)],
        tls=BrokerTls(certfile=pki.server_cert, keyfile=pki.server_key, client_cafile=pki.ca),
        sasl_users={SASL_USER: SASL_PASSWORD},
    )
    broker.up(timeout=120)
    try:
        yield broker
    finally:
        broker.down()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


def _mtls_env(pki: Pki) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(pki.ca),
        "KAFKA_SSL_CERTFILE": str(pki.client_cert),
        "KAFKA_SSL_KEYFILE": str(pki.client_key),
        "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }


def _sasl_env(pki: Pki, mechanism: str = "PLAIN", password: str = SASL_PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": SASL_USER,
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_SSL_CAFILE": str(pki.ca),
    }


def _consume(bootstrap: str, topic: str, security: KafkaSecurity, count: int, timeout: float = 30) -> list[tuple[bytes | None, bytes]]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"check-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
        **security.kafka_python_options(),
    )
    records: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.value) for r in batch)
    finally:
        consumer.close()
    return records


def test_kafka_python_round_trips_over_mutual_tls(broker: LocalBroker, pki: Pki, unique_prefix: str) -> None:
    bootstrap = broker.listener_bootstrap("SSL")
    security = KafkaSecurity.from_env(_mtls_env(pki))
    topic = f"{unique_prefix}-tls"

    assert ensure_topic(bootstrap, topic, security=security)  # kafka-python admin, as kpimon's CLI builds it
    producer = connect(bootstrap, acks="all", security=security)
    try:
        producer.send(topic, key=b"alpha", value=b'{"over": "tls"}').get(timeout=30)
    finally:
        producer.close()

    assert _consume(bootstrap, topic, security, 1) == [(b"alpha", b'{"over": "tls"}')]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_silences_through_kafka_python_and_aiokafka(broker: LocalBroker, pki: Pki, unique_prefix: str, mechanism: str) -> None:
    bootstrap = broker.listener_bootstrap("SASL_SSL")
    security = KafkaSecurity.from_env(_sasl_env(pki, mechanism))
    topic = f"{unique_prefix}-silences"

    # kafka-python: admin (create the topic), producer (write), consumer (read back)
    silence = add_silence(bootstrap, topic, matchers={"campaign": "alpha"}, duration_ms=60_000, reason="tls test",
                          created_by="pytest", security=security)
    assert read_silences(bootstrap, topic, security=security).get(silence.id) == silence

    # aiokafka: the worker's silence watcher follows the same topic
    async def watch() -> None:
        async with SilenceWatcher(bootstrap, topic, retry_after=0.2, security=security) as watcher:
            await asyncio.wait_for(watcher.ready.wait(), timeout=30)
            assert watcher.silences.get(silence.id) == silence

    asyncio.run(watch())


@pytest.mark.parametrize(
    ("listener", "env", "reason"),
    [
        pytest.param("SASL_SSL", lambda pki: _sasl_env(pki, password=WRONG_PASSWORD), "Invalid username or password",
                     id="wrong-password"),
        pytest.param("SASL_SSL", lambda pki: {**_sasl_env(pki, "SCRAM-SHA-256"), "KAFKA_SASL_USERNAME": "mallory"},
                     "invalid credentials with SASL mechanism SCRAM-SHA-256", id="unknown-scram-user"),
        # a client that trusts another CA refuses the broker's certificate
        pytest.param("SASL_SSL", lambda pki: {**_sasl_env(pki), "KAFKA_SSL_CAFILE": str(pki.other_ca)}, "CERTIFICATE_VERIFY_FAILED",
                     id="untrusted-broker"),
        # the mutual-TLS listener hangs up on a client without a certificate (TLS 1.3 says so only after the handshake)
        pytest.param("SSL", lambda pki: {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(pki.ca)}, "closed",
                     id="no-client-certificate"),
        # and on a plaintext client
        pytest.param("SSL", lambda pki: {}, "closed", id="plaintext-client"),
    ],
)
def test_the_broker_refuses_bad_credentials_for_the_right_reason(
    broker: LocalBroker,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    listener: SecureProtocol,
    env: Callable[[Pki], dict[str, str]],
    reason: str,
) -> None:
    security = KafkaSecurity.from_env(env(pki))
    caplog.set_level(logging.ERROR, logger="aiokafka")

    async def connect_aiokafka() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.listener_bootstrap(listener), **security.aiokafka_options())
        try:
            await consumer.start()
        finally:
            await consumer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect_aiokafka())
    # aiokafka raises a bare "Unable to bootstrap"; the reason is in its log, without the password
    assert reason in caplog.text
    assert WRONG_PASSWORD not in caplog.text


def test_kafka_python_is_refused_too(broker: LocalBroker, pki: Pki) -> None:
    security = KafkaSecurity.from_env(_sasl_env(pki, password=WRONG_PASSWORD))

    with pytest.raises(SilenceStoreError) as caught:
        topic_partitions(broker.listener_bootstrap("SASL_SSL"), "any-topic", timeout=3, security=security)
    assert WRONG_PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listeners": [SecureListener("SSL", 1)]}, "the SSL listener needs tls=BrokerTls(...)"),
        ({"listeners": [SecureListener("SASL_PLAINTEXT", 1)]}, "the SASL_PLAINTEXT listener needs sasl_users"),
        ({"listeners": [SecureListener("SASL_PLAINTEXT", 1, require_client_cert=True)], "sasl_users": {"u": "p"}},
         "require_client_cert on SASL_PLAINTEXT needs TLS"),
        ({"listeners": [SecureListener("SASL_PLAINTEXT", 1), SecureListener("SASL_PLAINTEXT", 2)], "sasl_users": {"u": "p"}},
         "one extra listener per protocol"),
        # a quote would end the JAAS string early
        ({"listeners": [SecureListener("SASL_PLAINTEXT", 1)], "sasl_users": {"u": 'p"; x="'}}, "SASL user 'u'"),
    ],
)
def test_local_broker_rejects_listeners_it_could_not_start(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(BrokerError, match=re.escape(message)):
        LocalBroker(tmp_path, port=1, name="bad", **kwargs)


def _worker_config(prefix: str) -> dict:
    return {
        "windows": [{"size": "10s"}],
        "allowed_lateness": "2s",
        "idle_timeout": "3s",
        "breakdowns": [["campaign"], []],
        "measures": {"impressions": {"event": "impression"}, "clicks": {"event": "click"}},
        "kpis": {"ctr": {"ratio": ["clicks", "impressions"], "direction": "higher", "unit": "percent"}},
        "topics": topic_names(prefix),
    }


def _events_file(path: Path) -> Path:
    """Campaign alpha: 40 impressions and 3 clicks in one 10 s window (progress markers close it)."""
    events = [{"type": "impression", "ts": T + i * 200, "campaign": "alpha", "channel": "email"} for i in range(40)]
    events += [{"type": "click", "ts": T + 1000 * i, "campaign": "alpha", "channel": "email", "cost": 0.5} for i in range(1, 4)]
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    return path


def test_worker_computes_kpis_over_sasl_ssl_and_never_logs_the_password(broker: LocalBroker, pki: Pki, tmp_path: Path) -> None:
    bootstrap = broker.listener_bootstrap("SASL_SSL")
    env = _sasl_env(pki, "SCRAM-SHA-256")
    security = KafkaSecurity.from_env(env)
    prefix = f"tls{uuid.uuid4().hex[:8]}"
    config = _worker_config(prefix)
    worker = Worker(config, bootstrap=bootstrap, app_id=prefix, tmp=tmp_path, env=env)
    worker.start()  # creates the topics over SASL_SSL (kafka-python), then Faust joins its group over SASL_SSL
    try:
        topics = {etype: topic for topic, etype in config["topics"]["sources"].items()}
        produce_file(_events_file(tmp_path / "events.jsonl"), bootstrap=bootstrap, topics=topics, security=security)
        send_markers(bootstrap, topics.values(), T + 60_000, security=security)  # over SASL_SSL too
        # `kpimon silence add` from the command line, over SASL_SSL, reaches the worker's watcher (aiokafka)
        cli = subprocess.run(
            [sys.executable, "-m", "kpimon.cli", "silence", "add", "--campaign", "beta", "--for", "1h", "--reason", "tls",
             "--config", str(worker.config_path)],
            env={**worker.env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr

        ctr = worker.wait_for("kpimon_kpi_value", {"kpi": "ctr", "window": "10s", "breakdown": "campaign", "campaign": "alpha"})
        assert ctr == pytest.approx(3 / 40, rel=1e-12)
        snapshots = _consume(bootstrap, config["topics"]["snapshots"], security, 1)
        assert snapshots, "the worker's snapshots can be read back over SASL_SSL"
        _wait_for_log(worker, "silences: ", "campaign=beta")
    finally:
        worker.stop()

    log = worker.log()
    assert "caught up with" in log  # the watcher did connect
    assert SASL_PASSWORD not in log
    assert SASL_PASSWORD not in cli.stdout + cli.stderr


def _wait_for_log(worker: Worker, *fragments: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(all(f in line for f in fragments) for line in worker.log().splitlines()):
            return
        time.sleep(0.3)
    raise TimeoutError(f"no log line with {fragments} after {timeout}s:\n{worker.log()[-3000:]}")
