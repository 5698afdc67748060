"""The exporter config: loading, defaults, ${VAR} substitution, validation and its error messages.

Every invalid case asserts the exact key path the error names and the gist of its problem, and
that the error is rendered as "file: key: problem". Certificates are real ones made by trustme.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from cryptography.hazmat.primitives import serialization

from exporter.cli import main
from exporter.config import (
    DiscoveryConfig,
    ExporterConfig,
    GdapDiscovery,
    TenantConfig,
    ThresholdSettings,
    load_config,
    parse_config,
)
from exporter.yaml_config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO_ROOT / "config.example.yaml"

CLIENT_ID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
OTHER_CLIENT_ID = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
TENANT_IDS = (
    "11111111-2222-4333-8444-555555555555",
    "22222222-3333-4444-8555-666666666666",
    "33333333-4444-4555-8666-777777777777",
    "44444444-5555-4666-8777-888888888888",
)
# Distinctive, so that a leak cannot hide behind a coincidence.
SECRET = "s3cr3t-VALUE-xyz"
ENV_SECRET = "s3cr3t-FROM-ENV-qrs"
FILE_SECRET = "s3cr3t-IN-FILE-uvw"
CERT_PASSWORD = "s3cr3t-PASSWORD-klm"

CREDENTIALS = {"client_secret", "client_secret_file", "client_certificate_file"}
CREDENTIALS |= {"federated_token_file"}


# --------------------------------------------------------------------------------------------
# helpers


def tenant(name: str = "contoso", index: int = 0, **keys: Any) -> dict[str, Any]:
    """A tenant entry; a client secret unless another credential is given; None drops a key."""
    entry: dict[str, Any] = {"name": name, "tenant_id": TENANT_IDS[index], "client_id": CLIENT_ID}
    if not CREDENTIALS & keys.keys():
        entry["client_secret"] = "example-client-secret"
    entry.update(keys)
    return {key: value for key, value in entry.items() if value is not None}


def write(tmp_path: Path, doc: dict[str, Any] | list[Any] | str, name: str = "config.yaml") -> Path:
    """Write a config document (a dict is dumped as YAML, a str is written as is)."""
    path = tmp_path / name
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, doc: dict[str, Any] | str) -> ExporterConfig:
    return load_config(write(tmp_path, doc))


def error_of(tmp_path: Path, doc: dict[str, Any] | list[Any] | str) -> ConfigError:
    """The ConfigError that loading `doc` raises, checked for its "file: key: problem" form."""
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    assert err.file == str(path)
    expected = f"{path}: {err.key}: {err.problem}" if err.key else f"{path}: {err.problem}"
    assert str(err) == expected
    return err


def one(**keys: Any) -> dict[str, Any]:
    """A config with one tenant built from `keys`."""
    return {"tenants": [tenant(**keys)]}


def assert_secret_absent(err: ConfigError, *secrets: str) -> None:
    for secret in secrets:
        for text in (str(err), repr(err), err.problem, err.key, *map(str, err.args)):
            assert secret not in text


# --------------------------------------------------------------------------------------------
# certificates


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    # Entra ID takes RSA certificates only, and the exporter checks for that.
    return trustme.CA(key_type=trustme.KeyType.RSA)


def leaf(ca: trustme.CA, name: str = "exporter.contoso.test") -> trustme.LeafCert:
    return ca.issue_cert(name, key_type=trustme.KeyType.RSA)


def _key_pem(cert: trustme.LeafCert) -> bytes:
    return cert.private_key_pem.bytes()


def _chain_pem(cert: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in cert.cert_chain_pems)


def _encrypted_key_pem(cert: trustme.LeafCert, password: str) -> bytes:
    key = serialization.load_pem_private_key(_key_pem(cert), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )


@pytest.fixture
def cert_file(tmp_path: Path, ca: trustme.CA) -> Path:
    """A PEM holding a private key and its certificate chain."""
    cert = leaf(ca, "exporter.contoso.test")
    path = tmp_path / "client.pem"
    path.write_bytes(_key_pem(cert) + _chain_pem(cert))
    return path


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client-secret"
    path.write_text(FILE_SECRET + "\n", encoding="utf-8")
    return path


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`main()` replaces the root handlers; put them back so later tests log normally."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("msal", "urllib3", "aiohttp.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in noisy.items():
        logging.getLogger(name).setLevel(old)


# --------------------------------------------------------------------------------------------
# a valid config and its defaults


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    config = load(tmp_path, one())
    assert config.poll_interval == 600.0
    assert config.request_timeout == 30.0
    assert config.max_concurrency == 16
    assert config.collect == ("ade", "ade_devices", "vpp", "apns")
    (only,) = config.tenants
    assert only.name == "contoso"
    assert only.tenant_id == TENANT_IDS[0]
    assert only.client_id == CLIENT_ID
    assert only.cloud == "global"
    assert only.authority_url == "https://login.microsoftonline.com"
    assert only.graph_url == "https://graph.microsoft.com"
    assert only.ca_file is None
    assert only.collect is None
    assert config.collectors_for(only) == ("ade", "ade_devices", "vpp", "apns")
    # Device lists are long and change slowly: read hourly unless configured.
    assert config.intervals_for(only) == {
        "ade": 600.0,
        "ade_devices": 3600.0,
        "vpp": 600.0,
        "apns": 600.0,
    }
    assert only.credential_kind == "client_secret"
    assert only.client_secret is not None
    assert only.client_secret.get_secret_value() == "example-client-secret"


def test_minimal_config_written_by_hand(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""\
tenants:
  - name: contoso
    tenant_id: {TENANT_IDS[0]}
    client_id: {CLIENT_ID}
    client_secret: example
""",
    )
    assert [t.name for t in config.tenants] == ["contoso"]


def test_parse_config_validates_an_already_parsed_document() -> None:
    config = parse_config(one(), "inline.yaml")
    assert config.tenants[0].name == "contoso"
    with pytest.raises(ConfigError) as caught:
        parse_config(one(client_id="nope"), "inline.yaml")
    assert caught.value.file == "inline.yaml"
    assert caught.value.key == "tenants[contoso].client_id"


def test_guids_are_normalised_to_lower_case(tmp_path: Path) -> None:
    config = load(tmp_path, one(tenant_id=TENANT_IDS[1].upper(), client_id=CLIENT_ID.upper()))
    assert config.tenants[0].tenant_id == TENANT_IDS[1]
    assert config.tenants[0].client_id == CLIENT_ID


