"""ListSet.decide: the most specific scope wins (inbox address > inbox domain > org address > org
domain), block beats allow at the same specificity, and directions do not mix."""

from __future__ import annotations

import pytest

from agentpost.store.lists import ListSet

INBOX, ORG = True, False


def lists(*entries: tuple[bool, str, str, str]) -> ListSet:
    return ListSet(frozenset(entries))


@pytest.mark.parametrize(
    "entries, address, expected",
    [
        ((), "a@x.example", None),
        (((ORG, "send", "block", "x.example"),), "a@x.example", "block"),
        (((ORG, "send", "block", "x.example"), (ORG, "send", "allow", "a@x.example")), "a@x.example", "allow"),
        (((ORG, "send", "allow", "a@x.example"), (INBOX, "send", "block", "x.example")), "a@x.example", "block"),
        (((INBOX, "send", "block", "x.example"), (INBOX, "send", "allow", "a@x.example")), "a@x.example", "allow"),
        (((INBOX, "send", "allow", "x.example"), (INBOX, "send", "block", "x.example")), "b@x.example", "block"),
        (((INBOX, "receive", "block", "x.example"),), "a@x.example", None),  # another direction
        (((ORG, "send", "block", "a@x.example"),), "A@X.Example", "block"),  # case-insensitive
        (((ORG, "send", "block", "x.example"),), "a@sub.x.example", None),  # a domain is exact
    ],
)
def test_decide(entries: tuple[tuple[bool, str, str, str], ...], address: str, expected: str | None) -> None:
    assert lists(*entries).decide("send", address) == expected
