"""SMTP replies with enhanced status codes (RFC 5321 §4.2, RFC 3463) used in production."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str  # RFC 3463, e.g. "5.1.1"
    text: str  # generic: sent to the peer

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


R220_READY = Reply(220, "2.0.0", "Ready to start TLS")
R221_BYE = Reply(221, "2.0.0", "Bye")
R250_OK = Reply(250, "2.0.0", "OK")
R250_SENDER_OK = Reply(250, "2.1.0", "Sender OK")
R250_RCPT_OK = Reply(250, "2.1.5", "Recipient OK")
R250_QUEUED = Reply(250, "2.0.0", "OK: message accepted")
R250_RESET = Reply(250, "2.0.0", "Reset OK")
R354_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
R421_TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address, try later")
R421_SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try later")
R421_TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
R450_RATE_LIMITED = Reply(450, "4.7.1", "Too many messages from your address, try later")
R451_LOCAL_ERROR = Reply(451, "4.3.0", "Local error, try again later")
R451_AUTH_TEMPFAIL = Reply(451, "4.7.1", "Sender authentication failed temporarily, try again later")
R452_TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
R500_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
R501_SYNTAX_ADDRESS = Reply(501, "5.1.3", "Bad address syntax")
R503_BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
R550_NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
R550_RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
R550_INBOX_PAUSED = Reply(550, "5.2.1", "Mailbox disabled")
R550_DMARC_REJECT = Reply(550, "5.7.1", "Message refused by the sender domain's DMARC policy")
# RFC 3463 §3.8 X.7.1: delivery not authorized, here by the recipient inbox's receive or reply lists.
R550_SENDER_BLOCKED = Reply(550, "5.7.1", "Sender not accepted by the recipient's policy")
R552_TOO_BIG = Reply(552, "5.3.4", "Message too big for system")
R554_NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
R554_TRANSACTION_FAILED = Reply(554, "5.6.0", "Transaction failed: message refused")
