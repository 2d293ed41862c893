"""HTTP connections are spread evenly over the serve processes: the parent hands a new connection to
the process with the fewest open ones, requests already sent on it are not lost, closed connections
leave the count, and a worker that is gone gets nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvicorn

from agentpost.api import handover
from agentpost.api.http_protocol import HttpProtocol
from serverproc import AgentpostServer

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


class Client:
    """A keep-alive HTTP/1.1 connection with blocking reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.port = self.sock.getsockname()[1]
        self.file = self.sock.makefile("rb")

    def status(self) -> bytes:
        """The next response's status line (its body is read and dropped)."""
        status = self.file.readline().rstrip()
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.file.read(length)
        return status

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# -- the parent and a worker in one process, on plain asyncio -------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    reply = f"{scope['server_tag']}:{len(body)}".encode() if "server_tag" in scope else str(len(body)).encode()
    headers = [(b"content-length", str(len(reply)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply})


def tagged(tag: str) -> Any:
    async def tagged_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "server_tag": tag}, receive, send)

    return tagged_app


@contextlib.asynccontextmanager
async def two_servers() -> AsyncIterator[tuple[int, handover.Handover]]:
    """A "parent" uvicorn server listening with a Handover, and a "worker" one with no listener of
    its own serving what it is handed: the port, and the parent's ledger."""
    parent_ends, worker_ends = handover.channels(1)
    spread = handover.Handover(parent_ends)
    adoption = handover.Adoption(worker_ends[0])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    parent = uvicorn.Server(
        uvicorn.Config(tagged("parent"), http=HttpProtocol.counted(spread), lifespan="off", log_level="warning")
    )
    worker = uvicorn.Server(
        uvicorn.Config(tagged("worker"), http=HttpProtocol.counted(adoption), lifespan="off", log_level="warning")
    )
    spread.start()
    tasks = [asyncio.create_task(parent.serve(sockets=[listener])), asyncio.create_task(worker.serve(sockets=[]))]
    try:
        while not (parent.started and worker.started):  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.01)
        adoption.start(
            lambda: worker.config.http_protocol_class(  # type: ignore[call-arg]
                config=worker.config, server_state=worker.server_state, app_state=worker.lifespan.state
            )
        )
        yield listener.getsockname()[1], spread
    finally:
        parent.should_exit = worker.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        spread.close()
        adoption.close()


async def counts_become(spread: handover.Handover, expected: list[int]) -> bool:
    """The worker's notices arrive in socket callbacks: wait up to 5 s for the counts to match."""
    deadline = time.monotonic() + 5
    while spread.counts() != expected and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.02)
    return spread.counts() == expected


