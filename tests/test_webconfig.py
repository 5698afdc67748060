"""The web config (--web.config.file): real TLS handshakes, mTLS, basic auth, rotation, errors."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exporter.web import WebConfig, load_web_config
from exporter.web import config as webconfig
from exporter.yaml_config import ConfigError

PASSWORD = "s3cret-scrape-password"
# Cost 4 keeps the suite fast; the caching logic does not depend on the cost.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


# --------------------------------------------------------------------------------------------
# helpers


def _app(config: WebConfig) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="intune_tenant_up 1\n")

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    middleware = config.middleware()
    app = web.Application(middlewares=[middleware] if middleware else [])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    return app


@asynccontextmanager
async def serve(config: WebConfig) -> AsyncIterator[int]:
    """Serve a small app with the web config's TLS context and middleware on a loopback port."""
    runner = web.AppRunner(_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=config.ssl_context())
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def auth_header(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def get(
    port: int,
    path: str = "/metrics",
    *,
    ctx: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    scheme = "https" if ctx else "http"
    connector = aiohttp.TCPConnector(ssl=ctx if ctx else False, force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{scheme}://localhost:{port}{path}", headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.text()


async def served_certificate(
    port: int, ctx: ssl.SSLContext, server_hostname: str
) -> x509.Certificate:
    """The certificate the server presents in a fresh handshake."""
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def install_cert(cert: trustme.LeafCert, cert_path: Path, key_path: Path) -> None:
    """Replace the files atomically, as a Kubernetes Secret volume update does."""
    for blob, path in ((cert.cert_chain_pems[0], cert_path), (cert.private_key_pem, key_path)):
        tmp = path.with_suffix(".tmp")
        blob.write_to_path(str(tmp))
        os.replace(tmp, path)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path, Path]:
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="exporter-first")
    cert, key, ca_file = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    install_cert(server, cert, key)
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


# --------------------------------------------------------------------------------------------
# TLS


async def test_tls_handshake_serves_configured_certificate(
    tmp_path: Path, ca: trustme.CA, tls_files: tuple[Path, Path, Path]
) -> None:
    config = load_web_config(
        write_config(tmp_path, "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n")
    )
    assert config.middleware() is None
    async with serve(config) as port:
        status, _, body = await get(port, ctx=client_context(ca))
        assert (status, body) == (200, "intune_tenant_up 1\n")
        cert = await served_certificate(port, client_context(ca), "localhost")
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == "exporter-first"
        # Plain HTTP against the TLS port does not get metrics.
        with pytest.raises(aiohttp.ClientError):
            await get(port)
        # A client that does not trust the CA refuses the certificate.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(port, ctx=ssl.create_default_context())


async def test_min_version_is_enforced(
    tmp_path: Path, ca: trustme.CA, tls_files: tuple[Path, Path, Path]
) -> None:
    config = load_web_config(
        write_config(
            tmp_path,
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  min_version: TLS13\n",
        )
    )
    old_client = client_context(ca)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serve(config) as port:
        with pytest.raises(aiohttp.ClientError):
            await get(port, ctx=old_client)
        assert (await get(port, ctx=client_context(ca)))[0] == 200


async def test_mtls_rejects_client_without_certificate(
    tmp_path: Path, ca: trustme.CA, tls_files: tuple[Path, Path, Path]
) -> None:
    config = load_web_config(
        write_config(
            tmp_path,
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
            "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
        )
    )
    good_client = ca.issue_cert("prometheus.monitoring.svc")
    foreign_client = trustme.CA().issue_cert("prometheus.monitoring.svc")
    async with serve(config) as port:
        with pytest.raises(aiohttp.ClientError):
            await get(port, ctx=client_context(ca))
        with pytest.raises(aiohttp.ClientError):
            await get(port, ctx=client_context(ca, foreign_client))
        assert (await get(port, ctx=client_context(ca, good_client)))[0] == 200


async def test_client_allowed_sans(
    tmp_path: Path, ca: trustme.CA, tls_files: tuple[Path, Path, Path]
) -> None:
    config = load_web_config(
        write_config(
            tmp_path,
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
            "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
            "  client_allowed_sans: [prometheus.monitoring.svc]\n",
        )
    )
    allowed = ca.issue_cert("prometheus.monitoring.svc")
    other = ca.issue_cert("grafana.monitoring.svc")
    async with serve(config) as port:
        assert (await get(port, ctx=client_context(ca, allowed)))[0] == 200
        status, _, body = await get(port, ctx=client_context(ca, other))
        assert status == 403
        assert "SAN" in body


async def test_certificate_rotation_without_restart(
    tmp_path: Path,
    ca: trustme.CA,
    tls_files: tuple[Path, Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert_path, key_path, _ = tls_files
    config = load_web_config(
        write_config(tmp_path, "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n")
    )
    ctx = client_context(ca)
    async with serve(config) as port:
        first = await served_certificate(port, ctx, "localhost")

        rotated = ca.issue_cert("localhost", "127.0.0.1", common_name="exporter-rotated")
        install_cert(rotated, cert_path, key_path)
        expected = x509.load_pem_x509_certificate(rotated.cert_chain_pems[0].bytes())
        assert expected.serial_number != first.serial_number

        deadline = time.monotonic() + 10
        served = first
        while served.serial_number != expected.serial_number and time.monotonic() < deadline:
            served = await served_certificate(port, ctx, "localhost")
        assert served.serial_number == expected.serial_number
        cn = served.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == "exporter-rotated"
        # Clients that send no SNI (connecting by IP address) get the new certificate too.
        by_ip = await served_certificate(port, ctx, "127.0.0.1")
        assert by_ip.serial_number == expected.serial_number
        # Requests over the rotated certificate work end to end.
        assert (await get(port, ctx=ctx))[0] == 200

        # A broken update (garbage key) keeps the last good certificate and logs a warning
        # that does not echo the file's content.
        caplog.set_level(logging.WARNING, logger="exporter.webconfig")
        garbage = "-----BEGIN PRIVATE KEY-----\nTOPSECRETGARBAGE\n-----END PRIVATE KEY-----\n"
        key_path.write_text(garbage)
        still = await served_certificate(port, ctx, "localhost")
        assert still.serial_number == expected.serial_number
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "still serving the previous certificate" in warnings[0].getMessage()
        assert "TOPSECRETGARBAGE" not in caplog.text
        # One warning per change, not one per handshake.
        await served_certificate(port, ctx, "localhost")
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

        # Fixing the files is picked up again.
        third = ca.issue_cert("localhost", "127.0.0.1", common_name="exporter-third")
        install_cert(third, cert_path, key_path)
        final = await served_certificate(port, ctx, "localhost")
        cn = final.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == "exporter-third"


async def test_client_ca_rotation_is_picked_up(
    tmp_path: Path, ca: trustme.CA, tls_files: tuple[Path, Path, Path]
) -> None:
    _, _, ca_file = tls_files
    config = load_web_config(
        write_config(
            tmp_path,
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
            "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
        )
    )
    new_client_ca = trustme.CA()
    new_client = new_client_ca.issue_cert("prometheus.monitoring.svc")
    async with serve(config) as port:
        with pytest.raises(aiohttp.ClientError):
            await get(port, ctx=client_context(ca, new_client))
        tmp = ca_file.with_suffix(".tmp")
        tmp.write_bytes(ca.cert_pem.bytes() + new_client_ca.cert_pem.bytes())
        os.replace(tmp, ca_file)
        assert (await get(port, ctx=client_context(ca, new_client)))[0] == 200


# --------------------------------------------------------------------------------------------
# basic auth


def auth_config(tmp_path: Path, extra: str = "") -> WebConfig:
    return load_web_config(
        write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{HASH}'\n{extra}")
    )


async def test_basic_auth_right_wrong_missing(tmp_path: Path) -> None:
    config = auth_config(tmp_path)
    assert config.ssl_context() is None
    async with serve(config) as port:
        status, _, body = await get(port, headers=auth_header("prometheus", PASSWORD))
        assert (status, body) == (200, "intune_tenant_up 1\n")

        for headers in (
            auth_header("prometheus", "wrong"),
            auth_header("nobody", PASSWORD),
            None,
            {"Authorization": "Bearer abc"},
            {"Authorization": "Basic !!!not-base64"},
        ):
            status, response_headers, _ = await get(port, headers=headers)
            assert status == 401, headers
            assert response_headers["WWW-Authenticate"].startswith(
                'Basic realm="intune-apple-token-exporter"'
            )

        # Liveness stays open; unknown paths are not revealed without credentials.
        assert (await get(port, "/-/healthy"))[:3:2] == (200, "Healthy\n")
        assert (await get(port, "/nope"))[0] == 401
        assert (await get(port, "/nope", headers=auth_header("prometheus", PASSWORD)))[0] == 404


async def test_basic_auth_over_tls(
    tmp_path: Path, ca: trustme.CA, tls_files: tuple[Path, Path, Path]
) -> None:
    config = auth_config(
        tmp_path, "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
    )
    async with serve(config) as port:
        assert (await get(port, ctx=client_context(ca)))[0] == 401
        ok = await get(port, ctx=client_context(ca), headers=auth_header("prometheus", PASSWORD))
        assert ok[0] == 200


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


async def test_bcrypt_cost_not_paid_on_every_request(
    tmp_path: Path, checkpw_calls: list[bytes]
) -> None:
    config = auth_config(tmp_path)
    good = auth_header("prometheus", PASSWORD)
    async with serve(config) as port:
        # A scrape storm of concurrent requests with good credentials: one bcrypt in total.
        results = await asyncio.gather(*(get(port, headers=good) for _ in range(20)))
        assert [r[0] for r in results] == [200] * 20
        assert len(checkpw_calls) == 1
        for _ in range(10):
            assert (await get(port, headers=good))[0] == 200
        assert len(checkpw_calls) == 1

        # The same wrong password retried (a misconfigured scraper) costs one bcrypt.
        for _ in range(5):
            assert (await get(port, headers=auth_header("prometheus", "old-password")))[0] == 401
        assert len(checkpw_calls) == 2
        # An unknown user still pays one bcrypt (against a dummy hash: no user enumeration by
        # timing), once.
        for _ in range(3):
            assert (await get(port, headers=auth_header("mallory", PASSWORD)))[0] == 401
        assert len(checkpw_calls) == 3
        # Good credentials are still served from the cache.
        assert (await get(port, headers=good))[0] == 200
        assert len(checkpw_calls) == 3


async def test_password_guessing_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    running = threading.Semaphore(0)
    active = 0
    max_active = 0
    lock = threading.Lock()

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        nonlocal active, max_active
        with lock:
            active += 1
            max_active = max(max_active, active)
        running.release()
        release.wait(timeout=30)
        with lock:
            active -= 1
        return False

    config = auth_config(tmp_path)
    async with serve(config) as port:
        monkeypatch.setattr(bcrypt, "checkpw", slow_checkpw)
        tasks = [
            asyncio.create_task(get(port, headers=auth_header("prometheus", f"guess-{i}")))
            for i in range(12)
        ]
        # While the first check blocks, 7 more queue up and the remaining 4 are refused at once.
        refused = []
        deadline = time.monotonic() + 10
        while len(refused) < 4 and time.monotonic() < deadline:
            done, _ = await asyncio.wait(tasks, timeout=0.05)
            refused = [t for t in done if t.result()[0] == 429]
        assert len(refused) == 4
        assert all(t.result()[1]["Retry-After"] == "1" for t in refused)
        # Healthy stays responsive while bcrypt work is queued: it runs off the event loop.
        assert (await get(port, "/-/healthy"))[0] == 200
        release.set()
        statuses = sorted(r[0] for r in await asyncio.gather(*tasks))
        assert statuses == [401] * 8 + [429] * 4
        assert max_active == 1  # bcrypt never runs on more than one core at a time


# --------------------------------------------------------------------------------------------
# headers and rate limit


async def test_configured_headers_on_every_response(tmp_path: Path) -> None:
    config = auth_config(
        tmp_path,
        "http_server_config:\n  http2: true\n  headers:\n"
        "    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n",
    )
    async with serve(config) as port:
        for path, headers, status in (
            ("/metrics", auth_header("prometheus", PASSWORD), 200),
            ("/metrics", None, 401),
            ("/nope", auth_header("prometheus", PASSWORD), 404),
            ("/-/healthy", None, 200),
        ):
            got, response_headers, _ = await get(port, path, headers=headers)
            assert got == status
            assert response_headers["X-Frame-Options"] == "deny"
            assert response_headers["X-Content-Type-Options"] == "nosniff"


async def test_rate_limit(tmp_path: Path) -> None:
    config = load_web_config(write_config(tmp_path, "rate_limit:\n  interval: 1h\n  burst: 2\n"))
    assert config.rate_limit == (3600.0, 2)
    async with serve(config) as port:
        assert [(await get(port))[0] for _ in range(3)] == [200, 200, 429]
        assert (await get(port, "/-/healthy"))[0] == 200


# --------------------------------------------------------------------------------------------
# loading and errors


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    config = load_web_config(write_config(tmp_path, ""))
    assert config.ssl_context() is None
    assert config.middleware() is None
    assert config.summary() == "TLS off, basic auth off"
    # An empty tls_server_config is plain HTTP in the toolkit too.
    assert load_web_config(write_config(tmp_path, "tls_server_config: {}\n")).tls is None


def test_summary_has_no_secrets(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
    config = auth_config(
        tmp_path,
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  min_version: TLS13\n",
    )
    assert config.summary() == "TLS on (min TLS13, client auth NoClientCert), basic auth for 1 user"
    assert HASH not in config.summary()


def test_cipher_suites_map_to_openssl(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
    config = load_web_config(
        write_config(
            tmp_path,
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
            "  prefer_server_cipher_suites: false\n"
            "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n",
        )
    )
    assert config.tls is not None
    assert config.tls.openssl_ciphers == ("ECDHE-RSA-AES256-GCM-SHA384",)
    ctx = config.ssl_context()
    assert ctx is not None
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-RSA-AES256-GCM-SHA384"]
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE


TLS = "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
MTLS = TLS + "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"


def _encrypted_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )


def _other_key(tmp_path: Path) -> None:
    other = trustme.CA().issue_cert("localhost")
    other.private_key_pem.write_to_path(str(tmp_path / "tls.key"))


ERROR_CASES: list[tuple[str, str, str, str, Callable[[Path], None] | None]] = [
    # id, file content, key path, problem, file mutation before loading
    ("yaml", "tls_server_config: [\n", "", "invalid YAML at line 2, column 1", None),
    ("not-mapping", "- a\n", "", "the web config must be a YAML mapping", None),
    (
        "unknown-top",
        "tls_config: {}\n",
        "tls_config",
        "unknown key (valid keys: tls_server_config, http_server_config, basic_auth_users, "
        "rate_limit)",
        None,
    ),
    (
        "unknown-tls",
        TLS + "  certfile: x\n",
        "tls_server_config.certfile",
        "unknown key (valid keys: cert_file, key_file, client_ca_file, client_auth_type, "
        "client_allowed_sans, min_version, max_version, cipher_suites, "
        "prefer_server_cipher_suites)",
        None,
    ),
    (
        "unknown-http",
        "http_server_config:\n  h2c: true\n",
        "http_server_config.h2c",
        "unknown key (valid keys: http2, headers)",
        None,
    ),
    (
        "inline-cert",
        "tls_server_config:\n  cert: abc\n",
        "tls_server_config.cert",
        "inline certificates are not supported",
        None,
    ),
    (
        "inline-key",
        "tls_server_config:\n  key: abc\n",
        "tls_server_config.key",
        "inline keys are not supported",
        None,
    ),
    (
        "curves",
        TLS + "  curve_preferences: [CurveP256]\n",
        "tls_server_config.curve_preferences",
        "not supported: Python's ssl module cannot set a list of curves",
        None,
    ),
    (
        "require-any",
        TLS + "  client_auth_type: RequireAnyClientCert\n",
        "tls_server_config.client_auth_type",
        "RequireAnyClientCert is not supported",
        None,
    ),
    (
        "bad-auth-type",
        TLS + "  client_auth_type: Sometimes\n",
        "tls_server_config.client_auth_type",
        "Input should be 'NoClientCert', 'RequestClientCert', 'VerifyClientCertIfGiven' or "
        "'RequireAndVerifyClientCert'",
        None,
    ),
    (
        "bad-version",
        TLS + "  min_version: TLS14\n",
        "tls_server_config.min_version",
        "Input should be 'TLS10', 'TLS11', 'TLS12' or 'TLS13'",
        None,
    ),
    (
        "version-type",
        TLS + "  min_version: 12\n",
        "tls_server_config.min_version",
        "Input should be 'TLS10', 'TLS11', 'TLS12' or 'TLS13'",
        None,
    ),
    (
        "max-below-min",
        TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        "tls_server_config.max_version",
        "is lower than min_version",
        None,
    ),
    (
        "missing-key",
        "tls_server_config:\n  cert_file: tls.crt\n",
        "tls_server_config.key_file",
        "missing (TLS needs both files)",
        None,
    ),
    (
        "auth-without-tls",
        "tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n",
        "tls_server_config.client_auth_type",
        "requires cert_file and key_file",
        None,
    ),
    (
        "cert-unreadable",
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: tls.key\n",
        "tls_server_config.cert_file",
        "missing.crt: No such file or directory",
        None,
    ),
    (
        "cert-not-pem",
        TLS,
        "tls_server_config.cert_file",
        "tls.crt holds no PEM certificate",
        lambda p: (p / "tls.crt").write_text("hello\n"),
    ),
    (
        "key-not-pem",
        TLS,
        "tls_server_config.key_file",
        "tls.key holds no unencrypted PEM private key",
        lambda p: (p / "tls.key").write_text("SECRETBYTES\n"),
    ),
    (
        "key-encrypted",
        TLS,
        "tls_server_config.key_file",
        "tls.key holds no unencrypted PEM private key",
        _encrypted_key,
    ),
    (
        "key-mismatch",
        TLS,
        "tls_server_config.key_file",
        "tls.key does not match the certificate in",
        _other_key,
    ),
    (
        "ca-missing",
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        "tls_server_config.client_ca_file",
        "required with client_auth_type RequireAndVerifyClientCert",
        None,
    ),
    (
        "ca-without-auth",
        TLS + "  client_ca_file: ca.crt\n",
        "tls_server_config.client_auth_type",
        "client_ca_file is set but client_auth_type is NoClientCert",
        None,
    ),
    (
        "ca-not-pem",
        MTLS,
        "tls_server_config.client_ca_file",
        "ca.crt holds no PEM certificate",
        lambda p: (p / "ca.crt").write_text("nope\n"),
    ),
    (
        "sans-without-verify",
        TLS + "  client_allowed_sans: [a]\n",
        "tls_server_config.client_allowed_sans",
        "requires client_auth_type RequireAndVerifyClientCert",
        None,
    ),
    (
        "bad-cipher",
        TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
        "tls_server_config.cipher_suites",
        "unknown cipher suite 'TLS_RSA_WITH_RC4_128_SHA'",
        None,
    ),
    (
        "bad-header",
        "http_server_config:\n  headers:\n    Server: x\n",
        "http_server_config.headers",
        "header 'Server' cannot be configured",
        None,
    ),
    (
        "bad-header-value",
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        "http_server_config.headers",
        "invalid value for header 'X-Frame-Options'; allowed: deny, sameorigin",
        None,
    ),
    (
        "bad-hash",
        "basic_auth_users:\n  prometheus: plaintext-password\n",
        "basic_auth_users.prometheus",
        "not a bcrypt hash",
        None,
    ),
    (
        "hash-type",
        "basic_auth_users:\n  prometheus: 12345\n",
        "basic_auth_users.prometheus",
        "Input should be a valid string",
        None,
    ),
    (
        "colon-user",
        f"basic_auth_users:\n  'a:b': '{HASH}'\n",
        "basic_auth_users.a:b",
        "a user name must be non-empty and contain no ':'",
        None,
    ),
    (
        "bad-interval",
        "rate_limit:\n  interval: soon\n  burst: 1\n",
        "rate_limit.interval",
        "invalid duration 'soon'",
        None,
    ),
    (
        "zero-burst",
        "rate_limit:\n  interval: 1s\n",
        "rate_limit.burst",
        "must be at least 1 with an interval",
        None,
    ),
]


@pytest.mark.parametrize(
    ("content", "key", "problem", "mutate"),
    [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES],
)
def test_config_errors(
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    content: str,
    key: str,
    problem: str,
    mutate: Callable[[Path], None] | None,
) -> None:
    if mutate is not None:
        mutate(tmp_path)
    path = write_config(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    err = caught.value
    assert err.file == str(path)
    assert err.key == key
    assert problem in err.problem
    assert str(err) == (f"{path}: {key}: {err.problem}" if key else f"{path}: {err.problem}")
    # Errors never carry secret material.
    assert "SECRETBYTES" not in str(err)
    assert "plaintext-password" not in str(err)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as caught:
        load_web_config(missing)
    assert str(caught.value) == f"{missing}: the file does not exist"


def test_relative_paths_resolve_against_config_dir(
    tmp_path: Path, tls_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, TLS)
    monkeypatch.chdir("/")
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "tls.crt"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("1s", 1.0), ("250ms", 0.25), ("1m30s", 90.0), ("1.5h", 5400.0), ("10us", 1e-5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert webconfig.parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1s ", "-1s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        webconfig.parse_go_duration(text)
