"""What a delivery result means: the queue item's next state, events, suppressions, delay notices."""

from __future__ import annotations

from datetime import timedelta

from agentpost.model import utcnow
from agentpost.net.smtpclient import SessionResult, SmtpReply
from agentpost.outbound.deliver import Delivery
from agentpost.outbound.outcomes import Policy, notices_due, settle_delivery
from agentpost.store.queue import QueueItem

POLICY = Policy(retry_schedule=(60.0, 300.0), delay_notices=(3600.0, 86400.0))


def _item(*, age: float = 0.0, notices: int = 0, attempts: int = 1, expires_in: float = 86400.0) -> QueueItem:
    now = utcnow()
    return QueueItem(
        id="q1", organization_id="org", inbox_id="a@x.test", message_pk="m1", message_id="<m1@x.test>",
        thread_id="t1", blob_id="b1", mail_from="a@x.test", rcpt_domain="y.test",
        rcpt_to=["p@y.test", "q@y.test"], smtputf8=False, attempts=attempts, delay_notices=notices,
        expires_at=now + timedelta(seconds=expires_in), created_at=now - timedelta(seconds=age),
    )  # fmt: skip


def _result(**replies: str) -> Delivery:
    session = SessionResult("mx.y.test", "127.0.0.9", 25, "TLSv1.3", False, duration=0.012)
    parsed = {f"{k}@y.test": SmtpReply.parse(int(v[:3]), v[4:]) for k, v in replies.items()}
    return Delivery(replies=parsed, sessions=[session])


def _types(settlement: object) -> list[str]:
    return [event[2] for event in settlement.events]  # type: ignore[attr-defined]


def test_accepted_by_every_recipient_retires_the_item_as_delivered() -> None:
    settlement, refusals = settle_delivery(_item(), _result(p="250 2.0.0 ok", q="250 2.0.0 ok"), POLICY, utcnow())
    assert settlement.status == "delivered" and refusals == []
    assert _types(settlement) == ["message.delivered"]
    assert [a["tls_version"] for a in settlement.attempts] == ["TLSv1.3", "TLSv1.3"]
    assert settlement.attempts[0]["duration_ms"] == 12


def test_a_550_bounces_that_recipient_suppresses_it_and_keeps_the_delivered_one() -> None:
    result = _result(p="250 2.0.0 ok", q="550 5.1.1 no such user")
    settlement, refusals = settle_delivery(_item(), result, POLICY, utcnow())
    assert settlement.status == "bounced"
    assert _types(settlement) == ["message.delivered", "message.bounced"]
    bounce = settlement.events[1][3]["bounce"]
    assert (bounce["type"], bounce["sub_type"]) == ("Permanent", "MailboxDoesNotExist")
    assert [s[2] for s in settlement.suppressions] == ["q@y.test"]
    assert [r.rcpt for r in refusals] == ["q@y.test"]


def test_a_4xx_defers_only_the_pending_recipients_and_notifies_once() -> None:
    now = utcnow()
    settlement, _ = settle_delivery(_item(), _result(p="250 2.0.0 ok", q="451 4.3.0 later"), POLICY, now)
    assert settlement.status == "queued" and settlement.rcpt_to == ["q@y.test"]
    assert settlement.next_attempt_at is not None
    assert timedelta(seconds=54) <= settlement.next_attempt_at - now <= timedelta(seconds=66)
    assert _types(settlement) == ["message.delivered", "message.delayed"]
    assert settlement.delay_notices == 1
    again, _ = settle_delivery(_item(notices=1, attempts=2), _result(q="451 4.3.0 later"), POLICY, now)
    assert _types(again) == []  # already told, and no threshold crossed


def test_another_delay_notice_is_sent_when_the_message_crosses_a_threshold_age() -> None:
    assert notices_due(POLICY, 10) == 1 and notices_due(POLICY, 3600) == 2 and notices_due(POLICY, 90000) == 3
    settlement, _ = settle_delivery(
        _item(age=4000, notices=1, attempts=5), _result(q="421 4.7.0 busy"), POLICY, utcnow()
    )
    assert _types(settlement) == ["message.delayed"] and settlement.delay_notices == 2


def test_a_deferral_after_the_lifetime_is_a_transient_bounce_without_suppression() -> None:
    item = _item(expires_in=-1)
    settlement, refusals = settle_delivery(item, _result(q="451 4.3.0 later"), POLICY, utcnow())
    assert settlement.status == "bounced" and [r.rcpt for r in refusals] == ["q@y.test"]
    assert settlement.events[0][3]["bounce"]["type"] == "Transient"
    assert settlement.suppressions == []
