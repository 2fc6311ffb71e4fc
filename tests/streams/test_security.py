"""KafkaSecurity: reading KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* / KAFKA_SSL_*, and the options each client gets."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism
from pydantic import ValidationError

from kpi_core.errors import ConfigError
from streams.security import KafkaSecurity

SASL_PASSWORD = "sasl-pw-0x5ecret"
KEY_PASSWORD = "key-pw-0x5ecret"


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path  # PKCS#8, not encrypted: what Kafka's PEM key store reads
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    other_ca: Path  # a CA that signed none of the above


def make_pki(directory: Path) -> Pki:
    """Issue the certificates with the openssl command line (a second or so)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found on PATH")
    d = directory
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN=kpimon test {ca}")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "server.key")
    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes256",
        "-pass", f"pass:{KEY_PASSWORD}", "-out", "client.key")
    for name, subject, passin in (("server", "/CN=localhost", ()), ("client", "/CN=kpimon", ("-passin", f"pass:{KEY_PASSWORD}"))):
        run("req", "-new", "-key", f"{name}.key", *passin, "-out", f"{name}.csr", "-subj", subject)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return Pki(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key", d / "other-ca.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _fill(pki: Pki, value: object) -> object:
    """``value`` with ``{ca}``, ``{client_cert}``, ``{client_key}``, ``{server_key}`` and ``{dir}`` filled in from ``pki``."""
    if not isinstance(value, str):
        return value
    return value.format(ca=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key, server_key=pki.server_key, dir=pki.dir)


def _env(pki: Pki, **values: str) -> dict[str, str]:
    """Environment variables from keyword arguments, paths filled in from ``pki``."""
    return {key: str(_fill(pki, value)) for key, value in values.items()}


def test_nothing_set_is_plaintext_and_clients_are_unchanged() -> None:
    security = KafkaSecurity.from_env({})

    assert security == KafkaSecurity()
    assert security.kafka_python_options() == {"security_protocol": "PLAINTEXT"}
    assert security.aiokafka_options() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None
    assert security.ssl_context() is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # SASL without TLS: the password goes to the broker in the clear (PLAIN), the options say so plainly
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD": SASL_PASSWORD},
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "kpimon",
             "sasl_plain_password": SASL_PASSWORD},
        ),
        # lower case and underscores are accepted for the protocol and the mechanism
        (
            {"KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "KAFKA_SASL_MECHANISM": "scram_sha_512",
             "KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD": SASL_PASSWORD},
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "kpimon",
             "sasl_plain_password": SASL_PASSWORD},
        ),
        # TLS with the system's CAs: nothing but the protocol and the hostname check
        ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, {"security_protocol": "SSL", "ssl_check_hostname": True}),
        # TLS with a private CA, hostname check off (a broker whose certificate names another host)
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{ca}", "KAFKA_SSL_CHECK_HOSTNAME": "false"},
            {"security_protocol": "SSL", "ssl_check_hostname": False, "ssl_cafile": "{ca}"},
        ),
        # mutual TLS with an encrypted client key
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{ca}", "KAFKA_SSL_CERTFILE": "{client_cert}",
             "KAFKA_SSL_KEYFILE": "{client_key}", "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD},
            {"security_protocol": "SSL", "ssl_check_hostname": True, "ssl_cafile": "{ca}", "ssl_certfile": "{client_cert}",
             "ssl_keyfile": "{client_key}", "ssl_password": KEY_PASSWORD},
        ),
        # SASL over TLS, the usual managed-Kafka setup
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_SASL_USERNAME": "kpimon",
             "KAFKA_SASL_PASSWORD": SASL_PASSWORD, "KAFKA_SSL_CAFILE": "{ca}"},
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "kpimon",
             "sasl_plain_password": SASL_PASSWORD, "ssl_check_hostname": True, "ssl_cafile": "{ca}"},
        ),
        # empty variables count as unset, as deployment templates leave them
        ({"KAFKA_SECURITY_PROTOCOL": "", "KAFKA_SSL_CAFILE": " ", "KAFKA_SASL_USERNAME": ""}, {"security_protocol": "PLAINTEXT"}),
    ],
)
def test_kafka_python_options(pki: Pki, env: dict[str, str], expected: dict[str, object]) -> None:
    security = KafkaSecurity.from_env(_env(pki, **env))

    assert security.kafka_python_options() == {key: _fill(pki, value) for key, value in expected.items()}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # SASL_SSL without credentials: both are named, in one error
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            [("KAFKA_SASL_USERNAME", "required when KAFKA_SECURITY_PROTOCOL is SASL_SSL"),
             ("KAFKA_SASL_PASSWORD", "required when KAFKA_SECURITY_PROTOCOL is SASL_SSL")],
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "kpimon"},
            [("KAFKA_SASL_PASSWORD", "required when KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT")],
        ),
        # a typo in the protocol: the follow-up checks, which depend on it, are not guessed at
        (
            {"KAFKA_SECURITY_PROTOCOL": "TLS", "KAFKA_SASL_USERNAME": "kpimon"},
            [("KAFKA_SECURITY_PROTOCOL", "expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'TLS'")],
        ),
        # a mechanism kpimon's clients and brokers don't share
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "kpimon",
             "KAFKA_SASL_PASSWORD": SASL_PASSWORD},
            [("KAFKA_SASL_MECHANISM", "expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, got 'GSSAPI'")],
        ),
        # credentials with the protocol forgotten would silently connect without them
        (
            {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD": SASL_PASSWORD},
            [("KAFKA_SASL_MECHANISM", "only used when KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT"),
             ("KAFKA_SASL_USERNAME", "only used when KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT"),
             ("KAFKA_SASL_PASSWORD", "only used when KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT")],
        ),
        # ... and so would TLS files without a TLS protocol
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
             "KAFKA_SSL_CAFILE": "{ca}"},
            [("KAFKA_SSL_CAFILE", "only used when KAFKA_SECURITY_PROTOCOL is SSL or SASL_SSL, not SASL_PLAINTEXT")],
        ),
        # a CA file that isn't there
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{dir}/missing-ca.pem"},
            [("KAFKA_SSL_CAFILE", "no such file: {dir}/missing-ca.pem")],
        ),
        # a directory is not a CA file
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{dir}"}, [("KAFKA_SSL_CAFILE", "not a readable file: {dir}")]),
        # a file that is there but holds no certificate (a key, say) fails now, not at the first connect
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{server_key}"},
            [("KAFKA_SSL_CAFILE", "not a PEM CA certificate: {server_key} (NO_CERTIFICATE_OR_CRL_FOUND)")],
        ),
        # a key without its certificate
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "{client_key}"},
            [("KAFKA_SSL_KEYFILE", "needs KAFKA_SSL_CERTFILE, the certificate the key belongs to")],
        ),
        # an encrypted key without its password: an error, never a passphrase prompt on the terminal
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "{client_cert}", "KAFKA_SSL_KEYFILE": "{client_key}"},
            [("KAFKA_SSL_KEY_PASSWORD", "required: the key in {client_key} is encrypted")],
        ),
        # a certificate with somebody else's key
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "{client_cert}", "KAFKA_SSL_KEYFILE": "{server_key}"},
            [("KAFKA_SSL_CERTFILE",
              "cannot load the certificate {client_cert} with the key in {server_key} (KEY_VALUES_MISMATCH)")],
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "maybe"},
         [("KAFKA_SSL_CHECK_HOSTNAME", "expected true or false, got 'maybe'")]),
        # a secret given twice, or as a file that can't be read
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
             "KAFKA_SASL_PASSWORD_FILE": "{dir}/password"},
            [("KAFKA_SASL_PASSWORD_FILE", "give either KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")],
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD_FILE": "{dir}/missing"},
            [("KAFKA_SASL_PASSWORD_FILE", "cannot read {dir}/missing: No such file or directory")],
        ),
    ],
)
def test_problems_name_the_variable_to_fix(pki: Pki, env: dict[str, str], expected: list[tuple[str, str]]) -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaSecurity.from_env(_env(pki, **env))

    assert caught.value.problems == [(var, _fill(pki, message)) for var, message in expected]
    assert SASL_PASSWORD not in str(caught.value)