@pytest.mark.parametrize(
    ("cloud", "authority", "graph"),
    [
        ("global", "https://login.microsoftonline.com", "https://graph.microsoft.com"),
        ("usgov", "https://login.microsoftonline.us", "https://graph.microsoft.us"),
        ("usgov-dod", "https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
        (
            "china",
            "https://login.partner.microsoftonline.cn",
            "https://microsoftgraph.chinacloudapi.cn",
        ),
    ],
)
def test_each_cloud_has_its_hosts(tmp_path: Path, cloud: str, authority: str, graph: str) -> None:
    (only,) = load(tmp_path, one(cloud=cloud)).tenants
    assert only.cloud == cloud
    assert only.authority_url == authority
    assert only.graph_url == graph


def test_unknown_cloud_is_an_error(tmp_path: Path) -> None:
    err = error_of(tmp_path, one(cloud="germany"))
    assert err.key == "tenants[contoso].cloud"
    for name in ("global", "usgov", "usgov-dod", "china"):
        assert repr(name) in err.problem


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("2.5s", 2.5),
        (120, 120.0),
        (2.5, 2.5),
    ],
)
def test_durations(tmp_path: Path, text: str | float, seconds: float) -> None:
    config = load(tmp_path, {"poll_interval": text, "request_timeout": text, **one()})
    assert config.poll_interval == seconds
    assert config.request_timeout == seconds


@pytest.mark.parametrize(
    ("value", "gist"),
    [
        ("10 minutes", "is not a duration"),
        ("1.5m", "is not a duration"),
        ("10x", "is not a duration"),
        ("", "is not a duration"),
        ("-5", "is not a duration"),
        ("0s", "must be longer than zero"),
        (0, "must be longer than zero"),
        (-5, "must be longer than zero"),
        (True, "is not a duration"),
        ([10], "is not a duration"),
    ],
)
@pytest.mark.parametrize("key", ["poll_interval", "request_timeout"])
def test_bad_durations(tmp_path: Path, key: str, value: object, gist: str) -> None:
    err = error_of(tmp_path, {key: value, **one()})
    assert err.key == key
    assert gist in err.problem


def test_bad_duration_message_shows_how_to_write_one(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"poll_interval": "10 minutes", **one()})
    assert err.problem.startswith("'10 minutes' is not a duration")
    assert "10m" in err.problem


@pytest.mark.parametrize("value", [".nan", ".inf"])
@pytest.mark.parametrize("key", ["poll_interval", "request_timeout"])
def test_non_finite_durations_are_rejected(tmp_path: Path, key: str, value: str) -> None:
    err = error_of(tmp_path, f"{key}: {value}\n" + yaml.safe_dump(one()))
    assert err.key == key


def test_duration_from_an_environment_variable_may_be_a_plain_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLL_SECONDS", "120")
    config = load(tmp_path, {"poll_interval": "${POLL_SECONDS}", **one()})
    assert config.poll_interval == 120.0


def test_max_concurrency(tmp_path: Path) -> None:
    assert load(tmp_path, {"max_concurrency": 4, **one()}).max_concurrency == 4
    err = error_of(tmp_path, {"max_concurrency": 0, **one()})
    assert err.key == "max_concurrency"
    assert "greater than or equal to 1" in err.problem
    err = error_of(tmp_path, {"max_concurrency": "many", **one()})
    assert err.key == "max_concurrency"
    assert "valid integer" in err.problem


def test_max_concurrency_rejects_a_boolean(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"max_concurrency": True, **one()})
    assert err.key == "max_concurrency"


# --------------------------------------------------------------------------------------------
# defaults


def test_msp_defaults_are_inherited_by_every_tenant(tmp_path: Path) -> None:
    doc = {
        "defaults": {"client_id": CLIENT_ID, "client_secret": SECRET, "cloud": "usgov"},
        "tenants": [
            {"name": f"customer-{i}", "tenant_id": TENANT_IDS[i]} for i in range(len(TENANT_IDS))
        ],
    }
    config = load(tmp_path, doc)
    assert len(config.tenants) == len(TENANT_IDS)
    for index, entry in enumerate(config.tenants):
        assert entry.tenant_id == TENANT_IDS[index]
        assert entry.client_id == CLIENT_ID
        assert entry.cloud == "usgov"
        assert entry.credential_kind == "client_secret"
        assert entry.client_secret is not None
        assert entry.client_secret.get_secret_value() == SECRET


def test_a_tenant_value_overrides_the_default(tmp_path: Path) -> None:
    doc = {
        "defaults": {"client_id": CLIENT_ID, "client_secret": SECRET, "cloud": "usgov"},
        "tenants": [
            {"name": "a", "tenant_id": TENANT_IDS[0]},
            {"name": "b", "tenant_id": TENANT_IDS[1], "client_id": OTHER_CLIENT_ID},
            {"name": "c", "tenant_id": TENANT_IDS[2], "cloud": "global"},
        ],
    }
    a, b, c = load(tmp_path, doc).tenants
    assert (a.client_id, a.cloud) == (CLIENT_ID, "usgov")
    assert (b.client_id, b.cloud) == (OTHER_CLIENT_ID, "usgov")
    assert (c.client_id, c.cloud) == (CLIENT_ID, "global")
    assert c.authority_url == "https://login.microsoftonline.com"


def test_own_certificate_does_not_also_inherit_the_default_secret(
    tmp_path: Path, cert_file: Path
) -> None:
    doc = {
        "defaults": {"client_id": CLIENT_ID, "client_secret": SECRET},
        "tenants": [
            {"name": "a", "tenant_id": TENANT_IDS[0]},
            {"name": "b", "tenant_id": TENANT_IDS[1], "client_certificate_file": str(cert_file)},
        ],
    }
    a, b = load(tmp_path, doc).tenants
    assert a.credential_kind == "client_secret"
    assert b.credential_kind == "client_certificate_file"
    assert b.client_secret is None
    assert b.client_certificate_file == cert_file
    assert b.client_id == CLIENT_ID  # the rest of the defaults still applies


@pytest.mark.parametrize("own", ["client_secret_file", "federated_token_file", "client_secret"])
def test_own_credential_of_any_kind_replaces_the_default_one(
    tmp_path: Path, secret_file: Path, own: str
) -> None:
    value = "own-secret" if own == "client_secret" else str(secret_file)
    doc = {
        "defaults": {"client_id": CLIENT_ID, "client_secret_file": str(secret_file)},
        "tenants": [{"name": "a", "tenant_id": TENANT_IDS[0], own: value}],
    }
    (only,) = load(tmp_path, doc).tenants
    assert only.credential_kind == own
    if own != "client_secret_file":
        assert only.client_secret_file is None


def test_own_secret_does_not_inherit_the_default_certificate_password(
    tmp_path: Path, ca: trustme.CA
) -> None:
    cert = leaf(ca, "msp.contoso.test")
    pem = tmp_path / "msp.pem"
    pem.write_bytes(_encrypted_key_pem(cert, CERT_PASSWORD) + _chain_pem(cert))
    doc = {
        "defaults": {
            "client_id": CLIENT_ID,
            "client_certificate_file": str(pem),
            "client_certificate_password": CERT_PASSWORD,
        },
        "tenants": [
            {"name": "a", "tenant_id": TENANT_IDS[0]},
            {"name": "b", "tenant_id": TENANT_IDS[1], "client_secret": "own"},
        ],
    }
    a, b = load(tmp_path, doc).tenants
    assert a.credential_kind == "client_certificate_file"
    assert a.client_certificate_password is not None
    assert a.client_certificate_password.get_secret_value() == CERT_PASSWORD
    assert b.credential_kind == "client_secret"
    assert b.client_certificate_file is None
    assert b.client_certificate_password is None


