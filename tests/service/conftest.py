"""A service Context on the test database, as the service tests build it."""

from __future__ import annotations

from typing import Any

import pytest

from agentpost.notify.bus import EventBus
from agentpost.service.context import Context, Sealer


@pytest.fixture
def ctx(db: Any) -> Context:
    return Context(
        db=db,
        sealer=Sealer("test-secret-key"),
        bus=EventBus(),
        routing_changed=lambda: None,
        hostname="mx.test",
        public_url="http://127.0.0.1",
    )
