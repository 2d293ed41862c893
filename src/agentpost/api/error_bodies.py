"""The API's JSON error bodies ({name, message, errors?, fix?}), shared by the FastAPI handlers
(api/app.py) and the send route's ASGI front (api/send_route.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentpost.errors import AgentpostError, Invalid


def body(name: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "message": message, **{k: v for k, v in extra.items() if v is not None}}


def for_error(exc: AgentpostError) -> dict[str, Any]:
    errors = exc.errors if isinstance(exc, Invalid) and exc.errors else None
    return body(exc.name, exc.message, errors=errors, fix=exc.fix)


def for_validation(errors: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A 400 body from pydantic's errors; FastAPI's "body" prefix is not part of the path."""
    paths = [
        {"path": ".".join(str(p) for p in err.get("loc", ()) if p != "body"), "message": str(err.get("msg", ""))}
        for err in errors
    ]
    return body("ValidationError", "request is not valid", errors=paths)
