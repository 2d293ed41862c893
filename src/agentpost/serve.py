"""Composition root: config -> store, services, listeners and workers in one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from agentpost.api import handover
from agentpost.api.app import create_app
from agentpost.api.http_protocol import HttpProtocol
from agentpost.api.send_route import SendRoute
from agentpost.config import Config, ConfigError, split_hostport
from agentpost.inbound.authenticate import Authenticator
from agentpost.inbound.checks import Directory, RateLimiter, Route
from agentpost.inbound.receive import Receiver
from agentpost.model import Envelope
from agentpost.net.dns import CachingResolver, DnspythonResolver
from agentpost.net.smtpclient import load_trust_store
from agentpost.net.tls import server_context, write_self_signed
from agentpost.notify.bus import EventBus
from agentpost.notify.wakeups import LogWatch, link_for
from agentpost.notify.webhooks import WebhookWorker
from agentpost.outbound.bounces import ReturnedMail
from agentpost.outbound.deliver import DeliverySettings, Smarthost
from agentpost.outbound.outcomes import Policy
from agentpost.outbound.worker import OutboundWorker, WorkerSettings
from agentpost.proto.mime import MimeLimits
from agentpost.service import domains as domain_service
from agentpost.service import drafts as draft_service
from agentpost.service import sending as sending_service
from agentpost.service.context import Context, Sealer
from agentpost.service.dnscheck import DnsSetup
from agentpost.service.unsubscribe import address_tokens
from agentpost.smtpd.mx import MxHandler, MxServer
from agentpost.store import messages as message_store
from agentpost.store import queue as queue_store
from agentpost.store import write_process
from agentpost.store.db import Database
from agentpost.store.group_commit import GroupCommitter
from agentpost.store.messages import NewMessage, Saved
from agentpost.store.queue import SavedSent, SentMessage, Settlement

log = logging.getLogger(__name__)

# Allocations between young-generation collections (CPython's default is 700).
GC_THRESHOLD = int(os.environ.get("AGENTPOST_GC_THRESHOLD", "20000"))


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: this process shuts everything down in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:
        return None


def tls_paths(config: Config) -> tuple[Path, Path]:
    if bool(config.mx.tls_cert) != bool(config.mx.tls_key):
        raise ConfigError("set both mx.tls_cert and mx.tls_key, or neither (then a self-signed one is generated)")
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


class DirectoryEpoch:
    """A file every process on this host watches: replaced whenever an API key stops being valid
    or an inbox or domain changes, so cached key records (service/auth.py) and sending facts
    (service/sending.py) are dropped in every process at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def current(self) -> tuple[int, int]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0)
        # A new inode per change: timestamps can be too coarse to tell two changes apart.
        return (info.st_ino, info.st_mtime_ns)

    def changed(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(str(time.time_ns()))
        os.replace(tmp, self.path)


def build_context(config: Config, db: Database, directory: Directory | None = None) -> Context:
    epoch = DirectoryEpoch(config.data_path / "directory.epoch")

    def routing_changed() -> None:
        if directory is not None:
            directory.forget()
        epoch.changed()

    return Context(
        db=db,
        sealer=Sealer(config.secret_key),
        bus=EventBus(),
        routing_changed=routing_changed,
        hostname=config.hostname,
        public_url=config.public_url,
        list_unsubscribe=config.outbound.list_unsubscribe,  # List-Unsubscribe (service/unsubscribe.py)
        directory_epoch=epoch.current,
        directory_changed=epoch.changed,
        resolver=DnspythonResolver(config.dns.servers, timeout=config.dns.timeout, lifetime=config.dns.timeout * 2),
        dns_setup=DnsSetup(
            hostname=config.hostname,
            source=config.outbound.source,
            source_by_domain=config.outbound.source_by_domain,
            spf_all=config.domains.spf_all,
            mta_sts_mode=config.domains.mta_sts_mode,
            bimi_logo=config.domains.bimi_logo,
        ),
        dkim_rotation_interval=config.domains.dkim_rotation_interval,
        dkim_grace_period=config.domains.dkim_grace_period,
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
    committer: GroupCommitter[NewMessage, Saved]
    webhooks: WebhookWorker | None  # the parent process only
    mx_workers: list[subprocess.Popen[bytes]]
    outbound: OutboundWorker
    sent: GroupCommitter[SentMessage | Settlement, SavedSent | None]
    # The periodic DNS re-check of hosted domains and their DKIM rotations (service/domains.py),
    # in the parent process only.
    rechecks: asyncio.Task[None] | None = None
    # Scheduled drafts (service/drafts.py), in the parent process only; drafts are leased, so
    # several serve instances sharing PostgreSQL send each one once.
    scheduler: asyncio.Task[None] | None = None
    # The SQLite write process (store/write_process.py), in the parent process only.
    writer: subprocess.Popen[bytes] | None = None
    # HTTP connections spread over the processes (api/handover.py): the parent's side or a worker's.
    handover: handover.Handover | handover.Adoption | None = None


def mx_processes(config: Config) -> int:
    """Processes serving the MX and HTTP ports together (SO_REUSEPORT), each with its own
    event loop: Python runs one core per process."""
    _, port = split_hostport(config.mx.listen, 25)
    _, http_port = split_hostport(config.http.listen, 8080)
    if port == 0 or http_port == 0:
        return 1  # an ephemeral port cannot be shared
    wanted = config.mx.processes or min(os.cpu_count() or 1, 4)
    return max(1, wanted)


async def start_mx(
    config: Config, db: Database, directory: Directory, on_commit: Callable[[], None]
) -> tuple[MxServer, GroupCommitter[NewMessage, Saved], Receiver]:
    """The MX listener with its receive pipeline and group committer."""
    committer: GroupCommitter[NewMessage, Saved] = GroupCommitter(
        db, message_store.save_batch, config.database.commit_batch, on_commit, config.database.commit_linger, "receive"
    )
    committer.start()
    # Mail to VERP / unsubscribe addresses goes to outbound.bounces (bounces.py).
    receiver = Receiver(
        db, config.hostname, mime_limits(config), committer, ReturnedMail(db, on_commit), authenticator(config)
    )
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
        reuse_port=mx_processes(config) > 1,
    )
    try:
        await mx.start()
    except BaseException:
        await committer.stop()
        raise
    return mx, committer, receiver


def authenticator(config: Config) -> Authenticator | None:
    """SPF / DKIM / DMARC for the MX ([mx] authenticate), on a caching resolver of its own: the
    sender is waiting for the 250, so one DNS timeout, not dnspython's retries up to twice it."""
    if not config.mx.authenticate:
        return None
    timeout = config.dns.timeout
    resolver = CachingResolver(DnspythonResolver(config.dns.servers, timeout=timeout, lifetime=timeout))
    return Authenticator(resolver, config.hostname, config.mx.trusted_networks, config.mx.arc_trusted_sealers)


def local_delivery(
    config: Config, directory: Directory, receiver: Receiver
) -> Callable[[str, list[str], bytes], Awaitable[None]]:
    """Mail from one hosted inbox to another goes straight into the inbound pipeline."""

    async def deliver(mail_from: str, rcpt_to: list[str], raw: bytes) -> None:
        routes = [r for r in [await directory.route(a) for a in rcpt_to] if isinstance(r, Route)]
        if routes:
            envelope = Envelope(mail_from, rcpt_to, helo=config.hostname, client_ip="127.0.0.1")
            # Our own outbound: not authenticated again (auth records it as internal).
            await receiver.receive(envelope, raw, routes, internal=True)

    return deliver


@contextlib.asynccontextmanager
async def standalone_context(config: Config) -> AsyncIterator[Context]:
    """A Context for a process that runs no listeners or workers (`agentpost mcp`): the service
    layer on the configured database, with mail to hosted inboxes delivered through this process's
    own inbound pipeline. Mail to remote recipients is queued; a running `serve` (any process, any
    node) delivers it, since its outbound worker polls the queue."""
    db = Database(config.database_url)
    try:
        await db.migrate()
        directory = Directory(db, tokens=address_tokens(Sealer(config.secret_key)))
        ctx = build_context(config, db, directory)
        ctx.outbound_lifetime = config.outbound.lifetime
        committer: GroupCommitter[NewMessage, Saved] = GroupCommitter(
            db, message_store.save_batch, config.database.commit_batch, ctx.bus.published, 0.0, "receive"
        )
        committer.start()
        try:
            receiver = Receiver(
                db,
                config.hostname,
                mime_limits(config),
                committer,
                ReturnedMail(db, ctx.bus.published),
                authenticator(config),
            )
            ctx.deliver_local = local_delivery(config, directory, receiver)
            yield ctx
        finally:
            await committer.stop()
    finally:
        await db.close()


def spawn_mx_workers(
    count: int,
    writer_ends: list[socket.socket] | None = None,
    handover_ends: list[socket.socket] | None = None,
    timeout: float = 60.0,
) -> list[subprocess.Popen[bytes]]:
    """Extra processes (they read the same config and environment), started before the parent
    listens and waited for. They share the MX port (SO_REUSEPORT) and serve the HTTP connections
    the parent hands them (api/handover.py); until a worker is ready it gets none.
    ``writer_ends``: one socket to the write process per worker; ``handover_ends``: one socket
    from the parent per worker (both handed over, closed here)."""
    workers: list[subprocess.Popen[bytes]] = []
    ready: list[int] = []
    for n in range(count):
        read_end, write_end = os.pipe()
        command = [
            sys.executable, "-m", "agentpost", "mx-worker",
            "--parent-pid", str(os.getpid()), "--ready-fd", str(write_end),
        ]  # fmt: skip
        fds = [write_end]
        handed = [
            (flag, ends[n]) for flag, ends in (("--writer-fd", writer_ends), ("--handover-fd", handover_ends)) if ends
        ]
        for flag, end in handed:
            command += [flag, str(end.fileno())]
            fds.append(end.fileno())
        try:
            workers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=fds))
        finally:
            os.close(write_end)
            for _, end in handed:
                end.close()
        ready.append(read_end)
    deadline = time.monotonic() + timeout
    for proc, read_end in zip(workers, ready, strict=True):
        try:
            readable, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            # A byte: listening. EOF: the child died first (its own log says why).
            if not readable or not os.read(read_end, 1):
                log.warning("worker process %d did not start; serving without it", proc.pid)
        finally:
            os.close(read_end)
    return workers