def test_error_in_an_inherited_key_names_defaults_and_the_tenant(tmp_path: Path) -> None:
    doc = {
        "defaults": {"client_id": "not-a-guid", "client_secret": "x"},
        "tenants": [
            {"name": "a", "tenant_id": TENANT_IDS[0], "client_id": CLIENT_ID},
            {"name": "b", "tenant_id": TENANT_IDS[1]},
        ],
    }
    err = error_of(tmp_path, doc)
    assert err.key == "defaults.client_id (inherited by tenants[b])"
    assert "is not a GUID" in err.problem


def test_inherited_missing_secret_file_names_defaults(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    doc = {
        "defaults": {"client_id": CLIENT_ID, "client_secret_file": str(missing)},
        "tenants": [{"name": "a", "tenant_id": TENANT_IDS[0]}],
    }
    err = error_of(tmp_path, doc)
    assert err.key == "defaults.client_secret_file (inherited by tenants[a])"
    assert "does not exist" in err.problem
    assert str(missing) in err.problem


def test_inherited_bad_ca_file_names_defaults(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello\n", encoding="utf-8")
    doc = {
        "defaults": {"ca_file": str(not_pem)},
        "tenants": [tenant("a", 0), tenant("b", 1)],
    }
    err = error_of(tmp_path, doc)
    assert err.key == "defaults.ca_file (inherited by tenants[a], tenants[b])"
    assert len(err.problems) == 1
    assert "holds no PEM CA certificate" in err.problem


def test_inherited_http_endpoint_names_defaults(tmp_path: Path) -> None:
    doc = {"defaults": {"graph_endpoint": "http://graph.contoso.test"}, "tenants": [tenant()]}
    err = error_of(tmp_path, doc)
    assert err.key == "defaults.graph_endpoint (inherited by tenants[contoso])"
    assert "must use https" in err.problem


def test_a_tenant_own_bad_value_is_not_blamed_on_defaults(tmp_path: Path) -> None:
    doc = {"defaults": {"client_id": CLIENT_ID}, "tenants": [tenant(client_id="nope")]}
    err = error_of(tmp_path, doc)
    assert err.key == "tenants[contoso].client_id"


def test_two_credentials_in_defaults_are_blamed_on_defaults(
    tmp_path: Path, secret_file: Path
) -> None:
    doc = {
        "defaults": {
            "client_id": CLIENT_ID,
            "client_secret": "x",
            "client_secret_file": str(secret_file),
        },
        "tenants": [{"name": "a", "tenant_id": TENANT_IDS[0]}],
    }
    err = error_of(tmp_path, doc)
    assert "two credentials" in err.problem
    assert err.key.startswith("defaults")


@pytest.mark.parametrize(
    ("key", "gist"),
    [
        ("name", "cannot be a default"),
        ("tenant_id", "cannot be a default"),
        (
            "color",
            "unknown key (valid keys: authority_host, ca_file, client_certificate_file, "
            "client_certificate_password, client_id, client_secret, client_secret_file, cloud, "
            "collect, collector_intervals, federated_token_file, graph_endpoint, thresholds)",
        ),
    ],
)
def test_forbidden_or_unknown_keys_in_defaults(tmp_path: Path, key: str, gist: str) -> None:
    err = error_of(tmp_path, {"defaults": {key: TENANT_IDS[0]}, "tenants": [tenant()]})
    assert err.key == f"defaults.{key}"
    assert err.problem == gist


def test_defaults_must_be_a_mapping(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"defaults": ["client_id"], "tenants": [tenant()]})
    assert err.key == "defaults"
    assert "mapping" in err.problem


def test_empty_defaults_is_allowed(tmp_path: Path) -> None:
    config = load(tmp_path, "defaults:\n" + yaml.safe_dump(one()))
    assert config.tenants[0].client_id == CLIENT_ID


# --------------------------------------------------------------------------------------------
# ${VAR} substitution


def test_env_substitution_in_tenant_defaults_lists_and_top_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSP_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("MSP_SECRET", ENV_SECRET)
    monkeypatch.setenv("CONTOSO_TENANT", TENANT_IDS[0])
    monkeypatch.setenv("REGION", "emea")
    monkeypatch.setenv("FIRST_COLLECTOR", "vpp")
    monkeypatch.setenv("POLL", "5m")
    text = """\
poll_interval: ${POLL}
collect: ["${FIRST_COLLECTOR}", apns]
defaults:
  client_id: ${MSP_CLIENT_ID}
  client_secret: ${MSP_SECRET}
tenants:
  - name: contoso-${REGION}
    tenant_id: ${CONTOSO_TENANT}
  - name: ${REGION}-${REGION}
    tenant_id: SECOND_TENANT_ID
    collect: ["${FIRST_COLLECTOR}"]
""".replace("SECOND_TENANT_ID", TENANT_IDS[1])
    config = load(tmp_path, text)
    assert config.poll_interval == 300.0
    assert config.collect == ("vpp", "apns")
    first, second = config.tenants
    assert first.name == "contoso-emea"
    assert first.tenant_id == TENANT_IDS[0]
    assert first.client_id == CLIENT_ID
    assert first.client_secret is not None
    assert first.client_secret.get_secret_value() == ENV_SECRET
    assert second.name == "emea-emea"
    assert second.collect == ("vpp",)


def test_substituted_values_are_not_expanded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODD_SECRET", "a${NOT_SET_ANYWHERE}b")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = load(tmp_path, one(client_secret="${ODD_SECRET}"))
    assert config.tenants[0].client_secret is not None
    assert config.tenants[0].client_secret.get_secret_value() == "a${NOT_SET_ANYWHERE}b"


def test_text_without_braces_is_left_alone(tmp_path: Path) -> None:
    config = load(tmp_path, one(client_secret="$HOME-and-$-signs"))
    assert config.tenants[0].client_secret is not None
    assert config.tenants[0].client_secret.get_secret_value() == "$HOME-and-$-signs"


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        (
            {"tenants": [tenant("a", 0), tenant("b", 1, client_secret="${UNSET_VAR}")]},
            "tenants[b].client_secret",
        ),
        (
            {
                "defaults": {"client_secret": "pre-${UNSET_VAR}"},
                "tenants": [tenant(client_secret=None)],
            },
            "defaults.client_secret",
        ),
        ({"collect": ["ade", "${UNSET_VAR}"], **one()}, "collect[1]"),
        ({"poll_interval": "${UNSET_VAR}", **one()}, "poll_interval"),
    ],
)
def test_unset_variable_names_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any], key: str
) -> None:
    monkeypatch.delenv("UNSET_VAR", raising=False)
    err = error_of(tmp_path, doc)
    assert err.key == key
    assert err.problem == "environment variable UNSET_VAR is not set"


