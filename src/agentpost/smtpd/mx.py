"""The MX listener (RFC 5321 server side): hosted recipients only, then inbound.receive."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, login_always_fail

from agentpost.errors import Rejected
from agentpost.inbound.checks import Directory, RateLimiter, Route
from agentpost.inbound.receive import Receiver
from agentpost.model import Envelope as MailEnvelope
from agentpost.proto import codes
from agentpost.proto.codes import Reply

log = logging.getLogger(__name__)

# RFC 3463 default enhanced codes for replies produced inside aiosmtpd (syntax errors, size),
# so that every reply after EHLO carries one (RFC 2034 §3).
_DEFAULT_ENHANCED = {
    221: "2.0.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.5.0",
    421: "4.3.0",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}
_HAS_ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_SIMPLE_PATH = re.compile(r"^\s*<((?:[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)?)>(.*)$")


def _sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
    # aiosmtpd formats every command for the log before the logger decides to drop it; ask the
    # logger first (the MX logs at WARNING: the per-command cost was a few percent of a message).
    logger = getattr(func, "__self__", None)
    if logger is not None and not logger.isEnabledFor(logging.DEBUG if func.__name__ == "debug" else logging.INFO):
        return
    _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log
aiosmtpd.smtp.sanitized_log = _sanitized_log


class _Commands:
    """aiosmtpd's command table, bound on lookup instead of for every connection."""

    __slots__ = ("_session",)

    def __init__(self, session: SMTP) -> None:
        self._session = session

    def get(self, command: str, default: Any = None) -> Any:
        if command in MxSession._COMMANDS:
            return getattr(self._session, "smtp_" + command)
        return default

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self._session, "smtp_" + name)) for name in MxSession._COMMANDS]


def _line(reply: Reply) -> str:
    return f"{reply.code} {reply.enhanced} {reply.text}"


