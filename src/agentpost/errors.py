"""agentpost errors.

AgentpostError
 ├─ NotFound            404   (also for anything outside the caller's scope)
 ├─ Conflict            409
 ├─ Invalid             422   field errors in .errors
 ├─ BadRequest          400
 ├─ Unauthorized        401
 ├─ Forbidden           403
 ├─ RateLimited         429   .retry_after
 └─ Rejected            an SMTP refusal: .reply (sent) and .reason (logged only)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentpost.proto.codes import Reply


class AgentpostError(Exception):
    status = 500
    name = "InternalError"

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


class NotFound(AgentpostError):
    status = 404
    name = "NotFoundError"


class Conflict(AgentpostError):
    status = 409
    name = "ConflictError"


class BadRequest(AgentpostError):
    status = 400
    name = "ValidationError"


class Invalid(AgentpostError):
    status = 422
    name = "ValidationError"

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class Unauthorized(AgentpostError):
    status = 401
    name = "UnauthorizedError"


class Forbidden(AgentpostError):
    status = 403
    name = "ForbiddenError"


class RateLimited(AgentpostError):
    status = 429
    name = "RateLimitError"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(Exception):
    """An SMTP refusal. ``reply`` goes to the peer; ``reason`` goes only to the log."""

    def __init__(self, reply: Reply, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
