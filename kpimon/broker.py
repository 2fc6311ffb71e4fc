"""Run a local single-node Apache Kafka 4.x broker (KRaft mode) for development and tests."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kpi_core.errors import KpimonError

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_PORT = 9092
HOST = "127.0.0.1"

# Kafka's own log4j config logs to files under the install dir; ours sends everything to
# stdout, which `up` redirects to broker.log, and keeps only what helps diagnose a failed start.
_LOG4J2 = """\
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
"""


class BrokerError(KpimonError):
    """The local Kafka broker could not be fetched, started or stopped."""


SecureProtocol = Literal["SSL", "SASL_PLAINTEXT", "SASL_SSL"]

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
#: What a local broker's SASL listeners offer: PLAIN checks the JAAS config, SCRAM the cluster metadata.
SASL_MECHANISMS = ("PLAIN", *SCRAM_MECHANISMS)


@dataclass(frozen=True)
class SecureListener:
    """An extra client listener beside PLAINTEXT, to run TLS and SASL clients against a local broker.

    ``require_client_cert`` (SSL and SASL_SSL only) asks clients for a certificate signed by
    ``BrokerTls.client_cafile``: mutual TLS.
    """

    protocol: SecureProtocol
    port: int
    require_client_cert: bool = False


@dataclass(frozen=True)
class BrokerTls:
    """The broker's certificate for its SSL and SASL_SSL listeners, as PEM files."""

    certfile: Path  # the broker's certificate, then any intermediates
    keyfile: Path  # its private key: PKCS#8 ("BEGIN PRIVATE KEY"), not encrypted
    client_cafile: Path | None = None  # the CA that signs client certificates, for require_client_cert


@dataclass(frozen=True)
class BrokerStatus:
    """A snapshot of one local broker."""

    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path


def project_root() -> Path:
    """Return the repository root: the parent of the ``kpimon`` package directory."""
    return Path(__file__).resolve().parent.parent


def bootstrap_servers() -> str | None:
    """Return the external cluster named by ``KAFKA_BOOTSTRAP_SERVERS``, or None to use a local broker."""
    return os.environ.get(BOOTSTRAP_ENV) or None


