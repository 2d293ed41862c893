"""HTTP connections spread over the serve processes: the parent accepts them and hands each new one
to the process with the fewest open connections (its descriptor, over a socketpair)."""

# Why not SO_REUSEPORT, as on the MX port
# ---------------------------------------
# The kernel spreads a reuseport group's connections by a hash of their addresses and ports. An
# agent's HTTP client keeps a few keep-alive connections and sends every request on them, so a
# process's share of the requests is its share of those connections, fixed when they open: 20
# connections over two processes split 11/9 or worse in three runs of four (a binomial split), and
# the requests on the larger share wait longer in proportion. Outbound benchmark (concurrency 20,
# two processes, four runs each way, alternating): the hashed splits gave a send p99 of 54.8-77.4 ms,
# an even split of the same load 41.4-61.5 ms, lower in every pair. SMTP sessions are short and
# many: the MX port keeps reuseport.
#
# How
# ---
# One SOCK_SEQPACKET socketpair per worker process, made by the parent before it starts them. The
# parent's HTTP protocol asks `Handover.made` in connection_made, before anything has been read from
# the connection: the parent keeps it while no worker has fewer open connections than the parent,
# otherwise the descriptor goes to the worker with the fewest (SCM_RIGHTS) and the parent closes
# its own copy, which leaves the connection open (the worker's descriptor refers to the same
# socket). The worker serves it with the same protocol (`Adoption`, loop.connect_accepted_socket).
# A worker sends one byte per handed connection that closes, so the parent's counts stay exact
# without shared memory. A worker that is gone, or not reading (its socket's buffer full), gets
# nothing more: the parent keeps the connection and serves it itself.

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

_HANDED = b"+"  # parent -> worker, with the descriptor
_CLOSED = b"-"  # worker -> parent: one handed connection has closed
_NEVER = sys.maxsize  # the count of a worker that takes nothing more


class Ledger(Protocol):
    """What the HTTP protocol reports: each connection made (and whether to serve it here), and lost."""

    def made(self, fd: int) -> bool:
        """True: serve the connection here. False: another process has it now; close this
        process's transport (that closes only this process's descriptor)."""
        ...

    def lost(self) -> None: ...


def channels(workers: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """(the parent's ends, the workers' ends): one socketpair per worker process."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(workers)]
    return [parent for parent, _ in pairs], [worker for _, worker in pairs]


class Handover:
    """The parent's side: how many connections each process has open, and the sockets to the workers."""

    def __init__(self, ends: list[socket.socket]) -> None:
        self._ends: list[socket.socket | None] = list(ends)
        for end in ends:
            end.setblocking(False)
        self._open = [0] * (len(ends) + 1)  # [0] is this process, [i] the worker on ends[i - 1]
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for index, end in enumerate(self._ends, 1):
            if end is not None:
                self._loop.add_reader(end.fileno(), self._notices, index)

    def counts(self) -> list[int]:
        """Open connections per process, this one first (a worker that takes no more: -1)."""
        return [-1 if n == _NEVER else n for n in self._open]

    def made(self, fd: int) -> bool:
        # Ties go to the lowest index, this process first: no hand-over unless it evens things out.
        target = min(range(len(self._open)), key=self._open.__getitem__)
        if target and self._hand(target, fd):
            self._open[target] += 1
            return False
        self._open[0] += 1
        return True

    def lost(self) -> None:
        self._open[0] -= 1

    def _hand(self, index: int, fd: int) -> bool:
        end = self._ends[index - 1]
        if end is None:
            return False
        try:
            socket.send_fds(end, [_HANDED], [fd])
        except BlockingIOError:  # not reading for now: keep this one here
            return False
        except ConnectionError as exc:  # EPIPE, ECONNRESET: the worker has exited
            log.warning("worker process %d takes no more HTTP connections: %s", index, exc)
            self._retire(index)
            return False
        except OSError as exc:  # e.g. ETOOMANYREFS, too many descriptors in flight: keep this one
            log.info("HTTP connection kept in the serve process: %s", exc)
            return False
        return True

    def _notices(self, index: int) -> None:
        end = self._ends[index - 1]
        while end is not None:
            try:
                notice = end.recv(16)
            except BlockingIOError:
                return
            except OSError:
                notice = b""
            if not notice:  # the worker has exited
                self._retire(index)
                return
            self._open[index] = max(0, self._open[index] - notice.count(_CLOSED))

    def _retire(self, index: int) -> None:
        end = self._ends[index - 1]
        if end is None:
            return
        self._ends[index - 1] = None
        self._open[index] = _NEVER
        if self._loop is not None:
            self._loop.remove_reader(end.fileno())
        end.close()

    def close(self) -> None:
        """Hand nothing more over (the workers are stopping); new connections stay here."""
        for index in range(1, len(self._open)):
            self._retire(index)


class Adoption:
    """A worker's side: serves the connections the parent hands over, and tells it when one closes."""

    def __init__(self, end: socket.socket) -> None:
        end.setblocking(False)
        self._end: socket.socket | None = end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._adopting: set[asyncio.Task[object]] = set()

    def start(self, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        """Take connections from now on; ``protocol_factory`` makes this process's HTTP protocol."""
        if self._end is None:
            return
        self._loop = asyncio.get_running_loop()
        self._factory = protocol_factory
        self._loop.add_reader(self._end.fileno(), self._take)

    def made(self, fd: int) -> bool:
        return True  # the parent has counted it

    def lost(self) -> None:
        if self._end is not None:
            with contextlib.suppress(OSError):  # the parent is gone or stopping: nobody counts
                self._end.send(_CLOSED)

    def _take(self) -> None:
        while self._end is not None:
            try:
                notice, fds, _, _ = socket.recv_fds(self._end, 16, 8)
            except BlockingIOError:
                return
            except OSError:
                notice, fds = b"", []
            for fd in fds:
                self._adopt(socket.socket(fileno=fd))
            if not notice and not fds:  # the parent has closed its end
                self.close()

    def _adopt(self, sock: socket.socket) -> None:
        assert self._loop is not None and self._factory is not None
        sock.setblocking(False)
        task: asyncio.Task[object] = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, sock))
        self._adopting.add(task)
        task.add_done_callback(lambda done: self._adopted(done, sock))

    def _adopted(self, task: asyncio.Task[object], sock: socket.socket) -> None:
        self._adopting.discard(task)
        failure = "cancelled" if task.cancelled() else task.exception()
        if failure is not None:
            # Never served (the client may have gone already): close it; the parent counts it closed.
            log.warning("could not serve a handed-over HTTP connection: %s", failure)
            sock.close()
            self.lost()

    def close(self) -> None:
        end, self._end = self._end, None
        if end is not None:
            if self._loop is not None:
                self._loop.remove_reader(end.fileno())
            end.close()
