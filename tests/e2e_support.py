"""Helpers for the end-to-end suites: processes with logs, deadline polling, config derivation,
and the webhook and SMTP receivers that stand in for a pager.

Everything listens on loopback only. Nothing here sleeps to synchronise: waits poll a condition
until a deadline and fail with the logs of every process involved.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# How often a wait re-checks its condition. Not a synchronisation delay: every wait ends as soon as
# its condition holds, and fails at its deadline.
POLL_STEP = 0.1
LOG_TAIL_CHARS = 20_000


def find_binary(*names: str) -> str | None:
    """The first of `names` on PATH (Debian installs Alertmanager as prometheus-alertmanager)."""
    for name in names:
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, for servers that cannot bind port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A child process whose stdout and stderr go to one log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log_file = log_path.open("w")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def report(self) -> str:
        """The command line, exit status and (the tail of) the log, for a failure message."""
        status = "running" if self.alive() else f"exited with {self.popen.returncode}"
        text = self.log()
        if len(text) > LOG_TAIL_CHARS:
            text = (
                f"[... {len(text) - LOG_TAIL_CHARS} characters cut ...]\n" + text[-LOG_TAIL_CHARS:]
            )
        return f"$ {' '.join(self.argv)}\n[{status}]\n{text}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self._log_file.close()


def reports(processes: Iterable[Process]) -> str:
    return "\n".join(f"===== {p.name} =====\n{p.report()}" for p in processes)


def wait_for(
    what: str,
    probe: Callable[[], T],
    timeout: float,
    processes: Sequence[Process] = (),
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something truthy, and return that.

    Fails when `timeout` seconds pass or one of `processes` exits; the message holds the last
    result or error, `describe()` if given, and every process's log. Connection errors count as
    "not yet", since servers refuse connections until they listen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        for process in processes:
            if not process.alive():
                raise AssertionError(
                    f"{process.name} exited while waiting for {what}\n{reports(processes)}"
                )
        try:
            result = probe()
        except (OSError, ValueError, KeyError) as error:  # URLError is an OSError
            last = error
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            details = describe() if describe else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last result: {last!r}\n"
                f"{details}\n{reports(processes)}"
            )
        time.sleep(POLL_STEP)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET `url` (loopback only); the status and the body, also for 4xx/5xx answers."""
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def get_json(url: str, params: Mapping[str, str | float] | None = None) -> Any:
    """GET a JSON API; raises AssertionError with the body on a non-200 answer."""
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, body = http_get(url)
    if status != 200:
        raise AssertionError(f"GET {url} answered {status}: {body}")
    return json.loads(body)


# --- the exporter ----------------------------------------------------------------------------

_LISTENING_RE = re.compile(r'listening"?,? "?address"?[=:] ?"?127\.0\.0\.1:(\d+)')


@dataclass
class Exporter:
    process: Process
    port: int
    started_at: float  # time.monotonic() just before the process was started

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_demo_exporter(log_dir: Path, timeout: float = 30.0) -> Exporter:
    """Start `python -m exporter --demo` on a free loopback port and wait until it is ready."""
    started_at = time.monotonic()
    process = Process(
        "exporter",
        [sys.executable, "-m", "exporter", "--demo", "--web.listen-address=127.0.0.1:0"],
        log_dir / "exporter.log",
        cwd=REPO_ROOT,
    )
    try:
        match = wait_for(
            "the exporter's `msg=listening` log line",
            lambda: _LISTENING_RE.search(process.log()),
            timeout,
            [process],
        )
        assert match is not None  # wait_for returns only a truthy result
        exporter = Exporter(process, int(match.group(1)), started_at)
        # /-/ready turns 200 once every tenant has been polled once (tailspin's poll fails fast).
        wait_for(
            "the exporter's /-/ready",
            lambda: http_get(exporter.base_url + "/-/ready")[0] == 200,
            timeout,
            [process],
        )
    except BaseException:
        process.stop()
        raise
    return exporter


# --- deriving the test copies of the bundled configs -------------------------------------------

_ALERT_LINE_RE = re.compile(r"^\s*-\s*alert:\s*(\S+)\s*$")
_FOR_LINE_RE = re.compile(r"^(\s*for:\s*)(\S+)(\s*)$")