def test_a_wrong_key_password_is_named_and_not_repeated(pki: Pki) -> None:
    env = _env(pki, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTFILE="{client_cert}", KAFKA_SSL_KEYFILE="{client_key}",
               KAFKA_SSL_KEY_PASSWORD="not-the-password")

    with pytest.raises(ConfigError) as caught:
        KafkaSecurity.from_env(env)

    [(var, message)] = caught.value.problems
    assert var == "KAFKA_SSL_KEY_PASSWORD"
    assert message.startswith(f"does not decrypt the key in {pki.client_key}")
    assert "not-the-password" not in message


def test_secrets_are_read_from_files(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "sasl").write_text(SASL_PASSWORD + "\n")
    (tmp_path / "key").write_text(KEY_PASSWORD + "\n")

    security = KafkaSecurity.from_env(_env(
        pki, KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_USERNAME="kpimon", KAFKA_SASL_PASSWORD_FILE=str(tmp_path / "sasl"),
        KAFKA_SSL_CERTFILE="{client_cert}", KAFKA_SSL_KEYFILE="{client_key}", KAFKA_SSL_KEY_PASSWORD_FILE=str(tmp_path / "key"),
    ))

    options = security.kafka_python_options()
    assert (options["sasl_plain_password"], options["ssl_password"]) == (SASL_PASSWORD, KEY_PASSWORD)