def freeze_startup_heap() -> None:
    """Move everything built at startup (modules, routes, compiled statements, the schema) out of
    the collector's sight, and collect the young generation less often.

    A full collection walks every tracked object: with the startup heap frozen it walks only what
    requests left behind, which turned 100-300 ms pauses (the send p99) into a few ms. A larger
    first threshold lets most per-request objects die by reference count before a collection ever
    visits them (CPython's default of 700 allocations is tuned for much smaller programs).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def signal_ready(ready_fd: int | None) -> None:
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"1")
            os.close(ready_fd)


def stop_mx_workers(workers: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in workers:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def die_with_parent(parent_pid: int | None) -> None:
    """Linux: have the kernel send SIGTERM when the parent dies (even by SIGKILL), so no
    orphaned MX worker keeps accepting mail for a server that is gone."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        log.warning("cannot tie the MX worker to its parent process (no prctl)")
    # The parent may have died before prctl took effect (a container's PID 1 may be the parent,
    # so compare with the pid it handed over, not with 1).
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


async def run_mx_worker(
    config: Config,
    parent_pid: int | None = None,
    ready_fd: int | None = None,
    writer_fd: int | None = None,
    handover_fd: int | None = None,
) -> None:
    """`agentpost mx-worker`: one more process on the MX port and for HTTP connections, with its
    own outbound worker; the parent `serve` also runs migrations and the webhook worker."""
    die_with_parent(parent_pid)
    running = await start(config, child=True, writer_fd=writer_fd, handover_fd=handover_fd)
    freeze_startup_heap()
    signal_ready(ready_fd)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await stop(running)