def derive_rules(original: str, for_values: Mapping[str, str], default_for: str) -> str:
    """The rule file with each alert's `for:` value replaced, and every other byte unchanged.

    The edit is textual, so that comments, layout and expressions stay exactly as shipped, and the
    test can show the copy differs only in `for:` lines. `for_values` maps alert names to the
    value they get instead of `default_for`.
    """
    out: list[str] = []
    alert: str | None = None
    for line in original.splitlines(keepends=True):
        if match := _ALERT_LINE_RE.match(line):
            alert = match.group(1)
        elif (match := _FOR_LINE_RE.match(line.rstrip("\n"))) and alert is not None:
            ending = "\n" if line.endswith("\n") else ""
            line = f"{match.group(1)}{for_values.get(alert, default_for)}{match.group(3)}{ending}"
        out.append(line)
    return "".join(out)


def changed_lines(original: str, derived: str) -> list[tuple[str, str]]:
    """(original, derived) pairs of the lines that differ; both texts must have as many lines."""
    a, b = original.splitlines(), derived.splitlines()
    assert len(a) == len(b), "the derived copy adds or removes lines"
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def structural_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths (like `route.routes[0].group_wait`) where two parsed YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                diffs.append(sub)
            else:
                diffs += structural_differences(a[key], b[key], sub)
        return diffs
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        diffs = []
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            diffs += structural_differences(x, y, f"{path}[{index}]")
        return diffs
    return [] if a == b else [path]


@dataclass(frozen=True)
class AlertmanagerOverrides:
    """What the test changes in the bundled Alertmanager example, and nothing more."""

    webhook_url: str
    smtp_smarthost: str
    group_wait: str
    group_interval: str


_AM_SUBSTITUTIONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The one webhook address line (a YAML anchor the receivers alias) or, should the example
    # ever spell it out per receiver, every such line.
    ("webhook_url", re.compile(r"^(\s*-?\s*url:\s*(?:&\w+\s+)?)(https?://\S+)(.*)$", re.M)),
    ("smtp_smarthost", re.compile(r"^(\s*smtp_smarthost:\s*)(\S+)(.*)$", re.M)),
    ("smtp_require_tls", re.compile(r"^(\s*smtp_require_tls:\s*)(\S+)(.*)$", re.M)),
    ("group_wait", re.compile(r"^(\s*group_wait:\s*)(\S+)(.*)$", re.M)),
    ("group_interval", re.compile(r"^(\s*group_interval:\s*)(\S+)(.*)$", re.M)),
)

# Where the derived Alertmanager config may differ from the example (regexes on the paths that
# structural_differences() reports).
AM_ALLOWED_DIFFERENCES = (
    r"global\.smtp_smarthost",
    r"global\.smtp_require_tls",
    r"route(\.routes\[\d+\])*\.group_(wait|interval)",
    r"receivers\[\d+\]\.webhook_configs\[\d+\]\.url",
)


def derive_alertmanager_config(original: str, overrides: AlertmanagerOverrides) -> str:
    """The example config pointed at the test's receivers, with short grouping delays.

    - every webhook `url:` line -> the test's webhook receiver;
    - `smtp_smarthost` -> the test's SMTP sink on loopback, and `smtp_require_tls` -> false, since
      the sink speaks plain SMTP (the example's smtp.example.com is outside loopback);
    - every `group_wait` / `group_interval` -> short values, so that an alert that joins a group
      after its first notification is sent within seconds rather than after 5 minutes.
    """
    values = {
        "webhook_url": overrides.webhook_url,
        "smtp_smarthost": overrides.smtp_smarthost,
        "smtp_require_tls": "false",
        "group_wait": overrides.group_wait,
        "group_interval": overrides.group_interval,
    }
    text = original
    for key, pattern in _AM_SUBSTITUTIONS:
        value = values[key]

        def replace(match: re.Match[str], value: str = value) -> str:
            return f"{match.group(1)}{value}{match.group(3)}"

        text, count = pattern.subn(replace, text)
        if count == 0 and key in ("webhook_url", "smtp_smarthost"):
            raise AssertionError(f"alertmanager.example.yaml: no {key} line to point at the test")
    return text


# --- the pager: webhook receiver and SMTP sink ---------------------------------------------


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: email.message.EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def body(self, subtype: str) -> str:
        """The text/<subtype> part, decoded."""
        part = self.message.get_body(preferencelist=(subtype,))
        assert part is not None, f"no text/{subtype} part in {self.subject!r}"
        return str(part.get_content())


