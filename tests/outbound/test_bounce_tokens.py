"""VERP and unsubscribe address tokens, and what a returned bounce report settles: pure tables."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from agentpost.model import new_id
from agentpost.outbound.bounces import BOUNCE, UNSUBSCRIBE, AddressTokens, Returned, settle_report, unsubscribers
from agentpost.outbound.outcomes import SentRef
from agentpost.proto.dsn import BouncedRecipient, BounceReport

TOKENS = AddressTokens(b"k" * 32)
NOW = datetime(2026, 11, 21, 7, 0, tzinfo=UTC)
SENT = SentRef("org_1", "agent@agents.example.test", "thr_1", "<m1@agents.example.test>")


def test_verp_address_round_trips_and_fits_rfc_5321_local_part_limit() -> None:
    pk = new_id("msg_")
    for kind, address in ((BOUNCE, TOKENS.verp(pk, "agents.example.test")),
                          (UNSUBSCRIBE, TOKENS.unsubscribe(pk, "agents.example.test"))):  # fmt: skip
        local, _, domain = address.partition("@")
        assert domain == "agents.example.test"
        assert len(local) <= 64  # RFC 5321 §4.5.3.1.1
        assert TOKENS.read(local) == Returned(kind, pk)
        assert TOKENS.read(local.upper()) == Returned(kind, pk)  # MTAs that fold case


@pytest.mark.parametrize(
    "mutate",
    [
        lambda local: local[:-1] + ("0" if local[-1] != "0" else "1"),  # MAC altered
        lambda local: local[:9] + ("0" if local[9] != "0" else "1") + local[10:],  # message id altered
        lambda local: "unsubscribe+" + local.partition("+")[2],  # a bounce token used for unsubscribe
        lambda local: local + "0",  # too long
        lambda local: local.partition("+")[2],  # no prefix
        lambda local: "bounces+",
    ],
)
def test_a_tampered_token_is_not_ours(mutate: Any) -> None:
    local = TOKENS.verp(new_id("msg_"), "d.test").partition("@")[0]
    assert TOKENS.read(mutate(local)) is None


def test_another_key_does_not_accept_the_token() -> None:
    local = TOKENS.verp(new_id("msg_"), "d.test").partition("@")[0]
    assert AddressTokens(b"x" * 32).read(local) is None


def _attempt(rcpt: str, outcome: str = "delivered", queue_id: str = "q_1") -> Any:
    return SimpleNamespace(rcpt=rcpt, outcome=outcome, queue_id=queue_id)


def _report(*recipients: BouncedRecipient, kind: str = "dsn") -> BounceReport:
    return BounceReport(list(recipients), None, None, kind, "Permanent", "General")


FAILED = BouncedRecipient("bob@remote.test", "5.1.1", "failed", "smtp; 550 5.1.1 user unknown", "mx.remote.test")
DELAYED = BouncedRecipient("bob@remote.test", "4.2.2", "delayed", "smtp; 452 4.2.2 mailbox full", None)
EXPIRED = BouncedRecipient("bob@remote.test", "4.4.7", "failed", "delivery time expired", None)


@pytest.mark.parametrize(
    "attempts, reported, outcomes, event_type, suppressed",
    [
        ([_attempt("Bob@remote.test")], FAILED, ["bounced"], "Permanent", ["Bob@remote.test"]),
        ([_attempt("bob@remote.test")], DELAYED, ["deferred"], None, []),
        # Action: failed after 4.x.x retries (RFC 3464 §2.3.3): a Transient bounce, not suppressed.
        ([_attempt("bob@remote.test")], EXPIRED, ["bounced"], "Transient", []),
        # One recipient only: a rewritten Final-Recipient (forwarding) is still that recipient.
        ([_attempt("alias@remote.test")], FAILED, ["bounced"], "Permanent", ["alias@remote.test"]),
        # Several recipients: an address we did not send to matches nobody.
        ([_attempt("a@remote.test"), _attempt("c@remote.test")], FAILED, [], None, []),
        # Already bounced (a report delivered twice): nothing new.
        ([_attempt("bob@remote.test", "bounced")], FAILED, [], None, []),
        # Never delivered to anyone remote: nothing to match.
        ([], FAILED, [], None, []),
    ],
)
def test_settle_report(
    attempts: list[Any], reported: BouncedRecipient, outcomes: list[str], event_type: str | None, suppressed: list[str]
) -> None:
    settlement = settle_report(SENT, "msg_1", _report(reported), attempts, NOW)
    assert settlement.item_id is None  # the queue row is not touched
    assert [a["outcome"] for a in settlement.attempts] == outcomes
    assert [e[3]["bounce"]["type"] for e in settlement.events] == ([event_type] if event_type else [])
    assert [s[2] for s in settlement.suppressions] == suppressed
    for row in settlement.attempts:
        assert row["message_pk"] == "msg_1" and row["queue_id"] == "q_1"


def test_the_attempt_row_carries_the_reported_reply() -> None:
    settlement = settle_report(SENT, "msg_1", _report(FAILED), [_attempt("bob@remote.test")], NOW)
    (row,) = settlement.attempts
    assert (row["code"], row["enhanced"], row["remote_host"]) == (550, "5.1.1", "mx.remote.test")
    event = settlement.events[0]
    assert event[:3] == ("org_1", "agent@agents.example.test", "message.bounced")
    assert event[3]["bounce"]["recipients"] == [{"address": "bob@remote.test", "status": "5.1.1"}]
    assert settlement.suppressions == [
        ("org_1", "agent@agents.example.test", "bob@remote.test", "bounced", "smtp; 550 5.1.1 user unknown")
    ]


@pytest.mark.parametrize(
    "to, senders, expected",
    [
        (["Bob <Bob@remote.test>", "carol@remote.test"], ["bob@remote.test", ""], ["bob@remote.test"]),
        (["bob@remote.test", "carol@remote.test"], ["eve@remote.test"], []),
        (["bob@remote.test"], ["forwarder@elsewhere.test"], ["bob@remote.test"]),
        (["bob@remote.test"], ["", "Bob@Remote.test"], ["bob@remote.test"]),
    ],
)
def test_unsubscribers(to: list[str], senders: list[str], expected: list[str]) -> None:
    row = SimpleNamespace(to=to, cc=None, bcc=None)
    assert unsubscribers(row, senders) == expected