async def ask(port: int, request: bytes, answers: int = 1) -> tuple[list[bytes], asyncio.StreamWriter]:
    """Connect, write ``request`` at once (before any hand-over), read ``answers`` responses' bodies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    bodies = []
    for _ in range(answers):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        bodies.append(await reader.readexactly(length))
    return bodies, writer


async def test_connections_alternate_between_the_processes_and_requests_sent_at_once_are_served() -> None:
    async with two_servers() as (port, spread):
        body = os.urandom(200_000)  # larger than a socket buffer: most of it arrives after the hand-over
        post = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        results = [await ask(port, HEALTH + post, answers=2) for _ in range(6)]
        answers = [bodies for bodies, _ in results]
        assert [a[0].split(b":")[0] for a in answers] == [b"parent", b"worker"] * 3
        assert all(a[0].endswith(b":0") and a[1].endswith(b":200000") for a in answers)
        assert spread.counts() == [3, 3]
        for _, writer in results:
            writer.close()
            await writer.wait_closed()
        assert await counts_become(spread, [0, 0])


async def test_a_closed_connection_leaves_the_count_and_new_ones_even_it_out_again() -> None:
    async with two_servers() as (port, spread):
        first = [await ask(port, HEALTH) for _ in range(4)]  # parent, worker, parent, worker
        for bodies, writer in first[1::2]:  # the worker's two close
            assert bodies[0].startswith(b"worker")
            writer.close()
            await writer.wait_closed()
        assert await counts_become(spread, [2, 0])
        more = [await ask(port, HEALTH) for _ in range(3)]
        assert [bodies[0].split(b":")[0] for bodies, _ in more] == [b"worker", b"worker", b"parent"]
        for _, writer in first[::2] + more:
            writer.close()


async def test_a_worker_that_is_gone_gets_nothing_and_the_parent_serves_everything() -> None:
    parent_ends, worker_ends = handover.channels(1)
    spread = handover.Handover(parent_ends)
    spread.start()
    worker_ends[0].close()  # the worker exited
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    server = uvicorn.Server(uvicorn.Config(tagged("parent"), http=HttpProtocol.counted(spread), log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.01)
        results = [await ask(listener.getsockname()[1], HEALTH) for _ in range(4)]
        assert [bodies[0] for bodies, _ in results] == [b"parent:0"] * 4
        assert spread.counts() == [4, -1]
        for _, writer in results:
            writer.close()
    finally:
        server.should_exit = True
        await task
        spread.close()


# -- a real `agentpost serve` with two processes (uvloop when installed) --------------------------


@pytest.fixture
def two_process_server(tmp_path: Path) -> Iterator[AgentpostServer]:
    server = AgentpostServer(tmp_path, extra_env={"AGENTPOST_MX_PROCESSES": "2"})
    with server.running():
        yield server


def owners(server: AgentpostServer) -> tuple[dict[int, int], int]:
    """Which serve process holds each client port's connection, and the worker's pid."""
    assert server.proc is not None
    parent = psutil.Process(server.proc.pid)
    workers = [p for p in parent.children() if "mx-worker" in " ".join(p.cmdline())]
    assert len(workers) == 1, "serve with two processes starts one worker"
    held: dict[int, int] = {}
    for proc in (parent, workers[0]):
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == server.http_port:
                held[conn.raddr.port] = proc.pid
    return held, workers[0].pid


def test_serve_spreads_twenty_keep_alive_connections_ten_and_ten(two_process_server: AgentpostServer) -> None:
    server = two_process_server
    clients = []
    try:
        for _ in range(20):
            client = Client(server.http_port)
            client.sock.sendall(HEALTH + HEALTH)  # two pipelined requests, written before any hand-over
            clients.append(client)
        for client in clients:
            assert client.status() == b"HTTP/1.1 200 OK"
            assert client.status() == b"HTTP/1.1 200 OK"
        held, worker = owners(server)
        assert {c.port for c in clients} <= set(held), "every connection is held by one of the two processes"
        assert sorted(Counter(held[c.port] for c in clients).values()) == [10, 10]
        for client in clients:  # keep-alive goes on in the process that has the connection
            client.sock.sendall(HEALTH)
            assert client.status() == b"HTTP/1.1 200 OK"
        # The worker's connections close; the next ones go to the worker until it is even again.
        for client in [c for c in clients if held[c.port] == worker]:
            client.close()
            clients.remove(client)
        time.sleep(0.3)
        for _ in range(4):
            client = Client(server.http_port)
            client.sock.sendall(HEALTH)
            assert client.status() == b"HTTP/1.1 200 OK"
            clients.append(client)
        held, worker = owners(server)
        assert [held[c.port] for c in clients[-4:]] == [worker] * 4
    finally:
        for client in clients:
            client.close()


def test_serve_keeps_answering_when_its_worker_dies(two_process_server: AgentpostServer) -> None:
    server = two_process_server
    _, worker = owners(server)
    os.kill(worker, signal.SIGKILL)
    time.sleep(0.3)
    clients = []
    try:
        for _ in range(6):
            client = Client(server.http_port)
            client.sock.sendall(HEALTH)
            assert client.status() == b"HTTP/1.1 200 OK"
            clients.append(client)
        assert server.proc is not None
        held = {c.raddr.port for c in psutil.Process(server.proc.pid).net_connections(kind="tcp") if c.raddr}
        assert {c.port for c in clients} <= held
    finally:
        for client in clients:
            client.close()
