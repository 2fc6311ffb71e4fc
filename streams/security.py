"""How kpimon's Kafka clients authenticate: TLS and SASL settings, read from the environment only.

One ``KafkaSecurity`` feeds every client: kafka-python (CLI, admin, producers),
aiokafka (the silences watcher) and Faust (the worker's consumer and producer).
Secrets are ``SecretStr``, so ``repr()`` and logs show ``**********``; they are
unwrapped only in the options handed to a client.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from alerts.settings import env_value as _value
from alerts.settings import read_secret
from kpi_core.errors import ConfigError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)

#: The environment variable behind each field: errors name the variable an operator sets.
ENV = {
    "protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
    "ssl_certfile": "KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "KAFKA_SSL_KEYFILE",
    "ssl_keyfile_password": "KAFKA_SSL_KEY_PASSWORD",
    "ssl_check_hostname": "KAFKA_SSL_CHECK_HOSTNAME",
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class KafkaSecurity(BaseModel):
    """TLS and SASL settings for connecting to Kafka; PLAINTEXT (no security) by default.

    Inconsistent settings raise ``ConfigError`` naming the environment variable to fix,
    whether the object comes from ``from_env`` or is built directly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None  # None: the system's CAs
    ssl_certfile: Path | None = None  # a client certificate, for brokers that require one
    ssl_keyfile: Path | None = None  # its key, unless the certificate file holds it too
    ssl_keyfile_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        # ConfigError is not a ValueError, so pydantic lets it through unwrapped.
        problems = _problems(self)
        if problems:
            raise ConfigError(problems)
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> KafkaSecurity:
        """Read ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*`` and ``KAFKA_SSL_*``; every problem is reported at once."""
        problems: list[tuple[str, str]] = []
        fields: dict[str, Any] = {}
        protocol = _value(env, ENV["protocol"])
        if protocol is not None:
            fields["protocol"] = _choice(protocol, ENV["protocol"], PROTOCOLS, problems)
        mechanism = _value(env, ENV["sasl_mechanism"])
        if mechanism is not None:
            fields["sasl_mechanism"] = _choice(mechanism, ENV["sasl_mechanism"], MECHANISMS, problems)
        fields["sasl_username"] = _value(env, ENV["sasl_username"])
        fields["sasl_password"] = _secret(env, ENV["sasl_password"], problems)
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = _value(env, ENV[name])
            fields[name] = Path(path) if path else None
        fields["ssl_keyfile_password"] = _secret(env, ENV["ssl_keyfile_password"], problems)
        check_hostname = _value(env, ENV["ssl_check_hostname"])
        if check_hostname is not None:
            fields["ssl_check_hostname"] = _flag(check_hostname, ENV["ssl_check_hostname"], problems)
        fields = {k: v for k, v in fields.items() if v is not None}
        if problems:
            # A bad value is left out above and the rest still checked, so one run lists everything;
            # but without a valid protocol every other check would be a guess.
            if protocol is None or "protocol" in fields:
                try:
                    cls(**fields)
                except ConfigError as exc:
                    # A secret whose *_FILE is already reported is not "required" on top.
                    reported = {name.removesuffix("_FILE") for name, _ in problems}
                    problems += [p for p in exc.problems if p not in problems and p[0] not in reported]
            raise ConfigError(problems)
        return cls(**fields)

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """A one-line summary for logs, without secrets: ``SASL_SSL (PLAIN as kpimon)``."""
        parts = []
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.uses_ssl and self.ssl_certfile is not None:
            parts.append("client certificate")
        if self.uses_ssl and not self.ssl_check_hostname:
            parts.append("hostname not checked")
        return f"{self.protocol} ({', '.join(parts)})" if parts else self.protocol

    def kafka_python_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options.update(self._sasl_options())
        if self.uses_ssl:
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for key, path in (("ssl_cafile", self.ssl_cafile), ("ssl_certfile", self.ssl_certfile), ("ssl_keyfile", self.ssl_keyfile)):
                if path is not None:
                    options[key] = str(path)
            if self.ssl_keyfile_password is not None:
                options["ssl_password"] = self.ssl_keyfile_password.get_secret_value()
        return options

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's clients (``AIOKafkaConsumer``, ``AIOKafkaProducer``)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options.update(self._sasl_options())
        if self.uses_ssl:
            options["ssl_context"] = self.ssl_context()
        return options

    def faust_credentials(self) -> CredentialsT | None:
        """``broker_credentials`` for ``faust.App``: None for PLAINTEXT, else SSL or SASL credentials."""
        import faust  # imported late: the kafka-python CLI commands don't need it

        if not self.uses_sasl:
            return faust.SSLCredentials(self.ssl_context()) if self.uses_ssl else None
        assert self.sasl_username is not None and self.sasl_password is not None  # checked by _problems
        # Faust picks SASL_SSL over SASL_PLAINTEXT by whether an SSL context is given.
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password.get_secret_value(),
            ssl_context=self.ssl_context() if self.uses_ssl else None,
            mechanism=self.sasl_mechanism,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client's TLS context (aiokafka's helper), or None when the protocol uses no TLS."""
        if not self.uses_ssl:
            return None
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=_str(self.ssl_cafile),
            certfile=_str(self.ssl_certfile),
            keyfile=_str(self.ssl_keyfile),
            password=self._key_password(),
        )
        context.check_hostname = self.ssl_check_hostname
        return context

    def _sasl_options(self) -> dict[str, Any]:
        assert self.sasl_password is not None  # checked by _problems
        return {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password.get_secret_value(),
        }

    def _key_password(self) -> Callable[[], str]:
        # Always a callable: with no password OpenSSL would otherwise prompt on the terminal
        # for an encrypted key, and a worker has nobody to answer.
        secret = self.ssl_keyfile_password
        return lambda: secret.get_secret_value() if secret is not None else ""


def _problems(security: KafkaSecurity) -> list[tuple[str, str]]:
    """What is missing or contradictory, each as (environment variable, message)."""
    s = security
    protocol = s.protocol
    problems: list[tuple[str, str]] = []
    if s.uses_sasl:
        password = s.sasl_password.get_secret_value() if s.sasl_password is not None else ""
        for field, value in (("sasl_username", s.sasl_username or ""), ("sasl_password", password)):
            if not value.strip():
                problems.append((ENV[field], f"required when {ENV['protocol']} is {protocol}"))
    else:
        # Settings that would be silently ignored usually mean the protocol was forgotten.
        problems.extend(
            (ENV[field], _only_with_sasl(protocol))
            for field in ("sasl_mechanism", "sasl_username", "sasl_password")
            if field in s.model_fields_set and getattr(s, field) is not None
        )
    ssl_fields = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_keyfile_password")
    if not s.uses_ssl:
        problems.extend(
            (ENV[field], f"only used when {ENV['protocol']} is SSL or SASL_SSL, not {protocol}")
            for field in ssl_fields
            if getattr(s, field) is not None
        )
        return problems
    if s.ssl_keyfile is not None and s.ssl_certfile is None:
        problems.append((ENV["ssl_keyfile"], f"needs {ENV['ssl_certfile']}, the certificate the key belongs to"))
    if s.ssl_keyfile_password is not None and s.ssl_certfile is None:
        problems.append((ENV["ssl_keyfile_password"], f"needs {ENV['ssl_certfile']} (and {ENV['ssl_keyfile']})"))
    for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(s, field)
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            problems.append((ENV[field], f"{'no such file' if not path.exists() else 'not a readable file'}: {path}"))
    return problems or _load_problems(s)


def _load_problems(s: KafkaSecurity) -> list[tuple[str, str]]:
    """Load the CA and the client certificate now, so a bad file fails at start, not at first connect."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    problems: list[tuple[str, str]] = []
    if s.ssl_cafile is not None:
        try:
            context.load_verify_locations(cafile=str(s.ssl_cafile))
        except (ssl.SSLError, ValueError) as exc:
            problems.append((ENV["ssl_cafile"], f"not a PEM CA certificate: {s.ssl_cafile} ({_reason(exc)})"))
    if s.ssl_certfile is not None:
        key = s.ssl_keyfile or s.ssl_certfile
        encrypted = b"ENCRYPTED" in key.read_bytes()  # PKCS#8 "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED"
        if encrypted and s.ssl_keyfile_password is None:
            return [*problems, (ENV["ssl_keyfile_password"], f"required: the key in {key} is encrypted")]
        try:
            context.load_cert_chain(str(s.ssl_certfile), _str(s.ssl_keyfile), password=s._key_password())
        except (ssl.SSLError, ValueError) as exc:
            if encrypted:  # OpenSSL can't tell a wrong password from a key that doesn't match
                problems.append((ENV["ssl_keyfile_password"], f"does not decrypt the key in {key}, or it is not the key of {s.ssl_certfile} ({_reason(exc)})"))
            else:
                problems.append((ENV["ssl_certfile"], f"cannot load the certificate {s.ssl_certfile} with the key in {key} ({_reason(exc)})"))
    return problems


def _only_with_sasl(protocol: str) -> str:
    return f"only used when {ENV['protocol']} is SASL_PLAINTEXT or SASL_SSL, not {protocol}"


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _choice(value: str, name: str, choices: tuple[str, ...], problems: list[tuple[str, str]]) -> str | None:
    normalised = value.upper().replace("_", "-") if name == ENV["sasl_mechanism"] else value.upper()
    if normalised in choices:
        return normalised
    problems.append((name, f"expected one of {', '.join(choices)}, got {value!r}"))
    return None


def _flag(value: str, name: str, problems: list[tuple[str, str]]) -> bool | None:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    problems.append((name, f"expected true or false, got {value!r}"))
    return None


def _secret(env: Mapping[str, str], name: str, problems: list[tuple[str, str]]) -> SecretStr | None:
    """A secret given directly in ``NAME`` or as a file path in ``NAME_FILE`` (a mounted secret)."""
    value = read_secret(env, name, problems)
    return SecretStr(value) if value else None
