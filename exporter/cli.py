"""Command line: `intune-apple-token-exporter --config.file=config.yaml ...`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from . import __version__, gc_tuning, tls_buffers
from .config import ExporterConfig, load_config
from .config.durations import parse_duration
from .logs import configure_logging
from .reload import Reloader
from .server import DEFAULT_PORT, build_app, parse_listen_address, start_site
from .service import Exporter
from .sharding import Shard, ordinal_of
from .storage import DEFAULT_WRITE_INTERVAL, StateFile, check_directory
from .web import WebConfig, load_web_config
from .yaml_config import ConfigError

log = logging.getLogger("exporter")

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with Prometheus-style dotted flags."""
    parser = argparse.ArgumentParser(
        prog="intune-apple-token-exporter",
        description="Prometheus exporter for the Apple ADE tokens, VPP tokens and APNs "
        "certificate of Microsoft Intune tenants.",
    )
    parser.add_argument(
        "--config.file", dest="config_file", default="config.yaml", help="YAML config file."
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        help="Address to listen on (host:port; no host means every interface).",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        help="Exporter-toolkit web config (TLS, basic auth).",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="Only log messages of this level or above (default: info).",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="logfmt (key=value, as Prometheus logs) or json (one object per line).",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="Validate --config.file (and --web.config.file) and exit 0, or 2 when invalid.",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="Run against built-in simulated tenants; needs no config and no credentials.",
    )
    parser.add_argument(
        "--shard",
        type=int,
        default=0,
        help="This replica's shard, 0 to --total-shards - 1: it polls and exposes only the "
        "tenants whose tenant id hashes to it (kube-state-metrics' sharding).",
    )
    parser.add_argument(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=1,
        help="The number of shards (replicas) the tenants are spread over; 1 is no sharding.",
    )
    parser.add_argument(
        "--shard.from-pod-name",
        dest="shard_from_pod_name",
        action="store_true",
        help="Take --shard from the StatefulSet ordinal at the end of the pod name "
        "($POD_NAME, else the host name), e.g. exporter-2 is shard 2.",
    )
    parser.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="Enable POST /-/reload (as Prometheus's flag does); SIGHUP reloads either way.",
    )
    parser.add_argument(
        "--config.auto-reload-interval",
        dest="auto_reload_interval",
        default=None,
        help="Check --config.file's content at this interval (a duration) and reload when it "
        "changed; default: off.",
    )
    parser.add_argument(
        "--storage.path",
        dest="storage_path",
        default=None,
        help="A directory (existing, writable) to keep each tenant's last good records in "
        "across restarts; default: in memory only.",
    )
    parser.add_argument(
        "--storage.write-interval",
        dest="storage_write_interval",
        default="30s",
        help="How often at most the kept state is written after a poll changed it (a duration).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def storage_from_args(args: argparse.Namespace) -> tuple[StateFile | None, float]:
    """The state file and write interval the flags name; ValueError names the flag."""
    try:
        interval = parse_duration(args.storage_write_interval)
    except ValueError as exc:
        raise ValueError(f"--storage.write-interval: {exc}") from None
    if interval <= 0:
        raise ValueError("--storage.write-interval: must be more than 0s")
    if args.storage_path is None:
        return None, interval
    directory = Path(args.storage_path)
    problem = check_directory(directory)
    if problem is not None:
        raise ValueError(f"--storage.path: {problem}")
    return StateFile(directory), interval


def auto_reload_from_args(args: argparse.Namespace) -> float | None:
    """The auto-reload interval, or None (off); ValueError names the flag."""
    if args.auto_reload_interval is None:
        return None
    try:
        return parse_duration(args.auto_reload_interval)
    except ValueError as exc:
        raise ValueError(f"--config.auto-reload-interval: {exc}") from None


def shard_from_args(args: argparse.Namespace) -> Shard:
    """The shard the flags name; raises ValueError with a message that names the flag."""
    index = args.shard
    if args.shard_from_pod_name:
        pod = os.environ.get("POD_NAME") or socket.gethostname()
        try:
            index = ordinal_of(pod)
        except ValueError as exc:
            raise ValueError(f"--shard.from-pod-name: {exc}") from None
    return Shard(index, args.total_shards)


async def _run(
    config: ExporterConfig,
    web_config: WebConfig | None,
    host: str | None,
    port: int,
    shard: Shard,
    *,
    ca_data: str | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    state_file: StateFile | None = None,
    write_interval: float = DEFAULT_WRITE_INTERVAL,
    config_file: str | None = None,
    lifecycle: bool = False,
    auto_reload: float | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        # A second signal gets the default behaviour: the impatient operator wins.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    exporter = Exporter(
        config,
        shard=shard,
        ca_data=ca_data,
        state_file=state_file,
        write_interval=write_interval,
    )
    reloader = Reloader(config_file, exporter) if config_file is not None else None

    async def reload() -> str | None:
        if reloader is None:
            return "--demo has no config file to reload"
        return await reloader.reload()

    background: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        log.info("SIGHUP: reloading the configuration")
        task: asyncio.Task[object] = asyncio.create_task(reload())
        background.add(task)
        task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    middleware = web_config.middleware() if web_config else None
    app = build_app(
        exporter.store,
        exporter.lines,
        exporter_samples=exporter.exporter_samples,
        middlewares=[middleware] if middleware else [],
        health_problem=exporter.health_problem,
        reload=reload,
        lifecycle=lifecycle,
        discovery_summary=exporter.discovery_summary,
    )
    ssl_context = web_config.ssl_context() if web_config else None
    runner, bound = await start_site(app, host, port, ssl_context)
    log.info(
        "listening",
        extra={
            "address": f"{host or ''}:{bound}",
            "tls": ssl_context is not None,
            "tenants": len(exporter.tenants),
            "version": __version__,
        },
    )
    if shard.total > 1:
        log.info(
            "sharded: polling only this shard's tenants"
            if exporter.tenants
            else "sharded: this shard owns no tenant; it is ready and idle",
            extra={
                "shard": shard.index,
                "total_shards": shard.total,
                "tenants": len(exporter.tenants),
                "configured_tenants": len(config.tenants),
            },
        )
    watcher: asyncio.Task[None] | None = None
    try:
        await exporter.start()
        watcher = (
            asyncio.create_task(reloader.watch(auto_reload), name="config watcher")
            if reloader is not None and auto_reload is not None
            else None
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        if watcher is not None:
            watcher.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
        await exporter.close()
        await runner.cleanup()
        if on_stop is not None:
            await on_stop()


async def _run_demo(
    web_config: WebConfig | None,
    host: str | None,
    port: int,
    shard: Shard,
    state_file: StateFile | None,
    write_interval: float,
) -> None:
    # Only the demo loads the simulator (and its throw-away CA).
    from .demo import demo_config, start_demo_cloud

    cloud = await start_demo_cloud()
    config = demo_config(cloud.base_url)
    log.info(
        "demo mode: simulated Entra ID and Graph",
        extra={"simulator": cloud.base_url, "tenants": len(config.tenants)},
    )
    await _run(
        config,
        web_config,
        host,
        port,
        shard,
        ca_data=cloud.ca_pem,
        on_stop=cloud.stop,
        state_file=state_file,
        write_interval=write_interval,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        host, port = parse_listen_address(args.listen_address)
    except ValueError as exc:
        print(f"--web.listen-address: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        shard = shard_from_args(args)
        state_file, write_interval = storage_from_args(args)
        auto_reload = auto_reload_from_args(args)
    except ValueError as exc:
        print(f"invalid flags: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
        config = None if args.demo else load_config(args.config_file)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        count = 0 if config is None else len(config.tenants)
        checked = (
            "demo"
            if config is None
            else f"{args.config_file}: {count} tenant{'' if count == 1 else 's'}"
        )
        if config is not None and config.gdap is not None:
            checked += " and discovery.gdap (GDAP is not contacted by --check-config)"
        if web_config is not None:
            checked += f"; {args.web_config_file}: {web_config.summary()}"
        print(f"configuration is valid ({checked})")
        return 0
    gc_tuning.tune()
    tls_buffers.limit()
    with contextlib.suppress(KeyboardInterrupt):
        if config is None:
            asyncio.run(_run_demo(web_config, host, port, shard, state_file, write_interval))
        else:
            asyncio.run(
                _run(
                    config,
                    web_config,
                    host,
                    port,
                    shard,
                    state_file=state_file,
                    write_interval=write_interval,
                    config_file=args.config_file,
                    lifecycle=args.enable_lifecycle,
                    auto_reload=auto_reload,
                )
            )
    return 0


def run() -> None:
    """The console script and `python -m exporter`."""
    code = main()
    # Token requests abandoned at shutdown still run in MSAL's threads (until their timeout);
    # the interpreter would wait for them at exit, so leave without waiting.
    if any(t.name.startswith("msal") and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


__all__ = ["build_parser", "main", "run"]
