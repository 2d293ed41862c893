"""The SQLite write process: one process runs every serve process's write transactions, off their GILs."""

# Why a process of its own
# ------------------------
# SQLite has one writer at a time, so every process's writes take turns (db.py's cross-process
# flock). Run in a serve process, a write transaction shares that process's GIL with its event
# loop: the sqlite3 module releases the GIL around every statement step and the commit, and each
# time the loop thread takes it and keeps it for up to the switch interval (5 ms). Measured under
# the inbound benchmark: the lock held 8-10 ms per transaction for ~3 ms of writer CPU, and the
# lock, not the CPU, capped throughput. Here the transaction runs in a process that does nothing
# else, so it holds the lock only for the time SQLite needs. Requests arriving together from
# several processes also share one transaction and one fsync (each in its own SAVEPOINT, so one
# failing request does not fail its neighbours).
#
# Requests are (function, args, durable) sent as pickles over socketpairs the serve parent made
# (no path anyone else could connect to): the functions are the store's own module-level write
# functions (queue.save_sent, messages.save_batch, ...), taking a connection first. The cross-process
# flock is still taken per transaction, so other writers (the CLI, migrations, db.write()) and
# clients that fall back to writing themselves stay correct.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import selectors
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agentpost.store.engines import configure_sqlite, open_write_lock, sqlite_file, sync_url, without_fsync, write_lock

log = logging.getLogger(__name__)

# A frame: request id (8 bytes), payload length (4 bytes), payload (a pickle).
_HEADER = struct.Struct("!QI")
MAX_GROUP = 64  # requests in one transaction at most
SEND_TIMEOUT = 30.0  # a client that reads nothing for this long is dropped


class WriterUnavailable(Exception):
    """The write process is gone (or never was): the caller writes on its own instead."""


class WriterLost(Exception):
    """The write process went away with this request in flight: it may or may not have committed."""


class _Error:
    """An exception from the write process that could not be pickled: its type name and text."""

    def __init__(self, text: str) -> None:
        self.text = text


