"""Composition root: config -> store, services, listeners and workers in one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from agentpost.api.app import create_app
from agentpost.config import Config, split_hostport
from agentpost.inbound.checks import Directory, RateLimiter
from agentpost.inbound.receive import GroupCommitter, Receiver
from agentpost.net.tls import server_context, write_self_signed
from agentpost.notify.bus import EventBus
from agentpost.notify.webhooks import WebhookWorker
from agentpost.proto.mime import MimeLimits
from agentpost.service.context import Context, Sealer
from agentpost.smtpd.mx import MxHandler, MxServer
from agentpost.store.db import Database

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: this process shuts everything down in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:
        return None


def tls_paths(config: Config) -> tuple[Path, Path]:
    if config.mx.tls_cert and config.mx.tls_key:
        return Path(config.mx.tls_cert), Path(config.mx.tls_key)
    return config.data_path / "tls" / "cert.pem", config.data_path / "tls" / "key.pem"


def ensure_tls(config: Config) -> tuple[Path, Path]:
    cert, key = tls_paths(config)
    if not cert.exists() or not key.exists():
        if config.mx.tls_cert:
            raise FileNotFoundError(f"TLS certificate {cert} or key {key} not found")
        cert.parent.mkdir(parents=True, exist_ok=True)
        write_self_signed(cert, key, config.hostname)
    return cert, key


def build_context(config: Config, db: Database, directory: Directory | None = None) -> Context:
    return Context(
        db=db,
        sealer=Sealer(config.secret_key),
        bus=EventBus(),
        routing_changed=directory.forget if directory is not None else (lambda: None),
        hostname=config.hostname,
        public_url=config.public_url,
        mx_host=config.hostname,
    )


def mime_limits(config: Config) -> MimeLimits:
    p = config.parse
    return MimeLimits(
        max_size=config.mx.max_message_size,
        max_headers=p.max_headers,
        max_header_length=p.max_header_length,
        max_depth=p.max_depth,
        max_parts=p.max_parts,
        time_budget=p.time_budget,
    )


@dataclass
class Running:
    ctx: Context
    mx: MxServer
    http: _Uvicorn
    http_task: asyncio.Task[None]
    committer: GroupCommitter
    webhooks: WebhookWorker


async def start(config: Config) -> Running:
    db = Database(config.database_url)
    await db.migrate()
    directory = Directory(db)
    ctx = build_context(config, db, directory)
    committer = GroupCommitter(db, config.database.commit_batch, ctx.bus.published)
    committer.start()
    receiver = Receiver(db, config.hostname, mime_limits(config), committer)
    limiter = RateLimiter(config.mx.max_connections_per_ip, config.mx.max_messages_per_ip_per_minute)
    handler = MxHandler(directory, receiver, limiter, config.mx.max_recipients)
    cert, key = ensure_tls(config)
    mx_host, mx_port = split_hostport(config.mx.listen, 25)
    mx = MxServer(
        handler,
        mx_host,
        mx_port,
        config.hostname,
        config.mx.max_message_size,
        server_context(cert, key),
        config.mx.command_timeout,
    )
    await mx.start()
    http_host, http_port = split_hostport(config.http.listen, 8080)
    http = _Uvicorn(
        uvicorn.Config(
            create_app(ctx), host=http_host, port=http_port, log_level="warning", access_log=False, lifespan="off"
        )
    )
    http_task = asyncio.create_task(http.serve(), name="http")
    while not http.started and not http_task.done():  # noqa: ASYNC110 - uvicorn exposes only a flag
        await asyncio.sleep(0.02)
    if http_task.done():
        await mx.stop()
        await committer.stop()
        http_task.result()
        raise RuntimeError(f"HTTP listener on {config.http.listen} did not start")
    worker = WebhookWorker(db, ctx.bus, config.webhooks, ctx.sealer.unseal)
    worker.start()
    log.info(
        "agentpost serving: HTTP %s, MX %s:%s, database %s",
        config.http.listen,
        mx_host,
        mx.port,
        "sqlite" if db.is_sqlite else "postgresql",
    )
    return Running(ctx, mx, http, http_task, committer, worker)


async def stop(running: Running) -> None:
    # Stop taking new mail first, then let the committer finish what it acknowledged.
    await running.mx.stop()
    running.http.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(running.http_task, 10)
    await running.webhooks.stop()
    await running.committer.stop()
    await running.ctx.db.close()


async def run(config: Config, ready: asyncio.Event | None = None) -> None:
    running = await start(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    if ready is not None:
        ready.set()
    try:
        await stopping.wait()
    finally:
        log.info("shutting down")
        await stop(running)