class MxSession(SMTP):
    """aiosmtpd's SMTP with enhanced status codes on every reply and per-IP connection limits."""

    # RFC 5321 §4.5.3.1.6 caps text lines at 998 octets, but real senders (Amazon SES, GMX
    # bounces) exceed it; refusing their mail helps nobody. Accept up to 64 KiB per line: the
    # parser records the defect.
    line_length_limit = 64 * 1024

    # Commands this session answers; bound per connection below.
    _COMMANDS = frozenset(name[5:] for name in dir(SMTP) if name.startswith("smtp_"))

    def __init__(
        self,
        handler: MxHandler,
        hooks: dict[str, Any],
        *,
        hostname: str,
        data_size_limit: int,
        tls_context: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        # The state aiosmtpd 1.4.6 (pinned) SMTP.__init__ sets, without its per-connection
        # introspection (inspect.getmembers, dir(), inspect.signature): that alone cost more per
        # connection than parsing the message. The MX offers no AUTH (no auth mechanisms).
        self.__ident__ = "agentpost ESMTP"
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = False
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._deadline = 0.0
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._auth_callback = login_always_fail
        self._authenticator = None
        self._auth_required = False
        self._auth_methods = {}
        self._handle_hooks = hooks
        self._ehlo_hook_ver = "new"
        self._smtp_methods = _Commands(self)  # type: ignore[assignment]  # a dict-like view
        self._enforce_call_limit = False
        self.mx = handler
        self._peer_ip = ""
        self._continued = b""  # the lines of a multiline reply so far (push)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd re-arms a loop timer after every command; moving a deadline instead and
        # checking it when the one timer fires does the same with no timer churn.
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        if self._timeout_handle is None:
            self._timeout_handle = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        if self.transport is None:
            return
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._check_deadline)
            return
        self._timeout_cb()  # type: ignore[no-untyped-call]

    async def smtp_DATA(self, arg: str) -> None:
        """DATA (RFC 5321 §4.1.1.4) read in blocks up to CRLF.CRLF, not line by line.

        Same replies as aiosmtpd's, including 552 after the whole body when it is too big
        (§4.2.5: the reply comes after the data). Dot-stuffing is undone per §4.5.2.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit or 0
        # The CRLF ending the DATA line is the first half of the terminator, so an empty message
        # is a lone ".\r\n": keep it in front and look for "\r\n.\r\n" at the end of what was read.
        buffer = bytearray(b"\r\n")
        size = 0
        too_big = False
        while True:
            try:
                buffer += await self._reader.readuntil(b".\r\n")
                complete = True
            except asyncio.LimitOverrunError as overrun:
                buffer += await self._reader.readexactly(overrun.consumed)
                complete = False
            if complete and buffer.endswith(b"\r\n.\r\n"):
                break
            if limit and len(buffer) + size > limit + 5:
                # Too big: keep reading to the end (the reply comes after the data) but keep only
                # the tail needed to recognise the terminator.
                too_big = True
                size += len(buffer) - 4
                del buffer[:-4]
        if too_big or (limit and len(buffer) - 5 > limit):
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("552 5.3.4 Error: Too much mail data")
            return
        # Drop the leading CRLF and the ".\r\n"; undo dot-stuffing on every line (§4.5.2).
        content = bytes(buffer[:-3]).replace(b"\r\n.", b"\r\n")[2:]
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Fast path for the usual "<local@domain> PARAMS" (RFC 5321 §4.1.2 Path); anything
        # unusual (quoted local parts, source routes, bare addresses) goes to aiosmtpd's parser.
        match = _SIMPLE_PATH.match(arg)
        if match is not None:
            return match.group(1) or "<>", match.group(2)
        address, rest = super()._getaddr(arg)
        return address, rest

    async def push(self, status: str | bytes) -> None:
        raw = status.encode("utf-8") if isinstance(status, str) else status
        if (
            len(raw) >= 4
            and raw[3:4] == b" "
            and raw[:1] in b"2345"
            and raw[:3] not in (b"220", b"354")
            and not _HAS_ENHANCED.match(raw)
        ):
            code = int(raw[:3])
            enhanced = _DEFAULT_ENHANCED.get(code, f"{raw[:1].decode()}.0.0")
            raw = raw[:4] + enhanced.encode() + b" " + raw[4:]
        if raw[3:4] == b"-":
            # RFC 5321 §4.2.1: "250-" lines continue a reply the client reads only once its last
            # line arrives. aiosmtpd writes every line of EHLO's on its own (a send call, and a
            # wake-up of the client, each); the lines go out together with the last one instead.
            self._continued += raw + b"\r\n"
            return
        if self._continued:
            raw, self._continued = self._continued + raw, b""
        await super().push(raw)

    async def _handle_client(self) -> None:
        peer = self.session.peer if self.session else None
        self._peer_ip = str(peer[0]) if peer else ""
        refusal = self.mx.limiter.connect(self._peer_ip)
        if refusal is not None:
            self._peer_ip = ""  # not counted
            await super().push(_line(refusal).encode())
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if self._peer_ip:
            self.mx.limiter.disconnect(self._peer_ip)
            self._peer_ip = ""
        super().connection_lost(error)


class MxHandler:
    """aiosmtpd hooks: each decision is delegated to inbound; each reply is a named constant."""

    def __init__(
        self,
        directory: Directory,
        receiver: Receiver,
        limiter: RateLimiter,
        max_recipients: int,
    ) -> None:
        self.directory = directory
        self.receiver = receiver
        self.limiter = limiter
        self.max_recipients = max_recipients

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # RFC 2920 (PIPELINING): aiosmtpd reads commands in order from its buffer, so batches work.
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        # An MX takes mail for its own domains only; it never authenticates (no AUTH offered).
        kept = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return kept + extra + responses[-1:]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        ip = str(session.peer[0]) if session.peer else ""
        refusal = self.limiter.message(ip)
        if refusal is not None:
            return _line(refusal)
        # aiosmtpd treats an empty mail_from as "no MAIL yet": keep "<>" for the null
        # reverse-path (RFC 5321 §4.5.5, bounces) and map it to "" when handing over.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.routes = []  # type: ignore[attr-defined]  # our per-transaction routing
        return _line(codes.R250_SENDER_OK)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        routes: list[Route] = getattr(envelope, "routes", [])
        if len(routes) >= self.max_recipients:
            return _line(codes.R452_TOO_MANY_RECIPIENTS)
        decision = await self.directory.route(address)
        if isinstance(decision, Reply):
            log.info("RCPT %s refused: %s", address[:320], decision)
            return _line(decision)
        if any(r.inbox_id == decision.inbox_id for r in routes):
            return _line(codes.R250_RCPT_OK)  # duplicate RCPT: one copy per inbox
        routes.append(decision)
        envelope.routes = routes  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return _line(codes.R250_RCPT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        tls = ""
        if session.ssl:
            ssl_object = session.ssl.get("ssl_object")
            if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
                tls = str(ssl_object.version() or "TLS")
        peer = session.peer or ("", 0)
        mail_envelope = MailEnvelope(
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            rcpt_to=list(envelope.rcpt_tos),
            helo=session.host_name or "",
            client_ip=str(peer[0]),
            client_port=int(peer[1]) if len(peer) > 1 else 0,
            tls=tls,
        )
        raw = envelope.original_content
        if not isinstance(raw, bytes):
            raw = bytes(raw or b"")
        try:
            receipt = await self.receiver.receive(mail_envelope, raw, getattr(envelope, "routes", []))
        except Rejected as refusal:
            log.info("DATA from %s refused: %s", mail_envelope.client_ip, refusal.reason)
            return _line(refusal.reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("receive failed for a message from %s", mail_envelope.client_ip)
            return _line(codes.R451_LOCAL_ERROR)
        # Mail to an unsubscribe address is acted on, not stored: nothing to name.
        queued = receipt.saved[0][1].pk if receipt.saved else "(processed)"
        return f"250 2.0.0 OK: queued as {queued}"

    async def handle_exception(self, error: Exception) -> str:
        # The peer gets a generic temporary failure; the trace goes to the log only.
        log.error("SMTP session error", exc_info=error)
        return _line(codes.R451_LOCAL_ERROR)


class MxServer:
    """Binds the listener and builds one MxSession per connection."""

    def __init__(
        self,
        handler: MxHandler,
        host: str,
        port: int,
        hostname: str,
        max_message_size: int,
        tls_context: ssl.SSLContext | None,
        command_timeout: float,
        reuse_port: bool = False,
    ) -> None:
        self.handler = handler
        self.reuse_port = reuse_port
        self.host = host
        self.port = port
        self.hostname = hostname
        self.max_message_size = max_message_size
        self.tls_context = tls_context
        self.command_timeout = command_timeout
        self._server: asyncio.Server | None = None
        # aiosmtpd hook table ("MAIL" -> handler.handle_MAIL), built once, not per connection.
        self._hooks = {name[7:]: getattr(handler, name) for name in dir(handler) if name.startswith("handle_")}

    def _session(self) -> MxSession:
        return MxSession(
            self.handler,
            self._hooks,
            hostname=self.hostname,
            data_size_limit=self.max_message_size,
            tls_context=self.tls_context,
            timeout=self.command_timeout,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._session, self.host, self.port, reuse_address=True, reuse_port=self.reuse_port, backlog=512
        )
        sockets = list(self._server.sockets or [])
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        log.info("MX listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