def test_variable_set_to_empty_secret_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMPTY_SECRET", "")
    err = error_of(tmp_path, one(client_secret="${EMPTY_SECRET}"))
    assert err.key == "tenants[contoso].client_secret"
    assert err.problem == "is empty"


# --------------------------------------------------------------------------------------------
# structure: unknown keys, names, GUIDs, credentials


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"poll_intervall": "10m", **one()})
    assert err.key == "poll_intervall"
    assert err.problem.startswith("unknown key (valid keys: poll_interval, request_timeout,")


def test_unknown_tenant_key(tmp_path: Path) -> None:
    doc = {"tenants": [tenant("a", 0), tenant("b", 1, client_secrett=SECRET)]}
    err = error_of(tmp_path, doc)
    assert err.key == "tenants[b].client_secrett"
    assert err.problem.startswith("unknown key (valid keys: client_id, client_secret,")
    assert ", name, tenant_id)" in err.problem  # not the internal `source`
    assert_secret_absent(err, SECRET)


def test_duplicate_tenant_names(tmp_path: Path) -> None:
    doc = {"tenants": [tenant("a", 0), tenant("b", 1), tenant("a", 2)]}
    err = error_of(tmp_path, doc)
    # Positions: the name is the thing in question.
    assert err.key == "tenants[2].name"
    assert err.problem == "duplicate tenant name 'a' (also tenants[0])"


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-guid",
        "{6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b}",
        "6f1c2a3b4d5e4f608a7b9c0d1e2f3a4b",
        "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4",
        "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4g",
        " 6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
    ],
)
@pytest.mark.parametrize("key", ["tenant_id", "client_id"])
def test_malformed_guid_names_the_third_tenant(tmp_path: Path, key: str, bad: str) -> None:
    doc = {"tenants": [tenant("a", 0), tenant("b", 1), tenant("c", 2, **{key: bad})]}
    err = error_of(tmp_path, doc)
    assert err.key == f"tenants[c].{key}"
    assert "is not a GUID" in err.problem


def test_guid_that_is_a_number_is_an_error(tmp_path: Path) -> None:
    err = error_of(tmp_path, one(client_id=12345))
    assert err.key == "tenants[contoso].client_id"
    assert "valid string" in err.problem


@pytest.mark.parametrize("key", ["name", "tenant_id", "client_id"])
def test_required_tenant_keys(tmp_path: Path, key: str) -> None:
    second = tenant("b", 1)
    del second[key]
    err = error_of(tmp_path, {"tenants": [tenant("a", 0), second]})
    # Named where it can be: a missing name leaves only the position.
    assert err.key == f"tenants[{'1' if key == 'name' else 'b'}].{key}"
    assert err.problem == "is required"


@pytest.mark.parametrize("bad", ["", " padded", "tab\there"])
def test_tenant_name_must_be_a_clean_label(tmp_path: Path, bad: str) -> None:
    err = error_of(tmp_path, one(name=bad))
    assert err.key == "tenants[0].name"


def test_two_credentials(tmp_path: Path, cert_file: Path) -> None:
    err = error_of(tmp_path, one(client_secret=SECRET, client_certificate_file=str(cert_file)))
    assert err.key == "tenants[contoso]"
    assert err.problem.startswith(
        "two credentials given (client_secret and client_certificate_file)"
    )
    assert_secret_absent(err, SECRET)


def test_two_file_credentials(tmp_path: Path, secret_file: Path) -> None:
    doc = one(client_secret_file=str(secret_file), federated_token_file=str(secret_file))
    err = error_of(tmp_path, doc)
    assert err.key == "tenants[contoso]"
    assert "two credentials given (client_secret_file and federated_token_file)" in err.problem


def test_no_credential(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"tenants": [tenant("a", 0), tenant("b", 1, client_secret=None)]})
    assert err.key == "tenants[b]"
    assert err.problem.startswith("no credential")
    for key in sorted(CREDENTIALS):
        assert key in err.problem


def test_certificate_password_without_certificate(tmp_path: Path) -> None:
    err = error_of(tmp_path, one(client_certificate_password=CERT_PASSWORD))
    assert err.key == "tenants[contoso]"
    assert "client_certificate_password is set without client_certificate_file" in err.problem
    assert_secret_absent(err, CERT_PASSWORD)


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_client_secret(tmp_path: Path, blank: str) -> None:
    err = error_of(tmp_path, one(client_secret=blank))
    assert err.key == "tenants[contoso].client_secret"
    assert err.problem == "is empty"


def test_tenant_entry_must_be_a_mapping(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"tenants": [tenant(), "fabrikam"]})
    assert err.key == "tenants[1]"
    assert "mapping" in err.problem


# --------------------------------------------------------------------------------------------
# credential and CA files


@pytest.mark.parametrize("key", ["client_secret_file", "federated_token_file"])
def test_secret_and_token_files_are_read(tmp_path: Path, secret_file: Path, key: str) -> None:
    (only,) = load(tmp_path, one(**{key: str(secret_file)})).tenants
    assert only.credential_kind == key
    assert getattr(only, key) == secret_file


@pytest.mark.parametrize("key", ["client_secret_file", "federated_token_file"])
def test_missing_secret_or_token_file(tmp_path: Path, key: str) -> None:
    missing = tmp_path / "nowhere" / "secret"
    err = error_of(tmp_path, {"tenants": [tenant("a", 0), tenant("b", 1, **{key: str(missing)})]})
    assert err.key == f"tenants[b].{key}"
    assert f"{str(missing)!r} does not exist" in err.problem


@pytest.mark.parametrize("key", ["client_secret_file", "federated_token_file"])
def test_secret_or_token_file_that_is_a_directory(tmp_path: Path, key: str) -> None:
    err = error_of(tmp_path, one(**{key: str(tmp_path)}))
    assert err.key == f"tenants[contoso].{key}"
    assert "is a directory" in err.problem


@pytest.mark.parametrize("key", ["client_secret_file", "federated_token_file"])
@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_secret_or_token_file(tmp_path: Path, key: str, content: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text(content, encoding="utf-8")
    err = error_of(tmp_path, one(**{key: str(empty)}))
    assert err.key == f"tenants[contoso].{key}"
    assert err.problem.endswith(f"{str(empty)!r} is empty")


@pytest.mark.parametrize("key", ["client_secret_file", "federated_token_file"])
def test_binary_secret_file(tmp_path: Path, key: str) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00secret")
    err = error_of(tmp_path, one(**{key: str(binary)}))
    assert err.key == f"tenants[contoso].{key}"
    assert "is not UTF-8 text" in err.problem


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode"
)
@pytest.mark.parametrize("key", ["client_secret_file", "federated_token_file", "ca_file"])
def test_unreadable_file(tmp_path: Path, secret_file: Path, key: str) -> None:
    secret_file.chmod(0)
    doc = one(**{key: str(secret_file)}) if key != "ca_file" else one(ca_file=str(secret_file))
    err = error_of(tmp_path, doc)
    assert err.key == f"tenants[contoso].{key}"
    assert "ermission denied" in err.problem