def _result_frame(request_id: int, ok: bool, value: Any) -> bytes:
    try:
        payload = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception: its text still travels
        text = f"{type(value).__name__}: {value}" if not ok else f"result not transferable: {exc}"
        payload = pickle.dumps((False, _Error(text)), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(request_id, len(payload)) + payload


@dataclass(slots=True)
class _Request:
    client: socket.socket
    request_id: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    durable: bool


class _Client:
    __slots__ = ("sock", "buffer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()


# recv(n) allocates n bytes before it knows how many arrive (a large n costs an mmap each call):
# every read lands in this one buffer and only what arrived is copied out.
_SCRATCH = bytearray(1 << 20)
_SCRATCH_VIEW = memoryview(_SCRATCH)


def serve(url: str, fds: list[int]) -> None:
    """Run write requests from the clients on ``fds`` until every client has closed its end."""
    engine = sa.create_engine(sync_url(url), pool_size=1, max_overflow=0, connect_args={"timeout": 30})
    configure_sqlite(engine)
    database_file = sqlite_file(url)
    if database_file is None:
        raise ValueError(f"the write process serves a SQLite database file, not {url}")
    lock_fd = open_write_lock(database_file)
    selector = selectors.DefaultSelector()
    for fd in fds:
        sock = socket.socket(fileno=fd)
        sock.settimeout(SEND_TIMEOUT)
        selector.register(sock, selectors.EVENT_READ, _Client(sock))
    pending: list[_Request] = []
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(writer=True)
            while selector.get_map():
                # Wait only when nothing is pending; otherwise just collect what has arrived.
                for key, _ in selector.select(timeout=0 if pending else None):
                    client: _Client = key.data
                    if not _receive(client, pending):
                        _drop(selector, client.sock)
                if pending:
                    group, pending = pending[:MAX_GROUP], pending[MAX_GROUP:]
                    for request, frame in _run_group(conn, lock_fd, group):
                        if not _send(request.client, frame):
                            _drop(selector, request.client)
    finally:
        selector.close()
        os.close(lock_fd)
        engine.dispose()


def _receive(client: _Client, pending: list[_Request]) -> bool:
    """Read what the client sent; False once it has closed its end."""
    try:
        size = client.sock.recv_into(_SCRATCH_VIEW)
    except OSError:
        return False
    if not size:
        return False
    client.buffer += _SCRATCH_VIEW[:size]
    buffer = client.buffer
    offset = 0
    while len(buffer) - offset >= _HEADER.size:
        request_id, size = _HEADER.unpack_from(buffer, offset)
        end = offset + _HEADER.size + size
        if len(buffer) < end:
            break
        try:
            fn, args, durable = pickle.loads(memoryview(buffer)[offset + _HEADER.size : end])
        except Exception as exc:
            if not _send(client.sock, _result_frame(request_id, False, exc)):
                return False
        else:
            pending.append(_Request(client.sock, request_id, fn, args, bool(durable)))
        offset = end
    del buffer[:offset]
    return True


def _send(sock: socket.socket, frame: bytes) -> bool:
    """False when the client is gone (or stuck past SEND_TIMEOUT): the caller drops it."""
    try:
        sock.sendall(frame)
    except OSError:
        return False
    return True


def _drop(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    """Forget a client (its reader sees the socket close); once every client is gone, serve returns."""
    with contextlib.suppress(KeyError, ValueError):  # already dropped for an earlier answer
        selector.unregister(sock)
    sock.close()


def _run_group(conn: sa.Connection, lock_fd: int, group: list[_Request]) -> list[tuple[_Request, bytes]]:
    """One transaction for the group (durable if any request is), each request in a savepoint."""
    durable = any(r.durable for r in group)
    outcomes: list[tuple[bool, Any]] = []
    # Non-durable only when every request is (Database.run_write's durable=False).
    with write_lock(lock_fd), contextlib.nullcontext() if durable else without_fsync(conn):
        try:
            with conn.begin():
                if len(group) == 1:  # its failure is the transaction's: no savepoint needed
                    outcomes.append((True, group[0].fn(conn, *group[0].args)))
                else:
                    outcomes = [_in_savepoint(conn, request) for request in group]
        except Exception as exc:  # the transaction (or the one request) failed: nothing committed
            outcomes = [(False, exc)] * len(group)
    return [(r, _result_frame(r.request_id, ok, value)) for r, (ok, value) in zip(group, outcomes, strict=True)]


def _in_savepoint(conn: sa.Connection, request: _Request) -> tuple[bool, Any]:
    """Run one request of a group; a failure rolls back its own writes only."""
    savepoint = conn.begin_nested()
    try:
        value = request.fn(conn, *request.args)
    except Exception as exc:
        savepoint.rollback()
        return False, exc
    savepoint.commit()
    return True, value


def ping(conn: sa.Connection) -> int:
    """The write process's answer to a new client: its pid (proof it runs and can write)."""
    return os.getpid()


class WriteChannel:
    """A serve process's end of the socket to the write process: calls, and their answers."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.open = False

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=1 << 24)
        self.open = True
        self._reader_task = asyncio.create_task(self._read(reader), name="write-channel")

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...], durable: bool) -> Any:
        if not self.open or self._writer is None:
            raise WriterUnavailable("the write process is not connected")
        try:
            payload = pickle.dumps((fn, args, durable), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # not a module-level function, or unpicklable arguments
            raise WriterUnavailable(f"request not transferable: {exc}") from exc
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._writer.write(_HEADER.pack(request_id, len(payload)) + payload)
        if self._writer.transport.get_write_buffer_size() > 1 << 20:
            await self._writer.drain()
        return await future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(_HEADER.size)
                request_id, size = _HEADER.unpack(header)
                ok, value = pickle.loads(await reader.readexactly(size))
                future = self._waiting.pop(request_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                elif isinstance(value, _Error):
                    future.set_exception(RuntimeError(f"write failed: {value.text}"))
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError, EOFError) as exc:
            if self.open:
                log.warning("the write process went away (%s); this process writes on its own", exc)
        finally:
            self.open = False
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(WriterLost("the write process went away during the write"))
            self._waiting.clear()

    async def close(self) -> None:
        self.open = False
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            await self._reader_task


def spawn(url: str, clients: int) -> tuple[subprocess.Popen[bytes], list[socket.socket]]:
    """Start the write process with one socketpair per client process; returns the clients' ends."""
    mine: list[socket.socket] = []
    theirs: list[socket.socket] = []
    for _ in range(clients):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.append(a)
        theirs.append(b)
    fds = [s.fileno() for s in theirs]
    command = [sys.executable, "-m", "agentpost.store.write_process", "--url", url, *[f"--fd={fd}" for fd in fds]]
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=fds)
    except BaseException:
        for s in mine + theirs:
            s.close()
        raise
    for s in theirs:
        s.close()
    return proc, mine


def wait_for(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Wait for the write process to end (it does once every client has closed its end)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("the write process (pid %d) did not end; killing it", proc.pid)
        proc.kill()
        proc.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--fd", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C in a terminal and a service manager's SIGTERM reach every process of the group at
    # once: this one ends when its clients have closed their ends, after their last writes (the
    # group commits a stopping serve process flushes), not at the signal. serve kills it if it
    # has not ended 15 s after the last client closed (wait_for).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The modules of the hot writes (received mail, sent copies and delivery outcomes) load now,
    # not when the first request's pickle names them: every caller of the first group waited for
    # that import (~150 ms of this process in a profile of the outbound benchmark's first sends).
    import agentpost.store.messages
    import agentpost.store.queue  # noqa: F401

    serve(args.url, args.fd)


if __name__ == "__main__":
    main()