@dataclass
class Pager:
    """Records what Alertmanager sends: webhook payloads (JSON) and e-mails (plain SMTP)."""

    webhook_port: int = 0
    smtp_port: int = 0
    payloads: list[dict[str, Any]] = field(default_factory=list)
    mails: list[Mail] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _smtp: asyncio.Server | None = None

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/alerts"

    def snapshot(self) -> tuple[list[dict[str, Any]], list[Mail]]:
        with self._lock:
            return list(self.payloads), list(self.mails)

    def start(self) -> None:
        """Serve both on free loopback ports from an event loop in a daemon thread."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="e2e-pager", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.webhook_port = self._runner.addresses[0][1]
        self._smtp = await asyncio.start_server(self._smtp_session, "127.0.0.1", 0)
        self.smtp_port = self._smtp.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._smtp is not None:
            self._smtp.close()
            await self._smtp.wait_closed()

    async def _webhook(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError as error:
            with self._lock:
                self.errors.append(f"webhook: not JSON: {error}")
            return web.Response(status=400)
        with self._lock:
            self.payloads.append(payload)
        return web.Response(text="ok")

    async def _smtp_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Just enough SMTP (RFC 5321) for Go's net/smtp client: no TLS, no AUTH."""

        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        sender, recipients = "", list[str]()
        try:
            await reply("220 127.0.0.1 e2e sink")
            while raw := await reader.readline():
                command = raw.decode(errors="replace").rstrip("\r\n")
                verb = command.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    await reply("250-127.0.0.1\r\n250 8BITMIME" if verb == "EHLO" else "250 ok")
                elif verb == "MAIL":
                    sender, recipients = command.partition(":")[2].strip(), []
                    await reply("250 ok")
                elif verb == "RCPT":
                    recipients.append(command.partition(":")[2].strip())
                    await reply("250 ok")
                elif verb == "DATA":
                    await reply("354 end with <CRLF>.<CRLF>")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    # Undo dot-stuffing, drop the terminator.
                    lines = data[: -len(b"\r\n.\r\n")].split(b"\r\n")
                    body = b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines)
                    message = email.message_from_bytes(body, policy=email.policy.default)
                    with self._lock:
                        self.mails.append(Mail(sender, recipients, message))
                    await reply("250 queued")
                elif verb == "QUIT":
                    await reply("221 bye")
                    break
                elif verb in ("RSET", "NOOP"):
                    await reply("250 ok")
                else:
                    await reply("502 not implemented")
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            with self._lock:
                self.errors.append(f"smtp: {error!r}")
        finally:
            writer.close()


# --- Prometheus and Alertmanager ---------------------------------------------------------------

EXPORTER_JOB = "intune-apple-token-exporter"  # the job label value README documents


class PrometheusAPI:
    """The few HTTP API calls the suite needs; each raises on anything but status success."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def _data(self, path: str, params: Mapping[str, str | float] | None = None) -> Any:
        answer = get_json(self.base_url + path, params)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._data("/api/v1/query", {"query": expr})
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}, not a vector"
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        data = self._data(
            "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step}
        )
        result: list[Any] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._data("/api/v1/targets", {"state": "active"})[
            "activeTargets"
        ]
        return active

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts, pending and firing."""
        alerts: list[dict[str, Any]] = self._data("/api/v1/alerts")["alerts"]
        return alerts

    def alert_rules(self) -> list[dict[str, Any]]:
        groups = self._data("/api/v1/rules", {"type": "alert"})["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def alertmanagers(self) -> list[str]:
        return [am["url"] for am in self._data("/api/v1/alertmanagers")["activeAlertmanagers"]]


def prometheus_config(exporter_port: int, alertmanager_port: int, rule_file: Path) -> str:
    """A prometheus.yml that scrapes the exporter and evaluates the rules every second."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": EXPORTER_JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def start_server(
    name: str, argv_for_port: Callable[[int], Sequence[str]], log_dir: Path, timeout: float = 30.0
) -> tuple[Process, int]:
    """Start a Prometheus-style server on a free port and wait until its /-/ready answers 200.

    free_port() cannot reserve the port, so another process may take it first: then the server
    exits with "address already in use" and is started again on another port (three tries).
    """
    for attempt in range(3):
        port = free_port()
        process = Process(name, argv_for_port(port), log_dir / f"{name}.log", cwd=log_dir)

        def ready(url: str = f"http://127.0.0.1:{port}/-/ready") -> bool:
            return http_get(url)[0] == 200

        try:
            wait_for(f"{name}'s /-/ready", ready, timeout, [process])
        except AssertionError:
            process.stop()
            if attempt < 2 and "address already in use" in process.log():
                continue
            raise
        except BaseException:
            process.stop()
            raise
        return process, port
    raise AssertionError("unreachable")