def test_certificate_with_key_then_chain(tmp_path: Path, cert_file: Path) -> None:
    (only,) = load(tmp_path, one(client_certificate_file=str(cert_file))).tenants
    assert only.credential_kind == "client_certificate_file"
    assert only.client_certificate_file == cert_file


def test_certificate_with_chain_then_key(tmp_path: Path, ca: trustme.CA) -> None:
    cert = leaf(ca, "exporter.contoso.test")
    pem = tmp_path / "chain-first.pem"
    pem.write_bytes(_chain_pem(cert) + _key_pem(cert))
    (only,) = load(tmp_path, one(client_certificate_file=str(pem))).tenants
    assert only.credential_kind == "client_certificate_file"


def test_ec_certificate_is_rejected(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("ec.contoso.test", key_type=trustme.KeyType.ECDSA)
    pem = tmp_path / "ec.pem"
    pem.write_bytes(_key_pem(cert) + _chain_pem(cert))
    err = error_of(tmp_path, one(client_certificate_file=str(pem)))
    assert err.key == "tenants[contoso].client_certificate_file"
    assert "is not RSA" in err.problem


def test_missing_certificate_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pem"
    err = error_of(tmp_path, one(client_certificate_file=str(missing)))
    assert err.key == "tenants[contoso].client_certificate_file"
    assert f"{str(missing)!r} does not exist" in err.problem


def test_certificate_file_without_a_key(tmp_path: Path, ca: trustme.CA) -> None:
    pem = tmp_path / "cert-only.pem"
    pem.write_bytes(_chain_pem(leaf(ca, "exporter.contoso.test")))
    err = error_of(tmp_path, one(client_certificate_file=str(pem)))
    assert err.key == "tenants[contoso].client_certificate_file"
    assert "holds no readable PEM private key" in err.problem


def test_certificate_file_without_a_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    pem = tmp_path / "key-only.pem"
    pem.write_bytes(_key_pem(leaf(ca, "exporter.contoso.test")))
    err = error_of(tmp_path, one(client_certificate_file=str(pem)))
    assert err.key == "tenants[contoso].client_certificate_file"
    assert "holds no PEM certificate" in err.problem


def test_key_that_does_not_match_the_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    mine, other = leaf(ca, "a.contoso.test"), leaf(ca, "b.contoso.test")
    pem = tmp_path / "mismatch.pem"
    pem.write_bytes(_key_pem(mine) + _chain_pem(other))
    err = error_of(tmp_path, one(client_certificate_file=str(pem)))
    assert err.key == "tenants[contoso].client_certificate_file"
    assert "does not match its private key" in err.problem


@pytest.fixture
def encrypted_cert_file(tmp_path: Path, ca: trustme.CA) -> Path:
    cert = leaf(ca, "exporter.contoso.test")
    pem = tmp_path / "encrypted.pem"
    pem.write_bytes(_encrypted_key_pem(cert, CERT_PASSWORD) + _chain_pem(cert))
    return pem


def test_encrypted_key_with_the_right_password(tmp_path: Path, encrypted_cert_file: Path) -> None:
    doc = one(
        client_certificate_file=str(encrypted_cert_file),
        client_certificate_password=CERT_PASSWORD,
    )
    (only,) = load(tmp_path, doc).tenants
    assert only.client_certificate_password is not None
    assert only.client_certificate_password.get_secret_value() == CERT_PASSWORD


def test_encrypted_key_without_a_password(tmp_path: Path, encrypted_cert_file: Path) -> None:
    err = error_of(tmp_path, one(client_certificate_file=str(encrypted_cert_file)))
    assert err.key == "tenants[contoso].client_certificate_file"
    assert "is encrypted; set client_certificate_password" in err.problem


def test_encrypted_key_with_a_wrong_password(tmp_path: Path, encrypted_cert_file: Path) -> None:
    wrong = "s3cr3t-WRONG-password"
    doc = one(client_certificate_file=str(encrypted_cert_file), client_certificate_password=wrong)
    err = error_of(tmp_path, doc)
    assert err.key == "tenants[contoso].client_certificate_file"
    assert "wrong client_certificate_password" in err.problem
    assert_secret_absent(err, wrong, CERT_PASSWORD)


def test_password_for_a_key_that_is_not_encrypted(tmp_path: Path, cert_file: Path) -> None:
    doc = one(client_certificate_file=str(cert_file), client_certificate_password=CERT_PASSWORD)
    err = error_of(tmp_path, doc)
    assert err.key == "tenants[contoso].client_certificate_file"
    assert "is not encrypted" in err.problem
    assert_secret_absent(err, CERT_PASSWORD)


def test_ca_file_is_accepted(tmp_path: Path, ca_file: Path) -> None:
    (only,) = load(tmp_path, one(ca_file=str(ca_file))).tenants
    assert only.ca_file == ca_file


@pytest.mark.parametrize(
    "content",
    [b"this is not a certificate\n", b"", b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00"],
    ids=["text", "empty", "der-bytes"],
)
def test_ca_file_that_is_not_pem(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_bytes(content)
    err = error_of(tmp_path, {"tenants": [tenant("a", 0), tenant("b", 1, ca_file=str(bad))]})
    assert err.key == "tenants[b].ca_file"
    assert err.problem == f"{str(bad)!r} holds no PEM CA certificate"


def test_ca_file_with_only_a_private_key(tmp_path: Path, ca: trustme.CA) -> None:
    bad = tmp_path / "key.pem"
    bad.write_bytes(_key_pem(leaf(ca, "x")))
    err = error_of(tmp_path, one(ca_file=str(bad)))
    assert err.key == "tenants[contoso].ca_file"
    assert "holds no PEM CA certificate" in err.problem


def test_missing_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    err = error_of(tmp_path, one(ca_file=str(missing)))
    assert err.key == "tenants[contoso].ca_file"
    assert err.problem == f"{str(missing)!r} cannot be loaded: No such file or directory"


# --------------------------------------------------------------------------------------------
# endpoints


@pytest.mark.parametrize("key", ["graph_endpoint", "authority_host"])
@pytest.mark.parametrize("url", ["http://graph.contoso.test", "ftp://graph.contoso.test"])
def test_non_https_endpoints_are_rejected(tmp_path: Path, key: str, url: str) -> None:
    err = error_of(tmp_path, one(**{key: url}))
    assert err.key == f"tenants[contoso].{key}"
    assert f"{key} must use https" in err.problem


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("graph.contoso.test", "https://graph.contoso.test"),
        ("graph.contoso.test:8443", "https://graph.contoso.test:8443"),
        ("https://graph.contoso.test", "https://graph.contoso.test"),
        ("https://graph.contoso.test:8443/", "https://graph.contoso.test:8443"),
        ("127.0.0.1:9443", "https://127.0.0.1:9443"),
    ],
)
def test_endpoints_are_normalised(tmp_path: Path, given: str, normalised: str) -> None:
    (only,) = load(tmp_path, one(graph_endpoint=given, authority_host=given)).tenants
    assert only.graph_endpoint == normalised
    assert only.graph_url == normalised
    assert only.authority_host == normalised
    assert only.authority_url == normalised


def test_endpoint_override_keeps_the_cloud_for_the_other_host(tmp_path: Path) -> None:
    (only,) = load(tmp_path, one(cloud="china", graph_endpoint="graph.proxy.test")).tenants
    assert only.graph_url == "https://graph.proxy.test"
    assert only.authority_url == "https://login.partner.microsoftonline.cn"


@pytest.mark.parametrize(
    "url",
    [
        "https://graph.microsoft.com/v1.0",
        "https://graph.microsoft.com/beta/",
        "graph.microsoft.com/v1.0",
        "https://graph.microsoft.com?x=1",
    ],
)
def test_path_in_graph_endpoint_is_rejected(tmp_path: Path, url: str) -> None:
    err = error_of(tmp_path, one(graph_endpoint=url))
    assert err.key == "tenants[contoso].graph_endpoint"
    assert "without a path" in err.problem


def test_path_in_authority_host_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, one(authority_host="https://login.microsoftonline.com/contoso"))
    assert err.key == "tenants[contoso].authority_host"
    assert "without a path" in err.problem


