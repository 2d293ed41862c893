"""One outbound SMTP session to one host (aiosmtplib): EHLO, STARTTLS, MAIL/RCPT/DATA, per-recipient replies."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from agentpost.proto.codes import R501_SYNTAX_ADDRESS, Reply

TlsMode = Literal["opportunistic", "require", "none", "implicit"]
TLS_MODES: tuple[str, ...] = ("opportunistic", "require", "none", "implicit")

# RFC 3463 §2: class.subject.detail at the start of the reply text; the class repeats the code's first digit.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


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
    tls_failure: str | None = None  # why TLS was not used or not verified (the fallback taken)

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
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, aiosmtplib.SMTPException) else text


def _cert_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc``, if that is what it was (aiosmtplib may wrap it)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _unverified_context() -> ssl.SSLContext:
    # RFC 7435 opportunistic security: an encrypted but unauthenticated channel beats clear text.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _verifies(context: ssl.SSLContext) -> bool:
    return context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


class SmtpSession:
    """One SMTP connection to ``ip`` (the MX ``host``), reused for any number of messages.

    Never raises for remote refusals or network failures: ``send`` returns them in a SessionResult.
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
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
        self.host = host
        self.ip = ip
        self.port = port
        self.helo = helo
        self.source_address = source_address
        self.timeout = timeout
        self.tls = tls
        self.tls_context = tls_context
        self.require_verified_cert = require_verified_cert
        self.tls_version: str | None = None
        self.tls_verified: bool | None = None
        self.tls_failure: str | None = None
        self.error: str | None = None
        self._smtp: aiosmtplib.SMTP | None = None
        self._needs_rset = False

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    # -- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the session (greeting, EHLO, TLS as configured). Failures are kept in ``error``, not raised."""
        await self._drop()
        self.error = None
        self.tls_version = self.tls_verified = self.tls_failure = None
        self._needs_rset = False
        try:
            await self._establish()
        except _Unusable as exc:
            self.error = str(exc)
            await self._drop()

    async def _establish(self) -> None:
        if self.tls == "none":
            await self._open(tls=None)
            return
        verified = self.tls_context or ssl.create_default_context()
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
                raise _Unusable(f"TLS required: {failure}") from failure
        # The certificate did not verify: encrypt anyway, and say so.
        try:
            await self._open(tls=_unverified_context())
        except _TlsFailed as failure:
            if self.tls != "opportunistic":
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
        sock = await self._dial()
        implicit = self.tls == "implicit" and tls is not None
        # Dial the chosen MX address ourselves, and hand aiosmtplib the socket with `hostname`: certificates
        # are then checked against the MX name, not the IP.
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            sock=sock,
            local_hostname=self.helo,
            timeout=self.timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=tls if implicit else None,
        )
        self._smtp = smtp
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self._drop()
            sock.close()  # idempotent; aiosmtplib does not own the socket when the connection was never made
            if _cert_error(exc):
                raise _TlsFailed(_describe(_cert_error(exc) or exc), verification=True, connection_alive=False) from exc
            if implicit and not isinstance(exc, aiosmtplib.SMTPResponseException):
                raise _TlsFailed(_describe(exc), verification=False, connection_alive=False) from exc
            raise _Unusable(f"greeting from {self.ip}:{self.port}: {_describe(exc)}") from exc
        await self._hello()
        if tls is None:
            return
        if implicit:
            self._record_tls(tls)
            return
        if not smtp.supports_extension("starttls"):
            if self.tls == "require" or self.require_verified_cert:
                await self._drop(quit=True)
                raise _Unusable(f"TLS required but {self.host} does not offer STARTTLS")
            return
        try:
            await smtp.starttls(server_hostname=self.host, tls_context=tls, timeout=self.timeout)
        except aiosmtplib.SMTPResponseException as exc:
            # STARTTLS refused with a reply: the clear session is still usable.
            alive = self.connected
            if not alive:
                await self._drop()
            raise _TlsFailed(f"STARTTLS: {_describe(exc)}", verification=False, connection_alive=alive) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self._drop()
            cert = _cert_error(exc)
            raise _TlsFailed(
                f"STARTTLS: {_describe(cert or exc)}", verification=cert is not None, connection_alive=False
            ) from exc
        # RFC 3207 §4.2: forget what the server said before TLS and ask again.
        await self._hello()
        self._record_tls(tls)

    def _record_tls(self, context: ssl.SSLContext) -> None:
        assert self._smtp is not None
        ssl_object = self._smtp.get_transport_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object is not None else None
        self.tls_verified = _verifies(context)

    async def _hello(self) -> None:
        assert self._smtp is not None
        try:
            try:
                await self._smtp.ehlo(hostname=self.helo)
            except aiosmtplib.SMTPHeloError:
                if not self.connected:
                    raise
                await self._smtp.helo(hostname=self.helo)  # RFC 5321 §4.1.4: fall back to HELO
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self._drop()
            raise _Unusable(f"EHLO: {_describe(exc)}") from exc

    async def _drop(self, *, quit: bool = False) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        if quit and smtp.is_connected:
            try:
                await smtp.quit(timeout=min(self.timeout, 5.0))
            except (aiosmtplib.SMTPException, OSError):
                pass  # the peer is going away anyway: nothing to report
        smtp.close()

    async def close(self) -> None:
        """Say QUIT and close the connection."""
        await self._drop(quit=True)

    # -- transactions ---------------------------------------------------------------------

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes, *, smtputf8: bool = False) -> SessionResult:
        """One transaction: MAIL, RCPT for each recipient, DATA when at least one was accepted.

        ``raw`` goes out as is (dot-stuffed) when its lines end in CRLF; aiosmtplib turns a bare CR or LF
        into CRLF (no SMTP smuggling) and adds a final CRLF if missing. Commands are sent one at a time:
        aiosmtplib cannot pipeline (RFC 2920).
        """
        started = time.monotonic()
        if not self.connected:
            await self.connect()
        result = SessionResult(self.host, self.ip, self.port, self.tls_version, self.tls_verified)
        result.tls_failure = self.tls_failure
        if self._smtp is None:
            result.error = self.error or "not connected"
        else:
            try:
                await self._transaction(self._smtp, result, mail_from, rcpt_to, raw, smtputf8)
            except (aiosmtplib.SMTPException, OSError) as exc:
                result.error = _describe(exc)
                self.error = result.error
                await self._drop()
        result.duration = time.monotonic() - started
        return result

    async def _command(self, smtp: aiosmtplib.SMTP, *args: bytes) -> SmtpReply:
        response = await smtp.execute_command(*args, timeout=self.timeout)
        return SmtpReply.parse(response.code, response.message)

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, result: SessionResult, mail_from: str, rcpt_to: list[str], raw: bytes, utf8: bool
    ) -> None:
        if self._needs_rset:
            rset = await self._command(smtp, b"RSET")
            if rset.code != 250:
                raise aiosmtplib.SMTPResponseException(rset.code, f"RSET: {rset.text}")
            self._needs_rset = False

        def refuse_all(reply: SmtpReply) -> None:
            result.recipients = [RecipientResult(rcpt, reply) for rcpt in rcpt_to]

        utf8 = utf8 or not all(address.isascii() for address in [mail_from, *rcpt_to])
        if utf8 and not smtp.supports_extension("smtputf8"):
            refuse_all(SmtpReply.local(R553_SMTPUTF8_UNSUPPORTED))
            return
        encoding = "utf-8" if utf8 else "ascii"
        sender = _path(mail_from)
        if sender is None:
            refuse_all(SmtpReply.local(R501_SYNTAX_ADDRESS, f"sender {mail_from!r}"))
            return

        params: list[bytes] = []
        if smtp.supports_extension("size"):  # RFC 1870
            params.append(b"SIZE=%d" % len(raw))
        if smtp.supports_extension("8bitmime") and _EIGHT_BIT.search(raw):  # RFC 6152
            params.append(b"BODY=8BITMIME")
        if utf8:  # RFC 6531
            params.append(b"SMTPUTF8")

        self._needs_rset = True  # until DATA completes, a failure leaves a transaction open
        mail = await self._command(smtp, b"MAIL", b"FROM:" + sender.encode(encoding), *params)
        if mail.code != 250:
            refuse_all(mail)
            return

        # Each RCPT is answered on its own: a refusal of one does not stop the others (RFC 5321 §3.3).
        for rcpt in rcpt_to:
            path = _path(rcpt)
            if path is None or path == "<>":
                reply = SmtpReply.local(R501_SYNTAX_ADDRESS, repr(rcpt))
            else:
                reply = await self._command(smtp, b"RCPT", b"TO:" + path.encode(encoding))
            result.recipients.append(RecipientResult(rcpt, reply))
        if not any(r.accepted for r in result.recipients):
            return  # RFC 5321 §3.3: no valid recipient, no DATA

        try:
            response = await smtp.data(raw, timeout=self.timeout)
        except aiosmtplib.SMTPDataError as exc:
            result.data_reply = SmtpReply.parse(exc.code, exc.message)
            return
        result.data_reply = SmtpReply.parse(response.code, response.message)
        self._needs_rset = False


def _path(address: str) -> str | None:
    """The RFC 5321 path for ``address`` ("<>" for the null sender), or None when it cannot go on a command line."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if any(ch in address for ch in "<> \t\r\n\x00") or any(ord(ch) < 32 or ord(ch) == 127 for ch in address):
        return None
    return f"<{address}>"
