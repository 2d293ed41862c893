"""The HTTP protocol sends a response's head with its body in one write, and never holds a head
past the current pass of the event loop (streams, empty bodies, keep-alive and closing still work)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn

from agentpost.api.http_protocol import HttpProtocol, _HeadHoldingTransport


class Recorder:
    """The socket side of a transport: what was written, in which calls."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_head_and_body_go_out_in_one_write() -> None:
    recorder = Recorder()
    transport = _HeadHoldingTransport(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    assert recorder.writes == []
    transport.write(b"ok")
    assert recorder.writes == [HEAD + b"ok"]
    await asyncio.sleep(0)
    assert recorder.writes == [HEAD + b"ok"]  # nothing left over for the release


async def test_a_head_alone_goes_out_in_the_next_pass_of_the_loop_or_at_close() -> None:
    recorder = Recorder()
    transport = _HeadHoldingTransport(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert recorder.writes == [HEAD]
    transport.write(b"later")  # a streamed body is not held
    assert recorder.writes == [HEAD, b"later"]
    transport.write(HEAD)
    transport.close()
    assert recorder.writes == [HEAD, b"later", HEAD] and recorder.closed
    assert transport.get_extra_info("peername", "none") == "none"  # everything else is the transport's


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one ", b"two ", b"three"):
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        body = path.encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
        )
        await send({"type": "http.response.body", "body": body})


async def test_a_real_server_answers_plain_streamed_and_empty_responses_on_one_connection() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=HttpProtocol, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):  # keep-alive: one connection, several responses
                plain = await client.get("/hello")
                assert (plain.status_code, plain.text) == (200, "/hello")
                streamed = await client.get("/stream")
                assert (streamed.status_code, streamed.text) == (200, "one two three")
                empty = await client.get("/empty")
                assert (empty.status_code, empty.content) == (204, b"")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            closing = await client.get("/bye", headers={"connection": "close"})
            assert (closing.status_code, closing.text) == (200, "/bye")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
