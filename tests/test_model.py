"""Ids: time-ordered base32hex text, the same digits as the standard encoder, and a time window as an id range."""

from __future__ import annotations

import base64
import os
import time

from agentpost.model import _base32hex, id_floor, id_time_ms, new_id


def test_ids_are_the_standard_base32hex_digits_of_their_128_bits() -> None:
    for raw in [bytes(16), b"\xff" * 16, *(os.urandom(16) for _ in range(2000))]:
        expected = base64.b32hexencode(raw)[:26].decode().lower()
        assert _base32hex(int.from_bytes(raw, "big")) == expected


def test_ids_carry_their_creation_time_and_sort_by_it() -> None:
    before = int(time.time() * 1000)
    first = new_id("msg_")
    time.sleep(0.002)
    second = new_id("msg_")
    after = int(time.time() * 1000)
    assert first.startswith("msg_") and len(first) == 4 + 26
    assert before <= id_time_ms(first, "msg_") <= id_time_ms(second, "msg_") <= after
    assert first < second
    assert id_floor("msg_", id_time_ms(second, "msg_")) <= second
    assert id_floor("msg_", after + 1) > second
    assert len({new_id() for _ in range(1000)}) == 1000