@pytest.mark.parametrize(
    "url", ["https://graph.contoso.test:99999", "https://graph.contoso.test:x"]
)
def test_endpoint_with_a_bad_port(tmp_path: Path, url: str) -> None:
    err = error_of(tmp_path, one(graph_endpoint=url))
    assert err.key == "tenants[contoso].graph_endpoint"
    assert "invalid port" in err.problem


def test_endpoint_without_a_host(tmp_path: Path) -> None:
    err = error_of(tmp_path, one(authority_host="https://"))
    assert err.key == "tenants[contoso].authority_host"
    assert "has no host name" in err.problem


# --------------------------------------------------------------------------------------------
# collectors


def test_top_level_collect_applies_to_every_tenant(tmp_path: Path) -> None:
    config = load(tmp_path, {"collect": ["ade"], "tenants": [tenant("a", 0), tenant("b", 1)]})
    assert config.collect == ("ade",)
    assert [config.collectors_for(t) for t in config.tenants] == [("ade",), ("ade",)]


def test_tenant_collect_replaces_the_default(tmp_path: Path) -> None:
    doc = {
        "collect": ["ade"],
        "tenants": [tenant("a", 0, collect=["vpp", "apns"]), tenant("b", 1)],
    }
    config = load(tmp_path, doc)
    a, b = config.tenants
    assert a.collect == ("vpp", "apns")
    assert config.collectors_for(a) == ("vpp", "apns")
    assert config.collectors_for(b) == ("ade",)


def test_tenant_collect_without_top_level_list(tmp_path: Path) -> None:
    config = load(tmp_path, {"tenants": [tenant("a", 0, collect=["apns"]), tenant("b", 1)]})
    a, b = config.tenants
    assert config.collectors_for(a) == ("apns",)
    assert config.collectors_for(b) == ("ade", "ade_devices", "vpp", "apns")


def test_collector_intervals_top_level_and_per_tenant(tmp_path: Path) -> None:
    doc = {
        "poll_interval": "5m",
        "collector_intervals": {"ade_devices": "30m", "apns": "1h"},
        "tenants": [
            tenant("a", 0),
            tenant("b", 1, collector_intervals={"ade_devices": "2h"}),
            tenant("c", 2, collect=["ade", "ade_devices"]),
        ],
    }
    a, b, c = (load(tmp_path, doc).intervals_for(t) for t in load(tmp_path, doc).tenants)
    assert a == {"ade": 300.0, "ade_devices": 1800.0, "vpp": 300.0, "apns": 3600.0}
    assert b == {"ade": 300.0, "ade_devices": 7200.0, "vpp": 300.0, "apns": 3600.0}
    assert c == {"ade": 300.0, "ade_devices": 1800.0}


def test_the_hourly_default_never_polls_faster_than_the_poll_interval(tmp_path: Path) -> None:
    config = load(tmp_path, {"poll_interval": "2h", **one()})
    assert config.intervals_for(config.tenants[0])["ade_devices"] == 7200.0


@pytest.mark.parametrize("where", ["top", "tenant"])
def test_a_collector_interval_below_the_poll_interval_is_refused(
    tmp_path: Path, where: str
) -> None:
    intervals = {"ade_devices": "1m"}
    doc: dict[str, Any] = (
        {"collector_intervals": intervals, **one()}
        if where == "top"
        else one(collector_intervals=intervals)
    )
    err = error_of(tmp_path, doc)
    assert err.key.endswith("collector_intervals.ade_devices")
    assert err.problem == "must be at least poll_interval"


def test_a_collector_interval_of_an_unknown_collector_is_refused(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"collector_intervals": {"ade_device": "1h"}, **one()})
    assert "unknown collector 'ade_device'" in err.problem
    assert "ade_devices" in err.problem


def test_collect_in_defaults_is_inherited(tmp_path: Path) -> None:
    doc = {"defaults": {"collect": ["vpp"]}, "tenants": [tenant("a", 0), tenant("b", 1)]}
    config = load(tmp_path, doc)
    assert [config.collectors_for(t) for t in config.tenants] == [("vpp",), ("vpp",)]


def test_repeated_collector_counts_once(tmp_path: Path) -> None:
    assert load(tmp_path, {"collect": ["vpp", "ade", "vpp"], **one()}).collect == ("vpp", "ade")


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"collect": ["ade", "dep"], **one()}, "collect"),
        ({"tenants": [tenant("a", 0), tenant("b", 1, collect=["dep"])]}, "tenants[b].collect"),
    ],
)
def test_unknown_collector(tmp_path: Path, doc: dict[str, Any], key: str) -> None:
    err = error_of(tmp_path, doc)
    assert err.key == key
    assert err.problem.startswith("unknown collector 'dep'")
    for name in ("ade", "vpp", "apns"):
        assert name in err.problem


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"collect": [], **one()}, "collect"),
        ({"tenants": [tenant(collect=[])]}, "tenants[contoso].collect"),
    ],
)
def test_empty_collector_list(tmp_path: Path, doc: dict[str, Any], key: str) -> None:
    err = error_of(tmp_path, doc)
    assert err.key == key
    assert "at least one collector" in err.problem


def test_collect_must_be_a_list(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"collect": "ade", **one()})
    assert err.key == "collect"


# --------------------------------------------------------------------------------------------
# the file itself


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    err = error_of(tmp_path, text)
    assert err.key == ""
    assert err.problem == "the file is empty"