def worker_settings(config: Config) -> WorkerSettings:
    out = config.outbound
    relay = None
    if out.smarthost:
        host, port = split_hostport(out.smarthost, 465 if out.smarthost_tls == "implicit" else 587)
        credentials = (out.smarthost_username, out.smarthost_password) if out.smarthost_username else None
        relay = Smarthost(host, port, out.smarthost_tls, credentials)
    return WorkerSettings(
        delivery=DeliverySettings(
            helo=config.hostname,
            port=out.port,
            source_address=out.source or None,
            timeout=out.timeout,
            tls=out.tls,
            smarthost=relay,
            mta_sts=out.mta_sts,
            mta_sts_ca_file=out.mta_sts_ca_file or None,
            mta_sts_port=out.mta_sts_port,
        ),
        policy=Policy(tuple(out.retry_schedule) or (60.0,), tuple(out.delay_notices)),
        concurrency=max(1, out.concurrency),
        per_host=max(1, out.per_host),
        lease=out.lease,
        reporting_mta=config.hostname,
        sources={domain.lower(): ip for domain, ip in out.source_by_domain.items()},
    )


async def start(
    config: Config, *, child: bool = False, writer_fd: int | None = None, handover_fd: int | None = None
) -> Running:
    """Everything `serve` runs; a ``child`` (an extra process on the same ports) skips
    migrations, spawns nothing and leaves webhooks to the parent."""
    db = Database(config.database_url)
    processes = mx_processes(config)
    workers: list[subprocess.Popen[bytes]] = []
    writer: subprocess.Popen[bytes] | None = None
    spread: handover.Handover | handover.Adoption | None = None
    loop = asyncio.get_running_loop()
    if not child:
        await db.migrate()
        worker_ends: list[socket.socket] = []
        if db.file_path is not None and config.database.write_process:
            # SQLite: one process runs every process's write transactions (store/write_process.py).
            writer, ends = await loop.run_in_executor(None, write_process.spawn, config.database_url, processes)
            await db.attach_writer(write_process.WriteChannel(ends[0]))
            worker_ends = ends[1:]
        parent_ends, handover_ends = handover.channels(processes - 1)
        workers = await loop.run_in_executor(None, spawn_mx_workers, processes - 1, worker_ends, handover_ends)
        if workers:
            spread = handover.Handover(parent_ends)
        else:
            for end in parent_ends:
                end.close()
    else:
        if writer_fd is not None:
            await db.attach_writer(write_process.WriteChannel(socket.socket(fileno=writer_fd)))
        if handover_fd is not None:
            spread = handover.Adoption(socket.socket(fileno=handover_fd))
    directory = Directory(db, tokens=address_tokens(Sealer(config.secret_key)))  # VERP / unsubscribe RCPTs
    ctx = build_context(config, db, directory)
    # Commits in the other processes on this database wake this one's feeds and WebSockets.
    await ctx.bus.connect(link_for(db), LogWatch(db, ctx.bus.woken))
    # Sent copies (durable) and this process's delivery outcomes share commits: one SQLite writer
    # at a time, so fewer, larger transactions (queue.write_outbound).
    sent_committer: GroupCommitter[SentMessage | Settlement, SavedSent | None] = GroupCommitter(
        db, queue_store.write_outbound, config.database.commit_batch, ctx.bus.published, 0.0, "outbound-writes",
        durable=queue_store.needs_fsync,
    )  # fmt: skip
    sent_committer.start()

    async def commit_sent(batch: list[SentMessage]) -> list[SavedSent]:
        items: list[SentMessage | Settlement] = [*batch]
        return [saved for saved in await sent_committer.commit(items) if saved is not None]

    async def commit_results(batch: list[Settlement]) -> object:
        items: list[SentMessage | Settlement] = [*batch]
        return await sent_committer.commit(items)

    ctx.commit_sent = commit_sent
    ctx.outbound_lifetime = config.outbound.lifetime
    # What is slow to build (the webhook client imports httpx: ~0.25 s of a blocked event loop;
    # the CA store; database connections; DKIM signers) is built before the MX and HTTP ports
    # open: mail or a request arriving once they are open must not wait behind it.
    worker = None
    if not child:
        worker = WebhookWorker(db, ctx.bus, config.webhooks, ctx.sealer.unseal)
    load_trust_store()
    await db.warm()
    await sending_service.prime(ctx)
    mx, committer, receiver = await start_mx(config, db, directory, ctx.bus.published)
    ctx.deliver_local = local_delivery(config, directory, receiver)
    http_host, http_port = split_hostport(config.http.listen, 8080)
    http = _Uvicorn(
        uvicorn.Config(
            SendRoute(create_app(ctx), ctx),  # the send call skips FastAPI's per-request cost
            host=http_host,
            port=http_port,
            log_level="warning",
            access_log=False,
            # On: the /mcp endpoint's session manager lives in the app's lifespan (api/app.py).
            lifespan="on",
            # No X-Forwarded-* rewriting: agentpost does not assume a proxy in front of it.
            proxy_headers=False,
            # A response's head and body in one write; connections counted for the spread.
            http=HttpProtocol if spread is None else HttpProtocol.counted(spread),
        )
    )
    # The parent alone listens for HTTP (it hands connections to the workers); a worker listens
    # for none of its own.
    if isinstance(spread, handover.Handover):
        spread.start()
    http_task = asyncio.create_task(http.serve(sockets=[] if child else None), name="http")
    while not http.started and not http_task.done():  # noqa: ASYNC110 - uvicorn exposes only a flag
        await asyncio.sleep(0.02)
    if http_task.done():
        stop_mx_workers(workers)
        await mx.stop()
        await committer.stop()
        await sent_committer.stop()
        if worker is not None:
            await worker.stop()
        await ctx.bus.close()
        http_task.result()
        raise RuntimeError(f"HTTP listener on {config.http.listen} did not start")
    if isinstance(spread, handover.Adoption):
        spread.start(lambda: http.config.http_protocol_class(  # type: ignore[call-arg]
            config=http.config, server_state=http.server_state, app_state=http.lifespan.state
        ))  # fmt: skip
    if worker is not None:
        worker.start()
    outbound = OutboundWorker(
        db,
        ctx.bus,
        DnspythonResolver(config.dns.servers, timeout=config.dns.timeout, lifetime=config.dns.timeout * 2),
        worker_settings(config),
        ctx.deliver_local,
        commit_results,
    )
    outbound.start()
    ctx.outbound = outbound
    log.info(
        "agentpost %s: HTTP %s, MX %s:%s (%d processes), database %s, event loop %s",
        "worker process serving" if child else "serving",
        config.http.listen,
        mx.host,
        mx.port,
        processes,
        "sqlite" if db.is_sqlite else "postgresql",
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    rechecks = None
    if not child:  # DNS re-checks (unless recheck_interval is 0) and DKIM rotation steps
        rechecks = asyncio.create_task(domain_service.run_rechecks(ctx, config.domains.recheck_interval))
    scheduler = None if child else asyncio.create_task(draft_service.run_scheduled(ctx), name="drafts")
    return Running(
        ctx, mx, http, http_task, committer, worker, workers, outbound, sent_committer, rechecks, scheduler, writer,
        spread,
    )  # fmt: skip


async def stop(running: Running) -> None:
    if running.handover is not None:  # workers stop first: hand them nothing more
        running.handover.close()
    # Stop taking new mail first, then let the committer finish what it acknowledged.
    await asyncio.get_running_loop().run_in_executor(None, stop_mx_workers, running.mx_workers)
    await running.mx.stop()
    running.http.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(running.http_task, 10)
    if running.scheduler is not None:  # before the sent committer its sends go through
        running.scheduler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.scheduler
    if running.webhooks is not None:
        await running.webhooks.stop()
    await running.outbound.stop()
    await running.sent.stop()  # after the worker: outcomes of deliveries ending now still group
    if running.rechecks is not None:
        running.rechecks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.rechecks
    await running.committer.stop()
    await running.ctx.bus.close()
    await running.ctx.db.close()
    if running.writer is not None:  # it ends once every process has closed its end
        await asyncio.get_running_loop().run_in_executor(None, write_process.wait_for, running.writer)


async def run(config: Config, ready: asyncio.Event | None = None) -> None:
    running = await start(config)
    freeze_startup_heap()
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
