"""The HTTP/1.1 connection protocol: uvicorn's, with each response's head and body sent in one
write, and each connection counted for the spread over serve processes (api/handover.py)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agentpost.api.handover import Ledger


class _HeadHoldingTransport:
    """Keeps a response's head until the next write (its body), then sends both at once.

    uvicorn writes the status line and headers as soon as the app starts its response, and the
    body in a second write: two send calls, and two wake-ups of the client, per response. On the
    benchmark machine a send to a waiting loopback peer costs ~50-100 us of CPU, about what the
    send route's own Python costs. A head is never held past the current pass of the event loop
    (a response whose body comes later, such as a stream, gets its head then).
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
            self._transport.write(data)
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":  # a head (RFC 9112 §2.1)
            self._held = data
            self._loop.call_soon(self._release)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a transport that writes a response in one piece."""

    ledger: ClassVar[Ledger | None] = None  # set on the subclass `counted` makes
    _handed = False  # another process serves the connection
    _counted = False  # the ledger counts it open

    @classmethod
    def counted(cls, ledger: Ledger) -> type[HttpProtocol]:
        """The protocol, reporting its connections to ``ledger`` (one per serve process)."""
        return type("CountedHttpProtocol", (cls,), {"ledger": ledger})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.ledger is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None and not self.ledger.made(sock.fileno()):
                # Before anything is read: the bytes the client has sent wait in the socket for
                # the process that has it now. Closing drops only this process's descriptor.
                self._handed = True
                transport.close()
                return
            self._counted = True
        held: Any = _HeadHoldingTransport(transport, self.loop)
        super().connection_made(held)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handed:
            return
        self._uncount()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the connection over and sees its end: it leaves the count
        # now (a WebSocket mostly waits for events; the spread is for request traffic).
        self._uncount()
        super().handle_websocket_upgrade()

    def _uncount(self) -> None:
        if self._counted and self.ledger is not None:
            self._counted = False
            self.ledger.lost()
