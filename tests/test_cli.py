"""The console script as a user runs it: --demo end to end, signals, exit codes."""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from asyncio.sslproto import SSLProtocol
from collections.abc import Coroutine, Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme

from exporter import cli
from exporter.gc_tuning import YOUNG_THRESHOLD
from exporter.metrics import metric_specs
from exporter.tls_buffers import READ_BUFFER

from .conftest import one, samples_by_name

DEADLINE = 30.0


class Running:
    """A started exporter process and the address it bound."""

    def __init__(self, process: subprocess.Popen[str], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.base = ""

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.log()):
                return match
            assert self.process.poll() is None, f"exporter exited early:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log within {DEADLINE}s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if self.get("/-/ready")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"not ready within {DEADLINE}s:\n{self.log()}")


def start(tmp_path: Path, *args: str) -> Running:
    log_path = tmp_path / "exporter.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0", *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    running = Running(process, log_path)
    try:
        # logfmt `msg=listening address=127.0.0.1:N` or JSON `"msg": "listening", "address": ...`
        match = running.wait_for_log(r'listening"?,? "?address"?[=:] ?"?127\.0\.0\.1:(\d+)')
    except BaseException:
        process.kill()
        process.wait()
        raise
    running.base = f"http://127.0.0.1:{match.group(1)}"
    return running


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Running]:
    running = start(tmp_path, "--demo")
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def test_demo_serves_every_metric(demo: Running) -> None:
    demo.wait_ready()
    status, text = demo.get("/metrics")
    assert status == 200
    samples = samples_by_name(text)
    # The storage metrics come with --storage.path only (tests/test_storage.py checks them), the
    # credential expiry with a certificate credential only (tests/test_credentials.py).
    missing = [
        spec.name
        for spec in metric_specs()
        if spec.name not in samples
        and not spec.name.startswith("intune_exporter_storage_")
        and spec.name != "intune_exporter_credential_expiry_timestamp_seconds"
    ]
    assert missing == []
    # The demo's scenarios, as the issue lists them.
    assert one(samples, "intune_ade_token_days_to_expiry", token_name="Contoso iOS") > 199
    assert 19 < one(samples, "intune_ade_token_days_to_expiry", token_name="Fabrikam iPads") < 20
    assert 4 < one(samples, "intune_ade_token_days_to_expiry", token_name="Fabrikam Macs") < 5
    assert one(samples, "intune_ade_token_days_to_expiry", token_name="Northwind Shared") < -9
    assert one(samples, "intune_ade_token_last_sync_error_code", token_name="Northwind School") == 3
    assert (
        one(
            samples,
            "intune_ade_token_last_successful_sync_age_seconds",
            token_name="Northwind Loaners",
        )
        > 3 * 86400 - 60
    )
    assert not any(
        labels["token_name"] == "Northwind Spare"
        for labels, _ in samples["intune_ade_token_last_successful_sync_age_seconds"]
    )
    woodgrove = [
        labels for labels, _ in samples["intune_ade_token_info"] if labels["tenant"] == "woodgrove"
    ]
    assert len(woodgrove) == 45
    assert one(samples, "intune_tenant_up", tenant="tailspin") == 0.0
    assert (
        one(
            samples,
            "intune_tenant_poll_errors_total",
            tenant="tailspin",
            collector="ade",
            reason="auth",
        )
        >= 1
    )
    for tenant in ("contoso", "fabrikam", "northwind", "woodgrove"):
        assert one(samples, "intune_tenant_up", tenant=tenant) == 1.0
    for token, state in (
        ("Contoso Apps", "valid"),
        ("Fabrikam Education", "expired"),
        ("Northwind Retail", "invalid"),
        ("Northwind Kiosk", "assignedToExternalMDM"),
    ):
        assert one(samples, "intune_vpp_token_state", token_name=token, state=state) == 1.0
    assert one(samples, "intune_vpp_token_sync_error", token_name="Northwind Field") == 1.0
    assert one(samples, "intune_apns_certificate_configured", tenant="northwind") == 0.0
    assert 11 < one(samples, "intune_apns_certificate_days_to_expiry", tenant="fabrikam") < 12
    assert "SECRET-VPP-TOKEN" not in text


def test_sigterm_shuts_down_cleanly(demo: Running) -> None:
    demo.wait_ready()
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(timeout=10) == 0
    assert "shutting down" in demo.log()
    assert "Traceback" not in demo.log()


def test_sigint_shuts_down_cleanly(demo: Running) -> None:
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=10) == 0
    assert "Traceback" not in demo.log()


def test_json_logs(tmp_path: Path) -> None:
    running = start(tmp_path, "--demo", "--log.format=json")
    try:
        running.wait_ready()
        running.wait_for_log(r'"aadsts": 7000215')
    finally:
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=10)
    lines = [json.loads(line) for line in running.log().splitlines() if line.strip()]
    auth = next(line for line in lines if line.get("aadsts") == 7000215)
    assert auth["tenant"] == "tailspin" and auth["reason"] == "auth" and auth["level"] == "warn"
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])