def test_yaml_syntax_error_has_the_line_number(tmp_path: Path) -> None:
    text = f"""\
poll_interval: 10m
tenants:
  - name: contoso
    tenant_id: {TENANT_IDS[0]}
   client_id: {CLIENT_ID}
"""
    err = error_of(tmp_path, text)
    assert err.key == ""
    assert err.problem.startswith("invalid YAML at line 5")


def test_yaml_error_does_not_quote_a_nearby_secret(tmp_path: Path) -> None:
    text = f"""\
tenants:
  - name: contoso
    tenant_id: {TENANT_IDS[0]}
    client_id: {CLIENT_ID}
    client_secret: "{SECRET}
"""
    err = error_of(tmp_path, text)
    assert err.problem.startswith("invalid YAML")
    assert_secret_absent(err, SECRET)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    err = error_of(tmp_path, text)
    assert err.key == ""
    assert "the top level must be a mapping" in err.problem


def test_missing_tenants(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"poll_interval": "10m"})
    assert err.key == "tenants"
    assert err.problem == "list at least one tenant, or configure discovery.gdap"


def test_empty_tenants_list(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"tenants": []})
    assert err.key == "tenants"
    assert err.problem == "list at least one tenant, or configure discovery.gdap"


def test_gdap_discovery_alone_is_a_valid_config(tmp_path: Path) -> None:
    gdap = {
        "partner_tenant_id": TENANT_IDS[0],
        "client_id": CLIENT_ID,
        "client_secret": "s3cret-value",
        "refresh_interval": "1h",
        "include": ["^Contoso"],
    }
    config = load(tmp_path, {"discovery": {"gdap": gdap}})
    assert config.tenants == ()
    assert config.gdap is not None and config.gdap.refresh_interval == 3600
    assert config.gdap.wanted("Contoso Ltd") and not config.gdap.wanted("Fabrikam")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("refresh_interval", "1m", "must be at least 5m"),
        ("include", ["(unclosed"], "not a valid regular expression"),
        ("partner_tenant_id", "nope", "is not a GUID"),
    ],
)
def test_gdap_discovery_is_validated(tmp_path: Path, key: str, value: Any, problem: str) -> None:
    gdap = {"partner_tenant_id": TENANT_IDS[0], "client_id": CLIENT_ID, "client_secret": "s"}
    gdap[key] = value
    err = error_of(tmp_path, {"discovery": {"gdap": gdap}})
    assert err.key.startswith(f"discovery.gdap.{key}")
    assert problem in err.problem


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.file == str(missing)
    assert caught.value.key == ""
    assert str(caught.value) == f"{missing}: the file does not exist"


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.file == str(tmp_path)
    assert "cannot be read" in caught.value.problem


def test_config_error_renders_file_key_and_problem() -> None:
    err = ConfigError("c.yaml", "tenants[c].client_id", "is not a GUID")
    assert (err.file, err.key, err.problem) == ("c.yaml", "tenants[c].client_id", "is not a GUID")
    assert str(err) == "c.yaml: tenants[c].client_id: is not a GUID"


# --------------------------------------------------------------------------------------------
# secrets stay out of errors and repr()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTOSO_SECRET", ENV_SECRET)


@pytest.mark.parametrize(
    "provoke",
    [
        {"poll_interval": ["ten", "minutes"]},
        {"max_concurrency": "lots"},
        {"extra_key": "x"},
        {"bad_client_id": True},
        {"duplicate": True},
        {"http_graph": True},
        {"bad_ca": True},
    ],
    ids=["bad-duration", "bad-int", "unknown-key", "bad-guid", "duplicate", "http", "bad-ca"],
)
def test_secrets_are_never_in_error_text(
    tmp_path: Path, secret_env: None, secret_file: Path, provoke: dict[str, Any]
) -> None:
    tenants = [
        tenant("literal", 0, client_secret=SECRET),
        tenant("from-env", 1, client_secret="${CONTOSO_SECRET}"),
        tenant("from-file", 2, client_secret_file=str(secret_file)),
    ]
    doc: dict[str, Any] = {"tenants": tenants}
    if "bad_client_id" in provoke:
        tenants[1]["client_id"] = "not-a-guid"
    elif "duplicate" in provoke:
        tenants.append(tenant("from-env", 3, client_secret="${CONTOSO_SECRET}"))
    elif "http_graph" in provoke:
        tenants[0]["graph_endpoint"] = "http://graph.contoso.test"
    elif "bad_ca" in provoke:
        tenants[2]["ca_file"] = str(secret_file)  # the secret file is no CA: its text must not leak
    else:
        doc.update(provoke)
    err = error_of(tmp_path, doc)
    assert err.key  # the error was located, so it is the one provoked
    assert_secret_absent(err, SECRET, ENV_SECRET, FILE_SECRET)


def test_secret_file_given_as_certificate_does_not_leak(tmp_path: Path, secret_file: Path) -> None:
    err = error_of(tmp_path, one(client_certificate_file=str(secret_file)))
    assert err.key == "tenants[contoso].client_certificate_file"
    assert_secret_absent(err, FILE_SECRET)


def test_wrong_type_for_a_secret_does_not_echo_it(tmp_path: Path) -> None:
    err = error_of(tmp_path, one(client_secret=[SECRET]))
    assert err.key == "tenants[contoso].client_secret"
    assert_secret_absent(err, SECRET)


def test_secrets_are_never_in_repr(
    tmp_path: Path, secret_env: None, secret_file: Path, encrypted_cert_file: Path
) -> None:
    doc = {
        "tenants": [
            tenant("literal", 0, client_secret=SECRET),
            tenant("from-env", 1, client_secret="${CONTOSO_SECRET}"),
            tenant("from-file", 2, client_secret_file=str(secret_file)),
            tenant(
                "cert",
                3,
                client_certificate_file=str(encrypted_cert_file),
                client_certificate_password=CERT_PASSWORD,
            ),
        ]
    }
    config = load(tmp_path, doc)
    # The secrets did load, so their absence below is masking, not loss.
    assert config.tenants[0].client_secret is not None
    assert config.tenants[0].client_secret.get_secret_value() == SECRET
    assert config.tenants[1].client_secret is not None
    assert config.tenants[1].client_secret.get_secret_value() == ENV_SECRET
    texts = [repr(config), str(config), config.model_dump_json()]
    texts += [repr(t) for t in config.tenants] + [str(t) for t in config.tenants]
    for text in texts:
        for secret in (SECRET, ENV_SECRET, FILE_SECRET, CERT_PASSWORD):
            assert secret not in text


def test_tenant_config_masks_secrets_when_built_directly() -> None:
    entry = TenantConfig.model_validate(tenant(client_secret=SECRET))
    assert SECRET not in repr(entry)
    assert SECRET not in str(entry)


# --------------------------------------------------------------------------------------------
# the short-poll warning


