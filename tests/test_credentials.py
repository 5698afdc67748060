"""Each kind of app credential, checked by the simulated token endpoint; no secret in logs."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exporter.demo.simulator import SimApp
from exporter.logs import JsonFormatter, LogfmtFormatter

from .conftest import CLIENT_ID, SECRET, World, exposition, samples_by_name
from .graph_data import VPP_SECRET_PREFIX, ade_item, apns_item, vpp_item


def encrypted_client_pem(tmp_path: Path, key_pem: str, cert_pem: str, password: str) -> Path:
    """A client certificate file whose private key is encrypted with `password`."""
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    ).decode()
    pem_file = tmp_path / "client.pem"
    pem_file.write_text(encrypted + cert_pem)
    return pem_file


async def test_client_secret_is_sent_and_checked(world: World) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    (request,) = world.cloud.token_requests
    assert (request.credential, request.accepted, request.client_id) == ("secret", True, CLIENT_ID)
    assert exporter.store.tenant("contoso").up


async def test_client_secret_file(world: World, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")  # a trailing newline, as `kubectl create secret` leaves
    world.add(
        "contoso", ade_tokens=[ade_item("A")], credential={"client_secret_file": str(secret_file)}
    )
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    assert [r.accepted for r in world.cloud.token_requests] == [True]


async def test_rotated_client_secret_file_is_picked_up(world: World, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    app = SimApp(CLIENT_ID, secret=SECRET)
    sim = world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        app=app,
        credential={"client_secret_file": str(secret_file)},
    )
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()

    app.secret = "rotated-secret-value-2"
    secret_file.write_text("rotated-secret-value-2")
    # The token from the old secret stays valid and is used until it is not: then the next
    # token comes from the new secret.
    await exporter.poll_all_once()
    assert [r.accepted for r in world.cloud.token_requests] == [True]
    world.cloud.expire_tokens(sim.tenant_id)
    await exporter.poll_all_once()

    assert [r.accepted for r in world.cloud.token_requests] == [True, True]
    assert exporter.store.tenant("contoso").up


async def test_client_certificate_signs_an_assertion_with_x5c(world: World, tmp_path: Path) -> None:
    key_pem, cert_pem = world.cloud.issue_client_certificate("exporter.contoso.example")
    pem_file = tmp_path / "client.pem"
    pem_file.write_text(key_pem + cert_pem)
    app = SimApp(CLIENT_ID, certificate_pem=cert_pem)
    world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        app=app,
        credential={"client_certificate_file": str(pem_file)},
    )
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    (request,) = world.cloud.token_requests
    assert (request.credential, request.accepted) == ("certificate", True)
    assert request.assertion_claims is not None and request.assertion_headers is not None
    assert request.assertion_claims["iss"] == request.assertion_claims["sub"] == CLIENT_ID
    # x5c (the public certificate) is what subject-name/issuer authentication needs.
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    # MSAL copies the PEM body, line breaks included; Entra ID reads it as base64 all the same.
    x5c = "".join(request.assertion_headers["x5c"][0].split())
    assert x5c == base64.b64encode(der).decode()
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert request.assertion_headers["x5t#S256"].rstrip("=") == thumbprint
    assert exporter.store.tenant("contoso").up


async def test_the_certificate_credential_s_expiry_is_exported(
    world: World, tmp_path: Path
) -> None:
    """intune_exporter_credential_expiry_timestamp_seconds: the leaf's notAfter, read from the
    PEM (no Graph call), per tenant; a tenant on a client secret has none."""
    key_pem, cert_pem = world.cloud.issue_client_certificate("exporter.contoso.example")
    pem_file = tmp_path / "client.pem"
    pem_file.write_text(key_pem + cert_pem)
    world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        app=SimApp(CLIENT_ID, certificate_pem=cert_pem),
        credential={"client_certificate_file": str(pem_file)},
    )
    world.add("fabrikam", ade_tokens=[ade_item("B")])
    exporter = await world.exporter(collect=["ade"])
    unread = samples_by_name(exposition(exporter, time.time()))
    assert "intune_exporter_credential_expiry_timestamp_seconds" not in unread

    await exporter.poll_all_once()

    not_after = x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc.timestamp()
    assert exporter.store.tenant("contoso").credential_expires_at == not_after
    assert exporter.store.tenant("fabrikam").credential_expires_at is None
    scraped = samples_by_name(exposition(exporter, time.time()))
    assert scraped["intune_exporter_credential_expiry_timestamp_seconds"] == [
        ({"tenant": "contoso"}, not_after)
    ]


async def test_encrypted_client_certificate_with_password(world: World, tmp_path: Path) -> None:
    key_pem, cert_pem = world.cloud.issue_client_certificate("exporter.contoso.example")
    pem_file = encrypted_client_pem(tmp_path, key_pem, cert_pem, "pem-pass-Qx7")
    app = SimApp(CLIENT_ID, certificate_pem=cert_pem)
    world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        app=app,
        credential={
            "client_certificate_file": str(pem_file),
            "client_certificate_password": "pem-pass-Qx7",
        },
    )
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    assert [(r.credential, r.accepted) for r in world.cloud.token_requests] == [
        ("certificate", True)
    ]


async def test_certificate_not_registered_on_the_app_is_rejected(
    world: World, tmp_path: Path
) -> None:
    key_pem, cert_pem = world.cloud.issue_client_certificate("someone-else")
    _, registered = world.cloud.issue_client_certificate("exporter")
    pem_file = tmp_path / "client.pem"
    pem_file.write_text(key_pem + cert_pem)
    world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        app=SimApp(CLIENT_ID, certificate_pem=registered),
        credential={"client_certificate_file": str(pem_file)},
    )
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    error = exporter.store.tenant("contoso").collectors["ade"].last_error
    assert error is not None and error.reason == "auth" and "AADSTS700027" in error.message
    # A rejected certificate still says when it expires: the poll that failed records it.
    not_after = x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc.timestamp()
    scraped = samples_by_name(exposition(exporter, time.time()))
    assert scraped["intune_exporter_credential_expiry_timestamp_seconds"] == [
        ({"tenant": "contoso"}, not_after)
    ]


async def test_federated_token_file_is_read_again_for_each_new_token(
    world: World, tmp_path: Path
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("federated-jwt-one")
    app = SimApp(CLIENT_ID, federated_tokens={"federated-jwt-one"})
    sim = world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        app=app,
        credential={"federated_token_file": str(token_file)},
    )
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()

    # Kubernetes rotates the projected token; the old one is no longer accepted. The next
    # access token (here: the old one was revoked early) is asked for with the new file.
    app.federated_tokens = {"federated-jwt-two"}
    token_file.write_text("federated-jwt-two")
    world.cloud.expire_tokens(sim.tenant_id)
    await exporter.poll_all_once()

    assert [(r.credential, r.accepted) for r in world.cloud.token_requests] == [
        ("federated", True),
        ("federated", True),
    ]
    assert exporter.store.tenant("contoso").up


async def test_a_vanished_federated_token_file_is_an_auth_failure(
    world: World, tmp_path: Path
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("federated-jwt-one")
    world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        app=SimApp(CLIENT_ID, federated_tokens={"federated-jwt-one"}),
        credential={"federated_token_file": str(token_file)},
    )
    exporter = await world.exporter(collect=["ade"])
    token_file.unlink()

    await exporter.poll_all_once()

    error = exporter.store.tenant("contoso").collectors["ade"].last_error
    assert error is not None and error.reason == "auth"
    assert "does not exist" in error.message


async def test_secrets_never_reach_the_logs(world: World, tmp_path: Path) -> None:
    # Both of the exporter's own formats, at debug, with every extra field they print.
    streams = {"logfmt": io.StringIO(), "json": io.StringIO()}
    handlers = []
    previous_level = logging.getLogger().level
    for fmt, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(LogfmtFormatter() if fmt == "logfmt" else JsonFormatter())
        handlers.append(handler)
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        secret_file = tmp_path / "secret"
        secret_file.write_text("file-secret-Wq93")
        key_pem, cert_pem = world.cloud.issue_client_certificate("exporter")
        pem_file = encrypted_client_pem(tmp_path, key_pem, cert_pem, "pem-pass-Lk30")
        token_file = tmp_path / "token"
        token_file.write_text("federated-jwt-Rr55")
        world.add(
            "good",
            ade_tokens=[ade_item("A")],
            vpp_tokens=[vpp_item("V")],
            apns_certificate=apns_item(),
        )
        world.add(
            "bad-secret",
            ade_tokens=[ade_item("B")],
            credential={"client_secret": "wrong-secret-Pz41"},
        )
        world.add(
            "bad-file",
            ade_tokens=[ade_item("C")],
            credential={"client_secret_file": str(secret_file)},
        )
        # Registered with another certificate and another federated token: both rejected.
        _, other_cert = world.cloud.issue_client_certificate("someone-else")
        world.add(
            "bad-cert",
            ade_tokens=[ade_item("D")],
            app=SimApp(CLIENT_ID, certificate_pem=other_cert),
            credential={
                "client_certificate_file": str(pem_file),
                "client_certificate_password": "pem-pass-Lk30",
            },
        )
        world.add(
            "bad-federated",
            ade_tokens=[ade_item("E")],
            app=SimApp(CLIENT_ID, federated_tokens={"another-token"}),
            credential={"federated_token_file": str(token_file)},
        )
        exporter = await world.exporter()

        await exporter.poll_all_once()
        await exporter.poll_all_once()
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous_level)

    access_tokens = {r.token for r in world.cloud.graph_requests}
    assert access_tokens, "the scenario made Graph requests"
    key_body = "".join(key_pem.splitlines()[1:-1])[:40]
    # The encrypted key as it is written in the file, line by line.
    encrypted = pem_file.read_text().split("-----END ENCRYPTED PRIVATE KEY-----")[0]
    encrypted_lines = [line for line in encrypted.splitlines()[1:] if len(line) > 20]
    assert encrypted_lines
    text = streams["logfmt"].getvalue() + streams["json"].getvalue()
    text += repr(exporter.config) + str(exporter.config)
    for secret in (
        SECRET,
        "wrong-secret-Pz41",
        "file-secret-Wq93",
        "pem-pass-Lk30",
        "federated-jwt-Rr55",
        key_body,
        *encrypted_lines,
        VPP_SECRET_PREFIX,
        *access_tokens,
    ):
        assert secret not in text
    # The failures were logged, with their fields, just without secrets.
    for code in ("7000215", "700027"):
        assert f"aadsts={code}" in streams["logfmt"].getvalue()
        assert f'"aadsts": {code}' in streams["json"].getvalue()
