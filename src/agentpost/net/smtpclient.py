"""One outbound SMTP session to one host, on our own wire layer: EHLO, STARTTLS, AUTH, pipelined MAIL/RCPT/DATA.

The wire layer (``_Wire``) sits on asyncio streams and parses replies itself, so that a pipelined group of
commands (RFC 2920) can be written at once and its replies read back in order; aiosmtplib cannot do that.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

from agentpost.proto.codes import R501_SYNTAX_ADDRESS, Reply

TlsMode = Literal["opportunistic", "require", "none", "implicit"]
TLS_MODES: tuple[str, ...] = ("opportunistic", "require", "none", "implicit")

# RFC 3463 §2: class.subject.detail at the start of the reply text; the class repeats the code's first digit.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
# RFC 5321 §2.3.8: lines end in CRLF; a bare CR or LF is turned into CRLF, so that no "\n.\n" reaches a
# server that reads it as the end of data while the next hop does not (SMTP smuggling).
_LINE_END = re.compile(rb"\r\n|\n|\r")

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line, but real servers send longer ones (and long EHLO
# lists): cap the whole reply instead, so that a hostile server cannot make us buffer without bound.
MAX_REPLY = 65536
_READ_SIZE = 65536
# RFC 5321 §4.5.3.2.5: the data-block timeout applies to each chunk sent, not to the whole message.
_BODY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    enhanced: str | None  # RFC 3463, e.g. "5.1.1", when the server sent one
    text: str  # the full reply text, multi-line replies joined with "\n"

    @classmethod
    def parse(cls, code: int, text: str) -> SmtpReply:
        match = _ENHANCED.match(text)
        enhanced = match.group(0) if match and match.group(1) == str(code)[:1] else None
        return cls(code, enhanced, text)

    @classmethod
    def local(cls, reply: Reply, detail: str = "") -> SmtpReply:
        """A reply we decided ourselves, without asking the server."""
        return cls(reply.code, reply.enhanced or None, reply.text + (f": {detail}" if detail else ""))

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


# RFC 6531 §3.4: a message that needs SMTPUTF8 cannot go to a server that does not offer it.
R553_SMTPUTF8_UNSUPPORTED = Reply(553, "5.6.7", "Non-ASCII addresses need SMTPUTF8, which the server does not offer")


@dataclass
class RecipientResult:
    rcpt: str
    reply: SmtpReply  # the RCPT reply (or MAIL's, when MAIL was refused)

    @property
    def accepted(self) -> bool:
        return self.reply.code in (250, 251)


@dataclass
class SessionResult:
    """What happened to one message. Recipients missing from ``recipients`` were never answered (see ``error``).

    A recipient is delivered when its RCPT was accepted and ``data_reply`` is 2xx.
    """

    host: str
    ip: str
    port: int
    tls_version: str | None  # e.g. "TLSv1.3"; None when the session ran in clear
    tls_verified: bool | None  # the certificate verified for ``host``; None without TLS
    recipients: list[RecipientResult] = field(default_factory=list)
    data_reply: SmtpReply | None = None  # one DATA reply for every accepted recipient
    error: str | None = None  # connection, timeout or protocol failure: temporary
    duration: float = 0.0
    # Why TLS was not used or not verified: the fallback taken or, when TLS was required, why the session failed.
    tls_failure: str | None = None

    def reply_for(self, rcpt: str) -> SmtpReply | None:
        """The final answer for ``rcpt``: the DATA reply if its RCPT was accepted, else the RCPT reply."""
        for result in self.recipients:
            if result.rcpt == rcpt:
                return self.data_reply if result.accepted else result.reply
        return None


class _Unusable(Exception):
    """The session cannot carry mail; the text is the SessionResult error."""


class _TlsFailed(Exception):
    def __init__(self, message: str, *, verification: bool, connection_alive: bool) -> None:
        super().__init__(message)
        self.verification = verification  # the handshake failed only because the certificate did not verify
        self.connection_alive = connection_alive  # STARTTLS was refused with a reply; the clear session goes on


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _cert_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc``, if that is what it was (an event loop may wrap it)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    # RFC 7435 opportunistic security: an encrypted but unauthenticated channel beats clear text.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@functools.cache
def _verified_context() -> ssl.SSLContext:
    # Loading the system's CA store costs milliseconds; one context serves every session
    # (an SSLContext is safe to share, and the MX name is passed per connection).
    return ssl.create_default_context()


def load_trust_store() -> None:
    """Build the shared TLS client contexts now (reading the CA store blocks for ~20 ms), before
    the event loop has sessions to serve, rather than in the first delivery."""
    _verified_context()
    _unverified_context()


def _verifies(context: ssl.SSLContext) -> bool:
    return context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def _unread(reader: asyncio.StreamReader) -> bool:
    """Whether ``reader`` holds bytes nobody asked for yet (StreamReader has no public way to tell)."""
    return bool(getattr(reader, "_buffer", b""))


class _Wire:
    """Commands out, replies in (RFC 5321 §4.2) on one asyncio stream; every wait is bounded by ``timeout``."""

    __slots__ = ("reader", "writer", "timeout", "peer", "_buffer", "_scan")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float, peer: str) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.peer = peer
        self._buffer = bytearray()  # received, not yet returned as a reply
        self._scan = 0  # where the next unchecked line of the reply being received starts

    @property
    def alive(self) -> bool:
        """Open, with nothing unsolicited waiting: a server that said "421 idle timeout" and left is not reusable."""
        reader = self.reader
        return not (
            self.writer.is_closing()
            or reader.at_eof()
            or reader.exception() is not None
            or self._buffer
            or _unread(reader)
        )

    @property
    def pending(self) -> bool:
        """Bytes were received beyond the last reply read."""
        return bool(self._buffer) or _unread(self.reader)

    def write(self, data: bytes | memoryview) -> None:
        if self.writer.is_closing():  # uvloop raises on a write to a closed transport, asyncio ignores it
            raise _Unusable(f"connection to {self.peer} closed")
        self.writer.write(data)

    async def flush(self, what: str) -> None:
        # The transport sends what it can at once; only a peer that stops reading leaves bytes behind.
        if not self.writer.transport.get_write_buffer_size():
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise _Unusable(f"timed out sending {what} to {self.peer}") from None
        except OSError as exc:
            raise _Unusable(f"connection to {self.peer} lost sending {what}: {_describe(exc)}") from exc

    async def reply(self, what: str, within: float | None = None) -> SmtpReply:
        """The next reply; ``what`` names the command it answers, for error texts."""
        reply = self._parse()
        if reply is not None:  # already received: pipelined replies usually arrive together
            return reply
        try:
            async with asyncio.timeout(within or self.timeout):
                while reply is None:
                    chunk = await self.reader.read(_READ_SIZE)
                    if not chunk:
                        raise _Unusable(f"connection closed by {self.peer} before {what}")
                    self._buffer += chunk
                    reply = self._parse()
        except TimeoutError:
            raise _Unusable(f"timed out waiting for {what} from {self.peer}") from None
        except OSError as exc:
            raise _Unusable(f"connection to {self.peer} lost waiting for {what}: {_describe(exc)}") from exc
        return reply

    async def command(self, line: bytes, what: str) -> SmtpReply:
        self.write(line)
        return await self.reply(what)

    def _parse(self) -> SmtpReply | None:
        """Take one complete reply off the buffer, or None when it has not all arrived.

        RFC 5321 §4.2: every line is a three-digit code, then "-" when more lines follow, or SP (or nothing)
        on the last line. Lines already checked are not scanned again while the rest trickles in.
        """
        buffer = self._buffer
        start = self._scan
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                self._scan = start
                if len(buffer) > MAX_REPLY:
                    raise _Unusable(f"reply from {self.peer} longer than {MAX_REPLY} bytes")
                return None
            if end >= MAX_REPLY:
                raise _Unusable(f"reply from {self.peer} longer than {MAX_REPLY} bytes")
            if not buffer[start : start + 3].isdigit():
                line = bytes(buffer[start : min(end, start + 80)])
                raise _Unusable(f"malformed reply from {self.peer}: {line!r}")
            if buffer[start + 3] != 0x2D:  # not "-": the last line
                break
            start = end + 1
        # aiosmtplib and smtplib take the code of the last line; RFC 5321 §4.2.1 says all lines carry the same.
        code = int(buffer[start : start + 3])
        data = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        self._scan = 0
        if start == 0:
            text = data[4:].strip(b" \t\r\n")
        else:
            text = b"\n".join(line[4:].strip(b" \t\r\n") for line in data[:-1].split(b"\n"))
        return SmtpReply.parse(code, text.decode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass  # the connection is gone either way: nothing to report


def _extensions(ehlo: str) -> dict[str, str]:
    """EHLO keywords (lower case) and their parameters (RFC 5321 §4.1.1.1); the first line is the server's name."""
    found: dict[str, str] = {}
    for line in ehlo.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        keyword = keyword.lower()
        if keyword.startswith("auth="):
            # The pre-RFC 4954 "AUTH=LOGIN PLAIN" form, still sent beside (or instead of) "AUTH LOGIN PLAIN".
            params = f"{keyword[5:]} {params}"
            keyword = "auth"
        if keyword == "auth" and "auth" in found:
            params = f"{found['auth']} {params}"
        if keyword:
            found[keyword] = params.strip()
    return found