def test_poll_interval_under_a_minute_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="exporter.config")
    # (the loader logs as exporter.config.loading, a child of exporter.config)
    config = load(tmp_path, {"poll_interval": "30s", **one()})
    assert config.poll_interval == 30.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "exporter.config.loading"
    assert "under a minute" in warnings[0].getMessage()
    assert warnings[0].poll_interval_seconds == 30.0


@pytest.mark.parametrize("interval", ["1m", "60s", "10m", None])
def test_poll_interval_of_a_minute_or_more_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, interval: str | None
) -> None:
    caplog.set_level(logging.DEBUG)
    doc = one() if interval is None else {"poll_interval": interval, **one()}
    load(tmp_path, doc)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------------------------
# the CLI


def test_check_config_accepts_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    path = write(tmp_path, {"tenants": [tenant("a", 0), tenant("b", 1)]})
    assert main(["--check-config", "--config.file", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "configuration is valid" in out
    assert f"{path}: 2 tenants" in out
    assert err == ""


@pytest.mark.parametrize(
    ("doc", "key", "gist"),
    [
        (one(client_id="nope"), "tenants[contoso].client_id", "is not a GUID"),
        ({"pol_interval": "1m", **one()}, "pol_interval", "unknown key"),
        ({"tenants": []}, "tenants", "list at least one tenant"),
    ],
)
def test_check_config_rejects_an_invalid_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    doc: dict[str, Any],
    key: str,
    gist: str,
) -> None:
    path = write(tmp_path, doc)
    assert main(["--check-config", "--config.file", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"invalid configuration: {path}: {key}: ")
    assert gist in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_check_config_on_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["--check-config", f"--config.file={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"invalid configuration: {missing}: the file does not exist"


def test_check_config_on_a_yaml_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    path = write(tmp_path, "tenants:\n  - name: [unclosed\n")
    assert main(["--check-config", "--config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"invalid configuration: {path}: invalid YAML at line ")
    assert "Traceback" not in err


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process, so its log output is captured whole."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_config_keeps_secrets_out_of_stderr_and_logs(tmp_path: Path) -> None:
    doc = {
        "poll_interval": "5s",  # a warning is logged too; it must not carry secrets either
        "tenants": [
            tenant("a", 0, client_secret=SECRET),
            tenant("b", 1, client_secret="${CONTOSO_SECRET}", client_id="bad"),
        ],
    }
    path = write(tmp_path, doc)
    result = _run_cli("--check-config", f"--config.file={path}", env={"CONTOSO_SECRET": ENV_SECRET})
    assert result.returncode == 2
    assert result.stderr.startswith(f"invalid configuration: {path}: tenants[b].client_id: ")
    assert "Traceback" not in result.stderr
    for secret in (SECRET, ENV_SECRET):
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_check_config_short_poll_warns_but_passes(tmp_path: Path) -> None:
    path = write(tmp_path, {"poll_interval": "30s", "tenants": [tenant(client_secret=SECRET)]})
    result = _run_cli("--check-config", "--config.file", str(path))
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout
    (line,) = [ln for ln in result.stderr.splitlines() if "level=warn" in ln]
    assert "under a minute" in line
    assert "poll_interval_seconds=30.0" in line
    assert SECRET not in result.stderr


# --------------------------------------------------------------------------------------------
# config.example.yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_KEYS = ("client_secret_file", "federated_token_file", "client_certificate_file", "ca_file")


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every (key, string value) in a parsed YAML document; list items carry their list's key."""
    if isinstance(node, str):
        yield key, node
    elif isinstance(node, dict):
        for child_key, value in node.items():
            yield from _strings(value, str(child_key))
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value, key)


def _env_value(key: str, text: str, var: str, root: Path) -> str:
    """A value for `var` that makes sense where it is used."""
    if key in ("tenant_id", "client_id"):
        return str(uuid.uuid4())
    if key in _FILE_KEYS:
        if text == f"${{{var}}}":
            return str(root / "env-files" / var.lower())
        directory = root / "env-dirs" / var.lower()
        directory.mkdir(parents=True, exist_ok=True)
        return str(directory)
    if key in ("poll_interval", "request_timeout"):
        return "10m"
    if key == "max_concurrency":
        return "4"
    if key == "cloud":
        return "global"
    if key == "collect":
        return "ade"
    return f"example-{var.lower()}"


def _prepare_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ca: trustme.CA) -> Path:
    """Set the example's variables and create the files it names; return the file to check.

    Literal paths (such as /var/run/secrets/...) are re-rooted under tmp_path in a copy; paths
    built from ${VAR} are made to exist by pointing the variable into tmp_path.
    """
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict), "config.example.yaml must be a mapping"
    env: dict[str, str] = {}
    for key, value in _strings(doc):
        for var in _VAR.findall(value):
            env.setdefault(var, _env_value(key, value, var, tmp_path))
    for var, value in env.items():
        monkeypatch.setenv(var, value)

    def expand(value: str) -> str:
        return _VAR.sub(lambda m: env[m.group(1)], value)

    defaults = doc.get("defaults") if isinstance(doc.get("defaults"), dict) else {}
    mappings = [defaults] + [t for t in doc.get("tenants") or [] if isinstance(t, dict)]
    rewritten = False
    for mapping in mappings:
        for key in _FILE_KEYS:
            value = mapping.get(key)
            if not isinstance(value, str):
                continue
            if _VAR.search(value):
                target = Path(expand(value))
            else:
                target = tmp_path / "rooted" / value.lstrip("/")
                mapping[key] = str(target)
                rewritten = True
            target.parent.mkdir(parents=True, exist_ok=True)
            if key == "ca_file":
                target.write_bytes(ca.cert_pem.bytes())
            elif key == "client_certificate_file":
                password = mapping.get("client_certificate_password")
                if password is None and mapping is not defaults:
                    password = defaults.get("client_certificate_password")
                cert = leaf(ca, "example.contoso.test")
                key_pem = (
                    _encrypted_key_pem(cert, expand(str(password)))
                    if password is not None
                    else _key_pem(cert)
                )
                target.write_bytes(key_pem + _chain_pem(cert))
            else:
                target.write_text("example-credential\n", encoding="utf-8")
    if not rewritten:
        return EXAMPLE_CONFIG
    return write(tmp_path, doc, "config.example.rewritten.yaml")


@pytest.mark.skipif(not EXAMPLE_CONFIG.exists(), reason="config.example.yaml is not written yet")
def test_example_config_passes_check_config(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    ca: trustme.CA,
) -> None:
    path = _prepare_example(tmp_path, monkeypatch, ca)
    code = main(["--check-config", "--config.file", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "configuration is valid" in out


@pytest.mark.skipif(not EXAMPLE_CONFIG.exists(), reason="config.example.yaml is not written yet")
def test_example_config_documents_every_key() -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    models = (ExporterConfig, TenantConfig, ThresholdSettings, GdapDiscovery, DiscoveryConfig)
    keys = {
        name for model in models for name, field in model.model_fields.items() if not field.exclude
    }
    missing = sorted(key for key in keys | {"defaults"} if f"{key}:" not in text)
    assert missing == []