def _port_in_use(port: int) -> bool:
    """Return True when something on this machine already listens on ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _kafka_uuid() -> str:
    """Return a random Kafka cluster id, as ``StorageTool random-uuid`` would."""
    # Generated here rather than by StorageTool to save a JVM start; Kafka rejects ids
    # that start with "-" because they look like command-line flags.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a text file, or "" when it is missing."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


class LocalBroker:
    """A single-node KRaft broker whose jars, data and logs live under ``<root>/.cache/kafka``.

    It always listens for PLAINTEXT on ``port``. ``listeners`` adds SSL, SASL_PLAINTEXT or
    SASL_SSL listeners for trying secured clients; ``tls`` is then the broker's certificate and
    ``sasl_users`` the accounts (user -> password, for PLAIN and SCRAM). Those passwords are for
    test accounts: they are written to the broker's data dir and StorageTool's command line.
    """

    def __init__(
        self,
        root: Path,
        port: int = DEFAULT_PORT,
        controller_port: int | None = None,
        name: str = "local",
        *,
        listeners: Sequence[SecureListener] = (),
        tls: BrokerTls | None = None,
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name == "libs":
            raise BrokerError(f"invalid broker name {name!r}: use letters, digits, '.', '_' or '-', not 'libs'")
        _check_listeners(listeners, tls, sasl_users or {})
        self.listeners = tuple(listeners)
        self.tls = tls
        self.sasl_users = dict(sasl_users or {})
        self.root = Path(root)
        self.port = port
        self.controller_port = controller_port if controller_port is not None else port + 1
        self.name = name
        self.kafka_dir = self.root / ".cache" / "kafka"
        self.libs_dir = self.kafka_dir / "libs"
        self.data_dir = self.kafka_dir / name
        self.log_file = self.data_dir / "broker.log"
        self.pid_file = self.data_dir / "broker.pid"
        self._properties = self.data_dir / "server.properties"
        self._log4j = self.data_dir / "log4j2.properties"
        self._keystore = self.data_dir / "keystore.pem"
        self._storage = self.data_dir / "storage"
        self._pom = self.root / "deploy" / "kafka" / "pom.xml"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Return the bootstrap address this broker is configured for."""
        return f"{HOST}:{self.port}"

    def listener_bootstrap(self, protocol: SecureProtocol) -> str:
        """Return the bootstrap address of the extra listener speaking ``protocol``."""
        for listener in self.listeners:
            if listener.protocol == protocol:
                return f"{HOST}:{listener.port}"
        raise BrokerError(f"broker {self.name!r} has no {protocol} listener")

    def ensure_jars(self) -> Path:
        """Fetch the broker's jars with Maven unless a complete earlier fetch of this pom is cached."""
        if not self._pom.is_file():
            raise BrokerError(f"Maven pom for the Kafka jars not found: {self._pom}")
        # The marker holds the pom's hash, so editing the pom (say, a Kafka upgrade) refetches.
        pom_hash = hashlib.sha256(self._pom.read_bytes()).hexdigest()
        marker = self.libs_dir / ".complete"
        if marker.is_file() and marker.read_text().strip() == pom_hash:
            return self.libs_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) not found on PATH; it is needed once to fetch the Kafka jars")
        # Fetch into a private directory and rename it at the end, so an interrupted or
        # concurrent fetch never leaves a half-filled libs directory that looks complete.
        staging = self.kafka_dir / f"libs.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(self._pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not any(staging.glob("*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
            raise BrokerError(
                f"Maven could not fetch the Kafka jars (exit code {result.returncode}): {' '.join(cmd)}\n{output}"
            )
        (staging / ".complete").write_text(pom_hash + "\n")
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        return self.libs_dir

    def is_running(self) -> bool:
        """Return True when this broker's Java process is alive."""
        pid = self._read_pid()
        return pid is not None and self._alive(pid)

    def status(self) -> BrokerStatus:
        """Return whether the broker runs, its pid, bootstrap address and data directory."""
        pid = self._read_pid()
        if pid is None or not self._alive(pid):
            return BrokerStatus(running=False, pid=None, bootstrap=self.bootstrap, data_dir=self.data_dir)
        return BrokerStatus(running=True, pid=pid, bootstrap=self._running_bootstrap(), data_dir=self.data_dir)

    def up(self, timeout: float = 60) -> str:
        """Start the broker unless it already runs, wait until it serves metadata, and return its bootstrap."""
        if self.is_running():
            running = self._running_bootstrap()
            if running != self.bootstrap:
                raise BrokerError(
                    f"broker {self.name!r} already runs at {running}, not {self.bootstrap}; stop it first"
                )
            return self._wait_ready(timeout)
        self.pid_file.unlink(missing_ok=True)
        for port in (self.port, self.controller_port, *(listener.port for listener in self.listeners)):
            if _port_in_use(port):
                raise BrokerError(
                    f"port {port} on {HOST} is already in use; pick another port, stop whatever "
                    f"listens there, or set {BOOTSTRAP_ENV} to use an existing cluster"
                )
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java not found on PATH; Kafka 4 needs Java 17 or newer")
        libs = self.ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log4j.write_text(_LOG4J2)
        if self.tls is not None:
            # Kafka's PEM key store is one file holding the key and its certificate chain.
            self._keystore.write_text(self.tls.keyfile.read_text() + "\n" + self.tls.certfile.read_text())
            self._keystore.chmod(0o600)
        self._properties.write_text(self._server_properties())
        if self.sasl_users:
            self._properties.chmod(0o600)  # it holds the PLAIN passwords
        classpath = ["-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={self._log4j}"]
        with self.log_file.open("wb") as log:
            if not (self._storage / "meta.properties").is_file():
                self._format(java, classpath, log)
            self._proc = subprocess.Popen(
                [java, "-Xmx512m", *classpath, "kafka.Kafka", str(self._properties)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI and ignores the terminal's Ctrl-C
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            return self._wait_ready(timeout)
        except BrokerError:
            # A broker that failed to come up is not left behind for the next `up` to trip over.
            self.down()
            raise

    def down(self, timeout: float = 30) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` seconds); return False if it was not running."""
        pid = self._read_pid()
        if pid is None or not self._alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10):
                raise BrokerError(f"Kafka (pid {pid}) survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return True

    def _format(self, java: str, classpath: list[str], log: BinaryIO) -> None:
        """Format the storage directory as a new single-voter KRaft cluster."""
        cmd = [java, *classpath, "kafka.tools.StorageTool", "format", "--standalone",
               "-t", _kafka_uuid(), "-c", str(self._properties)]
        if any(listener.protocol.startswith("SASL_") for listener in self.listeners):
            # SCRAM credentials live in the cluster metadata; formatting is the one time to add them offline.
            for user, password in self.sasl_users.items():
                for mechanism in SCRAM_MECHANISMS:
                    cmd += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            log.flush()
            raise BrokerError(
                f"formatting Kafka storage failed (exit code {result.returncode}); see {self.log_file}\n"
                f"{_tail(self.log_file)}"
            )

    def _server_properties(self) -> str:
        """Return server.properties for a single broker+controller node on 127.0.0.1."""
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._storage),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Replayed 2024 data carries 2024 CreateTime timestamps: keep it instead of
            # deleting it by time retention, and accept timestamps far from now.
            "log.retention.ms": "-1",
            "log.message.timestamp.after.max.ms": "9223372036854775807",
            "log.retention.check.interval.ms": "300000",
            # Topics are created explicitly, so a typo fails loudly instead of making a new topic.
            "auto.create.topics.enable": "false",
        }
        if self.listeners:
            settings.update(self._secure_properties())
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _secure_properties(self) -> dict[str, str]:
        """Return the settings that add the extra TLS and SASL listeners (PLAINTEXT stays for brokers' own use)."""
        extra = ",".join(f"{lst.protocol}://{HOST}:{lst.port}" for lst in self.listeners)
        protocols = ",".join(f"{lst.protocol}:{lst.protocol}" for lst in self.listeners)
        settings = {
            "listeners": f"PLAINTEXT://{HOST}:{self.port},{extra},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port},{extra}",
            "listener.security.protocol.map": f"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,{protocols}",
            "inter.broker.listener.name": "PLAINTEXT",
        }
        if self.tls is not None:
            settings["ssl.keystore.type"] = "PEM"
            settings["ssl.keystore.location"] = str(self._keystore)
            if self.tls.client_cafile is not None:
                settings["ssl.truststore.type"] = "PEM"
                settings["ssl.truststore.location"] = str(self.tls.client_cafile)
        users = " ".join(f'user_{user}="{password}"' for user, password in self.sasl_users.items())
        for lst in self.listeners:
            prefix = f"listener.name.{lst.protocol.lower()}."
            if lst.require_client_cert:
                settings[prefix + "ssl.client.auth"] = "required"
            if lst.protocol.startswith("SASL_"):
                settings[prefix + "sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
                settings[prefix + "plain.sasl.jaas.config"] = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
                for mechanism in SCRAM_MECHANISMS:
                    settings[prefix + f"{mechanism.lower()}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    )
        return settings

    def _running_bootstrap(self) -> str:
        """Return the bootstrap address from the config the running broker was started with."""
        try:
            text = self._properties.read_text()
        except FileNotFoundError:
            return self.bootstrap
        match = re.search(r"^advertised\.listeners=PLAINTEXT://([^,\s]+)", text, re.MULTILINE)
        return match.group(1) if match else self.bootstrap

    def _read_pid(self) -> int | None:
        """Return the pid recorded in the pid file, or None."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, pid: int) -> bool:
        """Return True when ``pid`` is a live (not zombie) Kafka process using this broker's config."""
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        if Path("/proc/self").exists():
            # Checking the command line guards against a stale pid file whose pid was reused;
            # a zombie's cmdline is empty, so it counts as dead.
            try:
                return str(self._properties).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                return False
        try:
            os.kill(pid, 0)  # without /proc (macOS) only existence can be checked
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        return True

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``pid`` to exit; return True if it did."""
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _wait_ready(self, timeout: float) -> str:
        """Wait until the broker answers a metadata request with itself registered and unfenced."""
        from kafka import KafkaAdminClient  # imported late: kafka-python is slow to import

        bootstrap = self._running_bootstrap()
        host, port = bootstrap.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            pid = self._read_pid()
            if pid is None or not self._alive(pid):
                code = self._proc.returncode if self._proc is not None else None
                raise BrokerError(
                    f"Kafka exited during startup (exit code {code}); see {self.log_file}\n{_tail(self.log_file)}"
                )
            try:
                # A plain connect first: it fails fast and quietly while the JVM is still booting.
                with socket.create_connection((host, int(port)), timeout=1):
                    pass
                admin = KafkaAdminClient(
                    bootstrap_servers=bootstrap, bootstrap_timeout_ms=2000, request_timeout_ms=2000
                )
                try:
                    brokers = admin.describe_cluster()["brokers"]
                finally:
                    admin.close()
                if brokers and not any(b.get("is_fenced") for b in brokers):
                    return bootstrap
            except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
                pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"Kafka did not become ready at {bootstrap} within {timeout:g}s; see {self.log_file}\n"
                    f"{_tail(self.log_file)}"
                )
            time.sleep(0.5)


def _check_listeners(listeners: Sequence[SecureListener], tls: BrokerTls | None, users: Mapping[str, str]) -> None:
    """Reject extra listeners the broker could not start with, before anything is written."""
    protocols = [listener.protocol for listener in listeners]
    if len(set(protocols)) != len(protocols):
        raise BrokerError(f"one extra listener per protocol, got {', '.join(protocols)}")
    for listener in listeners:
        if listener.protocol not in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise BrokerError(f"unknown listener protocol {listener.protocol!r}")
        uses_tls = listener.protocol.endswith("SSL")
        if uses_tls and tls is None:
            raise BrokerError(f"the {listener.protocol} listener needs tls=BrokerTls(...), the broker's certificate")
        if listener.require_client_cert and (not uses_tls or tls is None or tls.client_cafile is None):
            raise BrokerError(f"require_client_cert on {listener.protocol} needs TLS and BrokerTls.client_cafile")
        if listener.protocol.startswith("SASL_") and not users:
            raise BrokerError(f"the {listener.protocol} listener needs sasl_users, the accounts clients log in as")
    for user, password in users.items():
        # Both end up inside a JAAS string and a StorageTool argument, which have no escaping we can rely on.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", user) or not re.fullmatch(r"[A-Za-z0-9_.!@#%^&*+-]+", password):
            raise BrokerError(f"SASL user {user!r}: use letters, digits, '.', '_' or '-' (and punctuation in passwords)")


kafka_app = typer.Typer(
    help="Run a local single-node Kafka broker (KRaft) under .cache/kafka; "
    f"not needed when {BOOTSTRAP_ENV} points at a cluster.",
    no_args_is_help=True,
)
_console = Console()

PortOption = Annotated[
    int, typer.Option("--port", help="Client port; the controller uses port+1, and each port has its own data dir.")
]


def _local_broker(port: int) -> LocalBroker:
    """Return the local broker for ``port``: "local" on the default port, "local-<port>" otherwise."""
    name = "local" if port == DEFAULT_PORT else f"local-{port}"
    return LocalBroker(project_root(), port=port, name=name)


def _fail(error: BrokerError) -> typer.Exit:
    """Print ``error`` and return the exit to raise."""
    _console.print(f"[red]error:[/red] {escape(str(error))}")
    return typer.Exit(1)


@kafka_app.command()
def up(port: PortOption = DEFAULT_PORT, timeout: float = 60) -> None:
    """Start the local broker (fetching its jars on first use) and wait until it is ready."""
    external = bootstrap_servers()
    if external:
        _console.print(f"{BOOTSTRAP_ENV} is set: using the external cluster at {escape(external)}; nothing started.")
        return
    broker = _local_broker(port)
    try:
        with _console.status("Starting Kafka (the first start downloads ~45 MB of jars)..."):
            bootstrap = broker.up(timeout=timeout)
    except BrokerError as error:
        raise _fail(error) from error
    _console.print(f"[green]Kafka is up[/green] at [bold]{bootstrap}[/bold] (data: {escape(str(broker.data_dir))})")


@kafka_app.command()
def down(port: PortOption = DEFAULT_PORT) -> None:
    """Stop the local broker."""
    external = bootstrap_servers()
    if external:
        _console.print(f"{BOOTSTRAP_ENV} is set: using the external cluster at {escape(external)}; nothing stopped.")
        return
    broker = _local_broker(port)
    try:
        stopped = broker.down()
    except BrokerError as error:
        raise _fail(error) from error
    _console.print("[green]Kafka stopped.[/green]" if stopped else f"Kafka was not running on port {port}.")


@kafka_app.command()
def status(port: PortOption = DEFAULT_PORT) -> None:
    """Show whether the local broker is running."""
    external = bootstrap_servers()
    if external:
        _console.print(f"{BOOTSTRAP_ENV} is set: using the external cluster at {escape(external)}.")
        return
    state = _local_broker(port).status()
    table = Table(show_header=False, box=None)
    table.add_row("state", "[green]running[/green]" if state.running else "[yellow]stopped[/yellow]")
    table.add_row("pid", str(state.pid) if state.pid else "-")
    table.add_row("bootstrap", state.bootstrap)
    table.add_row("data dir", escape(str(state.data_dir)))
    _console.print(table)