def _data(raw: bytes) -> bytes:
    """The DATA payload for ``raw``: CRLF line ends, dot-stuffed, terminated by "." (RFC 5321 §4.5.2, §4.1.1.4).

    A message that already uses CRLF goes out byte for byte, apart from the stuffed dots.
    """
    if not raw:
        return b".\r\n"
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        raw = _LINE_END.sub(b"\r\n", raw)
    # RFC 5321 §4.5.2: a line that starts with "." gets one more.
    if raw[:1] == b".":
        raw = b"." + raw
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n..")
    if raw[-2:] != b"\r\n":
        raw += b"\r\n"
    return raw + b".\r\n"


def _path(address: str) -> str | None:
    """The RFC 5321 path for ``address`` ("<>" for the null sender), or None when it cannot go on a command line."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if any(ch in address for ch in "<> \t\r\n\x00") or any(ord(ch) < 32 or ord(ch) == 127 for ch in address):
        return None
    return f"<{address}>"


class SmtpSession:
    """One SMTP connection to ``ip`` (the MX ``host``), reused for any number of messages.

    Never raises for remote refusals or network failures: ``send`` returns them in a SessionResult.
    With ``credentials`` (user, password) the session authenticates (RFC 4954) after EHLO, and only over
    TLS unless ``tls="none"`` says clear text is acceptable. ``pipelining`` tells whether the server offered
    RFC 2920; ``last_used`` (time.monotonic()) when the session last connected or ended a transaction,
    for pools that close idle connections.
    """

    def __init__(
        self,
        host: str,
        ip: str,
        port: int = 25,
        *,
        helo: str,
        source_address: str | None = None,
        timeout: float = 60.0,
        tls: str = "opportunistic",
        tls_context: ssl.SSLContext | None = None,
        require_verified_cert: bool = False,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
        if not helo or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in helo):
            raise ValueError(f"helo must be a domain or an address literal, not {helo!r}")
        if credentials is not None and any("\x00" in part for part in credentials):
            raise ValueError("credentials cannot contain NUL (RFC 4616 §2)")
        self.host = host
        self.ip = ip
        self.port = port
        self.helo = helo
        self.source_address = source_address
        self.timeout = timeout
        self.tls = tls
        self.tls_context = tls_context
        self.require_verified_cert = require_verified_cert
        self.credentials = credentials
        self.tls_version: str | None = None
        self.tls_verified: bool | None = None
        self.tls_failure: str | None = None
        self.error: str | None = None
        self.last_used = time.monotonic()
        self._wire: _Wire | None = None
        self._extensions: dict[str, str] = {}
        self._needs_rset = False
        self._peer = f"{ip}:{port}"

    @property
    def connected(self) -> bool:
        return self._wire is not None and self._wire.alive

    @property
    def pipelining(self) -> bool:
        """The server offered PIPELINING (RFC 2920) in its last EHLO reply."""
        return "pipelining" in self._extensions

    # -- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the session (greeting, EHLO, TLS, AUTH as configured). Failures are kept in ``error``, not raised."""
        await self._drop()
        self.error = None
        self.tls_version = self.tls_verified = self.tls_failure = None
        self._needs_rset = False
        try:
            await self._establish()
            if self.credentials is not None:
                await self._authenticate(self.credentials)
        except _Unusable as exc:
            self.error = str(exc)
            await self._drop()
        except BaseException:
            self._abort()  # cancelled half-way (mid-EHLO, mid-STARTTLS): never reuse what is left
            raise
        self.last_used = time.monotonic()

    async def _establish(self) -> None:
        if self.tls == "none":
            await self._open(tls=None)
            return
        verified = self.tls_context or _verified_context()
        try:
            await self._open(tls=verified)
            return
        except _TlsFailed as failure:
            if failure.verification and not self.require_verified_cert:
                first = failure
            elif self.tls == "opportunistic" and not failure.verification and not self.require_verified_cert:
                await self._fall_back_to_clear(failure)
                return
            else:
                self.tls_failure = str(failure)
                raise _Unusable(f"TLS required: {failure}") from failure
        # The certificate did not verify: encrypt anyway, and say so.
        try:
            await self._open(tls=_unverified_context())
        except _TlsFailed as failure:
            if self.tls != "opportunistic":
                self.tls_failure = str(failure)
                raise _Unusable(f"TLS required: {failure}") from failure
            await self._fall_back_to_clear(failure)
            return
        self.tls_verified = False
        self.tls_failure = f"certificate not verified for {self.host}: {first}"

    async def _fall_back_to_clear(self, failure: _TlsFailed) -> None:
        # No MTA-STS/DANE policy is known here (callers pass tls="require" when one applies): deliver in clear.
        if not failure.connection_alive:
            await self._open(tls=None)
        self.tls_failure = f"TLS failed, delivered in clear: {failure}"

    async def _dial(self) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(self.ip).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if self.source_address:
                sock.bind((self.source_address, 0))
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (self.ip, self.port)), self.timeout)
        except TimeoutError as exc:
            sock.close()
            raise _Unusable(f"timed out connecting to {self.ip}:{self.port}") from exc
        except OSError as exc:
            sock.close()
            raise _Unusable(f"cannot connect to {self.ip}:{self.port}: {_describe(exc)}") from exc
        return sock

    async def _open(self, *, tls: ssl.SSLContext | None) -> None:
        """Connect, read the greeting, EHLO, and (unless ``tls`` is None) secure the channel."""
        await self._drop()
        # Dial the chosen MX address ourselves (and from our source address); TLS then checks the
        # certificate against the MX name, not the IP.
        sock = await self._dial()
        implicit = self.tls == "implicit" and tls is not None
        try:
            async with asyncio.timeout(self.timeout):
                if implicit:
                    reader, writer = await asyncio.open_connection(
                        sock=sock, ssl=tls, server_hostname=self.host, ssl_handshake_timeout=self.timeout
                    )
                else:
                    reader, writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            sock.close()  # idempotent; the transport owns the socket only once the connection was made
            cert = _cert_error(exc)
            if cert is not None:
                raise _TlsFailed(_describe(cert), verification=True, connection_alive=False) from exc
            if implicit:
                raise _TlsFailed(_describe(exc), verification=False, connection_alive=False) from exc
            raise _Unusable(f"cannot connect to {self._peer}: {_describe(exc)}") from exc
        self._wire = wire = _Wire(reader, writer, self.timeout, self._peer)
        greeting = await wire.reply("the greeting")
        if greeting.code != 220:  # RFC 5321 §3.1: 554 here means "no SMTP service"
            await self._drop(quit=greeting.code != 421)
            raise _Unusable(f"greeting from {self._peer}: {greeting}")
        await self._hello()
        if tls is None:
            return
        if implicit:
            self._record_tls(tls)
            return
        if "starttls" not in self._extensions:
            if self.tls == "require" or self.require_verified_cert:
                await self._drop(quit=True)
                self.tls_failure = f"{self.host} does not offer STARTTLS"
                raise _Unusable(f"TLS required but {self.tls_failure}")
            return
        await self._starttls(wire, tls)
        # RFC 3207 §4.2: forget what the server said before TLS and ask again.
        await self._hello()
        self._record_tls(tls)

    async def _starttls(self, wire: _Wire, tls: ssl.SSLContext) -> None:
        reply = await wire.command(b"STARTTLS\r\n", "the reply to STARTTLS")
        if reply.code != 220:
            # STARTTLS refused with a reply: the clear session is still usable.
            alive = reply.code != 421 and wire.alive
            if not alive:
                await self._drop()
            raise _TlsFailed(f"STARTTLS: {reply}", verification=False, connection_alive=alive)
        if wire.pending:
            # Bytes after the 220 came in clear; read after the handshake they would pass for TLS-protected
            # replies (the STARTTLS injection of CVE-2011-0411 and RFC 7457 §2.1): drop the connection.
            await self._drop()
            raise _TlsFailed(
                "STARTTLS: the server sent data after its 220 reply", verification=False, connection_alive=False
            )
        try:
            async with asyncio.timeout(self.timeout):
                await wire.writer.start_tls(tls, server_hostname=self.host, ssl_handshake_timeout=self.timeout)
        except (OSError, TimeoutError) as exc:
            await self._drop()
            cert = _cert_error(exc)
            raise _TlsFailed(
                f"STARTTLS: {_describe(cert or exc)}", verification=cert is not None, connection_alive=False
            ) from exc

    def _record_tls(self, context: ssl.SSLContext) -> None:
        assert self._wire is not None
        ssl_object = self._wire.writer.get_extra_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object is not None else None
        self.tls_verified = _verifies(context)

    async def _hello(self) -> None:
        assert self._wire is not None
        wire = self._wire
        helo = self.helo.encode()
        reply = await wire.command(b"EHLO " + helo + b"\r\n", "the reply to EHLO")
        if reply.code == 250:
            self._extensions = _extensions(reply.text)
            return
        self._extensions = {}
        if reply.code != 421 and wire.alive:
            # RFC 5321 §4.1.4: a server that does not know EHLO may still take HELO.
            reply = await wire.command(b"HELO " + helo + b"\r\n", "the reply to HELO")
            if reply.code == 250:
                return
        await self._drop(quit=reply.code != 421)
        raise _Unusable(f"EHLO: {reply}")

    async def _authenticate(self, credentials: tuple[str, str]) -> None:
        """AUTH PLAIN (RFC 4616) or LOGIN, as the server offers, over TLS only unless tls="none" was chosen."""
        wire = self._wire
        assert wire is not None
        if self.tls_version is None and self.tls != "none":
            # A STARTTLS-stripping attacker must not get the password: no clear-text fallback with credentials.
            await self._drop(quit=True)
            raise _Unusable(f"AUTH not attempted: the connection to {self.host} is not encrypted")
        if self.tls_verified is False and self.tls == "opportunistic":
            # The same downgrade with a self-signed certificate: opportunistic TLS proves nothing about the peer.
            await self._drop(quit=True)
            raise _Unusable(f"AUTH not attempted: the certificate of {self.host} did not verify")
        mechanisms = self._extensions.get("auth", "").upper().split()
        user, password = (part.encode() for part in credentials)
        if "PLAIN" in mechanisms:
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd, as the RFC 4954 §4 initial response.
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            reply = await wire.command(b"AUTH PLAIN " + token + b"\r\n", "the reply to AUTH")
        elif "LOGIN" in mechanisms:
            reply = await wire.command(b"AUTH LOGIN " + base64.b64encode(user) + b"\r\n", "the reply to AUTH")
            if reply.code == 334:
                reply = await wire.command(base64.b64encode(password) + b"\r\n", "the reply to AUTH")
        else:
            await self._drop(quit=True)
            offered = " ".join(mechanisms) or "none"
            raise _Unusable(f"AUTH: {self.host} offers no PLAIN or LOGIN mechanism (offered: {offered})")
        if reply.code == 334:
            # RFC 4954 §4: a challenge we cannot answer; "*" cancels the exchange.
            reply = await wire.command(b"*\r\n", "the reply to AUTH")
        if reply.code != 235:
            await self._drop(quit=reply.code != 421)
            raise _Unusable(f"AUTH failed: {reply}")

    async def _drop(self, *, quit: bool = False) -> None:
        wire, self._wire = self._wire, None
        self._extensions = {}
        if wire is None:
            return
        if quit and wire.alive:
            try:
                wire.write(b"QUIT\r\n")
                await wire.reply("the reply to QUIT", within=min(self.timeout, 5.0))
            except _Unusable:
                pass  # the peer is going away anyway: nothing to report
            wire.close()
            await wire.wait_closed(min(self.timeout, 5.0))
        else:
            wire.close()

    def _abort(self) -> None:
        wire, self._wire = self._wire, None
        self._extensions = {}
        if wire is not None:
            wire.close()

    async def close(self) -> None:
        """Say QUIT and close the connection."""
        await self._drop(quit=True)

    # -- transactions ---------------------------------------------------------------------

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes, *, smtputf8: bool = False) -> SessionResult:
        """One transaction: MAIL, RCPT for each recipient, DATA when at least one was accepted.

        ``raw`` goes out as is (dot-stuffed) when its lines end in CRLF; a bare CR or LF becomes CRLF (no SMTP
        smuggling) and a final CRLF is added if missing. When the server offers PIPELINING (RFC 2920), MAIL,
        every RCPT and DATA go out in one write; otherwise one command at a time.
        """
        started = time.monotonic()
        if not self.connected:
            await self.connect()
        result = SessionResult(self.host, self.ip, self.port, self.tls_version, self.tls_verified)
        result.tls_failure = self.tls_failure
        wire = self._wire
        if wire is None:
            result.error = self.error or "not connected"
        else:
            try:
                await self._transaction(wire, result, mail_from, rcpt_to, raw, smtputf8)
            except _Unusable as exc:
                result.error = self.error = str(exc)
                await self._drop()
            except BaseException:
                self._abort()  # cancelled mid-transaction: replies would be out of step with commands
                raise
        self.last_used = time.monotonic()
        result.duration = self.last_used - started
        return result

    async def _transaction(
        self, wire: _Wire, result: SessionResult, mail_from: str, rcpt_to: list[str], raw: bytes, utf8: bool
    ) -> None:
        extensions = self._extensions
        utf8 = utf8 or not (mail_from.isascii() and all(address.isascii() for address in rcpt_to))
        if utf8 and "smtputf8" not in extensions:
            result.recipients = [RecipientResult(r, SmtpReply.local(R553_SMTPUTF8_UNSUPPORTED)) for r in rcpt_to]
            return
        encoding = "utf-8" if utf8 else "ascii"
        sender = _path(mail_from)
        if sender is None:
            local = SmtpReply.local(R501_SYNTAX_ADDRESS, f"sender {mail_from!r}")
            result.recipients = [RecipientResult(r, local) for r in rcpt_to]
            return
        # Recipients that cannot go on a command line are refused here and never sent.
        commands: list[bytes | None] = []
        for rcpt in rcpt_to:
            path = _path(rcpt)
            commands.append(None if path is None or path == "<>" else b"RCPT TO:" + path.encode(encoding) + b"\r\n")
        if not any(commands):
            result.recipients = [RecipientResult(r, SmtpReply.local(R501_SYNTAX_ADDRESS, repr(r))) for r in rcpt_to]
            return

        mail = b"MAIL FROM:" + sender.encode(encoding)
        if "size" in extensions:  # RFC 1870
            mail += b" SIZE=%d" % len(raw)
        if "8bitmime" in extensions and not raw.isascii():  # RFC 6152
            mail += b" BODY=8BITMIME"
        if utf8:  # RFC 6531
            mail += b" SMTPUTF8"
        mail += b"\r\n"

        if wire.pending:
            raise _Unusable(f"unexpected data from {self._peer} between transactions")
        if "pipelining" in extensions:
            data = await self._pipelined(wire, result, mail, commands, rcpt_to)
        else:
            data = await self._one_by_one(wire, result, mail, commands, rcpt_to)
        if data is None:
            return
        accepted = any(r.accepted for r in result.recipients)
        if data.code == 354 and accepted:
            body = _data(raw)
            if len(body) <= _BODY_CHUNK:
                wire.write(body)
                await wire.flush("the message")
            else:
                view = memoryview(body)
                for offset in range(0, len(body), _BODY_CHUNK):
                    wire.write(view[offset : offset + _BODY_CHUNK])
                    await wire.flush("the message")
            result.data_reply = await wire.reply("the reply to the end of data")
            self._needs_rset = False  # RFC 5321 §4.1.1.4: the end of data ends the transaction, whatever the reply
        elif data.code == 354:
            # RFC 2920 §3.1: DATA was accepted although no RCPT was; the client must then send an empty message
            # (the "." alone) rather than leave the server waiting for data. Its reply delivers nothing.
            data = await wire.command(b".\r\n", "the reply to an empty message")
            self._needs_rset = False
        elif accepted:
            result.data_reply = data  # DATA refused: the transaction stays open until RSET
        if data.code == 421 or (result.data_reply is not None and result.data_reply.code == 421):
            await self._drop()  # RFC 5321 §3.8: 421 means the server is closing the connection

    async def _pipelined(
        self, wire: _Wire, result: SessionResult, mail: bytes, commands: list[bytes | None], rcpt_to: list[str]
    ) -> SmtpReply | None:
        """RFC 2920: [RSET,] MAIL, every RCPT and DATA in one write; then the replies, in order. The DATA reply."""
        rset = self._needs_rset
        group = [b"RSET\r\n", mail] if rset else [mail]
        group += [command for command in commands if command is not None]
        group.append(b"DATA\r\n")
        self._needs_rset = True  # until the end of data, a failure leaves a transaction open
        wire.write(b"".join(group))
        await wire.flush("MAIL, RCPT and DATA")
        # RFC 2920 §3.1: check every reply in the group, in order, before doing anything else.
        if rset:
            reply = await wire.reply("the reply to RSET")
            if reply.code != 250:
                raise _Unusable(f"RSET: {reply}")
        mail_reply = await wire.reply("the reply to MAIL")
        if mail_reply.code == 421:
            await self._closing(result, mail_reply, rcpt_to)
            return None
        for rcpt, command in zip(rcpt_to, commands, strict=True):
            if command is None:
                reply = SmtpReply.local(R501_SYNTAX_ADDRESS, repr(rcpt))
            else:
                reply = await wire.reply("the reply to RCPT")
                if reply.code == 421:
                    await self._closing(result, reply, rcpt_to)
                    return None
            # When MAIL was refused, every RCPT was answered 503; MAIL's reply is the one that tells why.
            result.recipients.append(RecipientResult(rcpt, reply if mail_reply.code == 250 else mail_reply))
        return await wire.reply("the reply to DATA")

    async def _one_by_one(
        self, wire: _Wire, result: SessionResult, mail: bytes, commands: list[bytes | None], rcpt_to: list[str]
    ) -> SmtpReply | None:
        """MAIL, each RCPT and DATA, each after the previous reply. The DATA reply, None when DATA was not sent."""
        if self._needs_rset:
            reply = await wire.command(b"RSET\r\n", "the reply to RSET")
            if reply.code != 250:
                raise _Unusable(f"RSET: {reply}")
        self._needs_rset = True  # until the end of data, a failure leaves a transaction open
        mail_reply = await wire.command(mail, "the reply to MAIL")
        if mail_reply.code != 250:
            await self._closing(result, mail_reply, rcpt_to)
            return None
        # Each RCPT is answered on its own: a refusal of one does not stop the others (RFC 5321 §3.3).
        for rcpt, command in zip(rcpt_to, commands, strict=True):
            if command is None:
                reply = SmtpReply.local(R501_SYNTAX_ADDRESS, repr(rcpt))
            else:
                reply = await wire.command(command, "the reply to RCPT")
                if reply.code == 421:
                    await self._closing(result, reply, rcpt_to)
                    return None
            result.recipients.append(RecipientResult(rcpt, reply))
        if not any(r.accepted for r in result.recipients):
            return None  # RFC 5321 §3.3: no valid recipient, no DATA
        return await wire.command(b"DATA\r\n", "the reply to DATA")

    async def _closing(self, result: SessionResult, reply: SmtpReply, rcpt_to: list[str]) -> None:
        """``reply`` (MAIL refused, or 421 to any command) answers every recipient not answered yet."""
        answered = len(result.recipients)
        result.recipients += [RecipientResult(rcpt, reply) for rcpt in rcpt_to[answered:]]
        if reply.code == 421:
            await self._drop()  # RFC 5321 §3.8: the server is closing the connection