def test_secrets_stay_out_of_repr_str_and_descriptions(pki: Pki) -> None:
    security = KafkaSecurity.from_env(_env(
        pki, KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_USERNAME="kpimon", KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        KAFKA_SSL_CAFILE="{ca}", KAFKA_SSL_CERTFILE="{client_cert}", KAFKA_SSL_KEYFILE="{client_key}",
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    ))

    shown = [repr(security), str(security), security.describe(), repr(security.faust_credentials())]
    for text in shown:
        assert SASL_PASSWORD not in text and KEY_PASSWORD not in text, text
    assert security.describe() == "SASL_SSL (PLAIN as kpimon, client certificate)"


def test_built_directly_it_is_checked_the_same_way() -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaSecurity(protocol="SASL_SSL", sasl_username="kpimon")

    assert caught.value.problems == [("KAFKA_SASL_PASSWORD", "required when KAFKA_SECURITY_PROTOCOL is SASL_SSL")]


def test_it_is_frozen() -> None:
    with pytest.raises(ValidationError):
        KafkaSecurity().protocol = "SSL"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("protocol", "check_hostname", "client_cert"),
    [
        ("SSL", True, False),  # server authentication only
        ("SSL", False, True),  # mutual TLS, hostname not checked
        ("SASL_SSL", True, False),  # SASL over TLS
    ],
)
def test_aiokafka_gets_a_context_that_verifies_the_broker(pki: Pki, protocol: str, check_hostname: bool, client_cert: bool) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SSL_CAFILE": "{ca}", "KAFKA_SSL_CHECK_HOSTNAME": str(check_hostname)}
    if client_cert:
        env |= {"KAFKA_SSL_CERTFILE": "{client_cert}", "KAFKA_SSL_KEYFILE": "{client_key}", "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}
    if protocol.startswith("SASL_"):
        env |= {"KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD": SASL_PASSWORD}

    options = KafkaSecurity.from_env(_env(pki, **env)).aiokafka_options()

    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, check_hostname)
    sasl = {"sasl_mechanism": "PLAIN", "sasl_plain_username": "kpimon", "sasl_plain_password": SASL_PASSWORD}
    assert options == {"security_protocol": protocol, **(sasl if protocol == "SASL_SSL" else {})}


def test_aiokafka_sasl_plaintext_has_no_context() -> None:
    security = KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="kpimon",
                             sasl_password=SASL_PASSWORD)  # type: ignore[arg-type]

    assert security.aiokafka_options() == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "kpimon",
        "sasl_plain_password": SASL_PASSWORD,
    }


@pytest.mark.parametrize(
    ("env", "kind", "protocol"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{ca}"}, SSLCredentials, AuthProtocol.SSL),
        # Faust chooses SASL_SSL over SASL_PLAINTEXT by whether the credentials carry an SSL context
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SSL_CAFILE": "{ca}", "KAFKA_SASL_USERNAME": "kpimon",
          "KAFKA_SASL_PASSWORD": SASL_PASSWORD, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}, SASLCredentials, AuthProtocol.SASL_SSL),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "kpimon", "KAFKA_SASL_PASSWORD": SASL_PASSWORD},
         SASLCredentials, AuthProtocol.SASL_PLAINTEXT),
    ],
)
def test_faust_credentials_give_faust_the_same_client_settings(pki: Pki, env: dict[str, str], kind: type, protocol: AuthProtocol) -> None:
    security = KafkaSecurity.from_env(_env(pki, **env))

    credentials = security.faust_credentials()

    assert isinstance(credentials, kind) and credentials.protocol == protocol
    if isinstance(credentials, SASLCredentials):
        assert credentials.mechanism == SASLMechanism(security.sasl_mechanism)
    # What Faust hands aiokafka for its consumer and producer matches what our own aiokafka clients get.
    faust_options = dict(credentials_to_aiokafka_auth(credentials))
    ours = security.aiokafka_options()
    for options in (faust_options, ours):
        context = options.pop("ssl_context", None)
        assert (context is not None) == security.uses_ssl
    assert faust_options == ours
