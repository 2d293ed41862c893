"""Label sets as stored: a compact JSON array text, so LIKE filters work on every backend."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache

import sqlalchemy as sa


@lru_cache(maxsize=1024)
def _dump(labels: frozenset[str]) -> str:
    return json.dumps(sorted(labels), separators=(",", ":"))


def dump(labels: Iterable[str]) -> str:
    return _dump(frozenset(labels))


def load(text: str | None) -> list[str]:
    if not text:
        return []
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []


def has(column: sa.ColumnElement[str], label: str) -> sa.ColumnElement[bool]:
    # Label names are validated to exclude '"', '%', '_' wildcards are escaped.
    escaped = label.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(f'%"{escaped}"%', escape="\\")