def test_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tenants:\n  - name: x\n    tenant_id: not-a-guid\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={config}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{config}: tenants[x].tenant_id: 'not-a-guid' is not a GUID" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_on_the_demo(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--demo", "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_sigterm_exits_promptly_while_a_token_request_hangs(tmp_path: Path) -> None:
    # "Entra ID" accepts the connection and never answers; the request timeout is long.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = threading.Event()

    def accept() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            accepted.set()
            while connection.recv(65536):  # read the ClientHello, answer nothing, hold it open
                pass

    threading.Thread(target=accept, daemon=True).start()
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    config = tmp_path / "config.yaml"
    config.write_text(
        "request_timeout: 5m\n"
        "tenants:\n"
        "  - name: hung\n"
        "    tenant_id: 11111111-1111-1111-1111-111111111111\n"
        "    client_id: 22222222-2222-2222-2222-222222222222\n"
        f"    client_secret_file: {secret}\n"
        f"    authority_host: https://127.0.0.1:{listener.getsockname()[1]}\n"
    )
    running = start(tmp_path, f"--config.file={config}")
    try:
        assert accepted.wait(DEADLINE), running.log()  # MSAL's request is in flight
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0
        assert "Traceback" not in running.log()
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        listener.close()


def _web_config(tmp_path: Path) -> tuple[Path, trustme.CA]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    server.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    password_hash = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        "  cert_file: tls.crt\n"
        "  key_file: tls.key\n"
        "basic_auth_users:\n"
        f"  prometheus: '{password_hash}'\n"
    )
    return web, ca


def test_check_config_covers_the_web_config(tmp_path: Path) -> None:
    web, _ = _web_config(tmp_path)
    ok = subprocess.run(
        [sys.executable, "-m", "exporter", "--demo", "--check-config", f"--web.config.file={web}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "TLS on" in ok.stdout and "basic auth for 1 user" in ok.stdout
    web.write_text(
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: tls.key\n  bogus: 1\n"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "exporter", "--demo", "--check-config", f"--web.config.file={web}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert f"invalid configuration: {web}: tls_server_config" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_tls_and_basic_auth_on_the_running_exporter(tmp_path: Path) -> None:
    web, ca = _web_config(tmp_path)
    running = start(tmp_path, "--demo", f"--web.config.file={web}")
    try:
        base = running.base.replace("http://", "https://")
        context = ssl.create_default_context()
        ca.configure_trust(context)

        def get(path: str, auth: str | None = None) -> tuple[int, dict[str, str]]:
            request = urllib.request.Request(base + path)
            if auth:
                request.add_header(
                    "Authorization", "Basic " + base64.b64encode(auth.encode()).decode()
                )
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    return response.status, dict(response.headers)
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers)

        assert get("/-/healthy")[0] == 200  # liveness probes need no password
        status, headers = get("/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert get("/metrics", "prometheus:wrong")[0] == 401
        assert get("/", "prometheus:scrape-pass")[0] == 200
        assert get("/metrics", "prometheus:scrape-pass")[0] == 200
    finally:
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=10)
    assert running.process.returncode == 0
    # `get` hangs up without reading the body, as a scraper that timed out does: the exporter
    # stops writing instead of logging asyncio's warning once per chunk.
    assert "socket.send() raised exception" not in running.log_path.read_text()


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    read_buffer = SSLProtocol.max_size
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    SSLProtocol.max_size = read_buffer


def test_the_exporter_runs_with_the_collector_and_tls_buffers_tuned(
    monkeypatch: pytest.MonkeyPatch, restore_gc: None
) -> None:
    """Rarer young collections and a frozen start-up heap (gc_tuning) and smaller TLS read
    buffers (tls_buffers), only when serving."""
    seen: list[tuple[tuple[int, int, int], int, int]] = []

    def fake_run(coroutine: Coroutine[object, object, object]) -> None:
        coroutine.close()
        seen.append((gc.get_threshold(), gc.get_freeze_count(), SSLProtocol.max_size))

    monkeypatch.setattr(cli.asyncio, "run", fake_run)
    monkeypatch.setattr(cli, "configure_logging", lambda *_: None)  # keep pytest's handlers
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    SSLProtocol.max_size = 256 * 1024  # Python 3.11's
    assert cli.main(["--demo", "--check-config"]) == 0
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
    assert SSLProtocol.max_size == 256 * 1024
    assert seen == []

    assert cli.main(["--demo", "--web.listen-address=127.0.0.1:0"]) == 0
    [(threshold, frozen, read_buffer)] = seen
    assert read_buffer == READ_BUFFER  # exporter.tls_buffers
    assert threshold == (YOUNG_THRESHOLD, 10, 10)
    assert frozen > 10_000  # the imported modules, at least
