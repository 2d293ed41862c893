"""Inbound step 2, decide: authentication results -> accept (with labels) | reject | defer, before the 250.

Pure: ``decide(auth, policy)`` reads ``AuthResults`` and the recipient inbox's ``InboxPolicy`` and
returns a ``Verdict``; the receive pipeline acts on it. With the default policy, first match wins:

- local delivery or a trusted client: accept (verdict ``internal``);
- DMARC pass: accept (``pass``);
- DMARC temperror, or DMARC fail while SPF, a DKIM key lookup or the ARC chain of a trusted sealer
  failed temporarily: ``451 4.7.1``,
  the sender retries; no verdict is built on a DNS failure (``temperror``);
- DMARC fail, but the ARC chain passes, its newest sealer is in ``mx.arc_trusted_sealers`` and it
  recorded dmarc=pass: accept (``arc``): RFC 8617 §7.2 local policy for forwarders and lists; never
  without configured sealers;
- DMARC fail under p=reject: ``550 5.7.1`` at DATA, refused before the 250, so no backscatter
  (``reject``);
- DMARC fail under p=quarantine: accept with labels ``spam`` and ``unauthenticated`` (``quarantine``);
- DMARC fail under p=none: accept with label ``unauthenticated`` (``unauthenticated``);
- no DMARC verdict (no record, permerror) but an SPF (MAIL FROM) or DKIM pass: accept (``neutral``);
- no pass at all: accept with label ``unauthenticated`` (``unauthenticated``).

An inbox's ``auth_policy`` changes two of these (``InboxPolicy``):

- ``dmarc_reject``: ``refuse`` (default) the DMARC p=reject failure at DATA, or ``quarantine`` it:
  store it with labels ``spam`` and ``unauthenticated``, as for p=quarantine (``quarantine``);
- ``unauthenticated``: the verdicts ``unauthenticated`` (no aligned pass, and no p=reject or
  p=quarantine asking for more) are stored with label ``unauthenticated`` (``label``, default), with
  ``spam`` and ``unauthenticated`` (``spam``) or with no label (``accept``).

``spam`` and ``unauthenticated`` are hidden from default listings (``include_spam``,
``include_unauthenticated``). The policy is the one after ``t=y`` (RFC 9989 §4.7: a domain testing
p=reject is quarantined, not refused). RFC 9989 §7.4 lets a receiver deviate from p=reject; this
default follows it, since refusing at DATA costs a legitimate sender nothing but a bounce from its
own MTA, while accepting a forgery puts it in front of an agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agentpost import model
from agentpost.inbound.authenticate import AuthResults
from agentpost.proto import codes
from agentpost.proto.codes import Reply

__all__ = ["DEFAULT_POLICY", "InboxPolicy", "Verdict", "decide"]

DMARC_REJECT_ACTIONS: Final = ("refuse", "quarantine")
UNAUTHENTICATED_ACTIONS: Final = ("label", "spam", "accept")


@dataclass(frozen=True, slots=True)
class InboxPolicy:
    """What one inbox does with mail that fails authentication (its ``auth_policy``)."""

    dmarc_reject: str = "refuse"  # refuse | quarantine
    unauthenticated: str = "label"  # label | spam | accept

    @classmethod
    def of(cls, stored: Mapping[str, Any] | None) -> InboxPolicy:
        """The policy from its stored form (the inbox's ``auth_policy`` JSON); unknown values mean the default."""
        stored = stored or {}
        dmarc_reject = stored.get("dmarc_reject")
        unauthenticated = stored.get("unauthenticated")
        return cls(
            dmarc_reject if dmarc_reject in DMARC_REJECT_ACTIONS else "refuse",
            unauthenticated if unauthenticated in UNAUTHENTICATED_ACTIONS else "label",
        )


DEFAULT_POLICY: Final = InboxPolicy()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with the message: ``reply`` set means refuse with it; otherwise store with ``labels``."""

    verdict: str  # internal | pass | arc | neutral | unauthenticated | quarantine | reject | temperror
    reasons: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    reply: Reply | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def decide(auth: AuthResults, policy: InboxPolicy = DEFAULT_POLICY) -> Verdict:
    if auth.internal:
        return Verdict("internal", (auth.note,))
    dmarc = auth.dmarc
    if dmarc is not None and dmarc.result == "pass":
        aligned = ([f"spf {dmarc.spf_aligned}"] if dmarc.spf_aligned else []) + [
            f"dkim {d}" for d in dmarc.dkim_aligned
        ]
        return Verdict("pass", (f"dmarc=pass from={dmarc.header_from} aligned: {', '.join(aligned)}",))
    if dmarc is not None and (dmarc.result == "temperror" or (dmarc.result == "fail" and auth.some_temperror)):
        why = (
            dmarc.reason if dmarc.result == "temperror" else "an SPF, DKIM or trusted ARC DNS lookup failed temporarily"
        )
        return Verdict(
            "temperror", (f"dmarc={dmarc.result} from={dmarc.header_from}: {why}",), reply=codes.R451_AUTH_TEMPFAIL
        )
    if dmarc is not None and dmarc.result == "fail" and auth.arc_trusted and auth.arc is not None:
        # RFC 8617 §7.2: a receiver may let a trusted sealer's ARC-Authentication-Results stand in for
        # authentication that forwarding broke.
        return Verdict(
            "arc",
            (
                f"dmarc=fail p={dmarc.policy} from={dmarc.header_from}: {dmarc.reason}",
                f"overridden: arc=pass, sealed by trusted {auth.arc.newest_sealer}, which recorded dmarc=pass",
            ),
        )
    if dmarc is not None and dmarc.result == "fail":
        reason = f"dmarc=fail p={dmarc.policy} from={dmarc.header_from}: {dmarc.reason}"
        if dmarc.disposition == "reject" and policy.dmarc_reject == "refuse":
            return Verdict("reject", (reason,), reply=codes.R550_DMARC_REJECT)
        if dmarc.disposition == "reject":
            why = "stored as quarantine: the inbox's auth_policy.dmarc_reject is quarantine"
            return Verdict("quarantine", (reason, why), (model.LABEL_SPAM, model.LABEL_UNAUTHENTICATED))
        if dmarc.disposition == "quarantine":
            return Verdict("quarantine", (reason,), (model.LABEL_SPAM, model.LABEL_UNAUTHENTICATED))
        return Verdict("unauthenticated", (reason,), _unauthenticated_labels(policy))
    dmarc_note = f"dmarc={dmarc.result}: {dmarc.reason}" if dmarc is not None else "dmarc not evaluated"
    if auth.any_pass:
        passed = ([f"spf {auth.spf.domain}"] if auth.spf is not None and auth.spf.result == "pass" else []) + [
            f"dkim {d.domain}" for d in auth.dkim if d.result == "pass"
        ]
        return Verdict("neutral", (dmarc_note, f"not aligned with From: {', '.join(passed)}"))
    spf_note = f"spf={auth.spf.result}" if auth.spf is not None else "spf not checked"
    dkim_note = ", ".join(f"dkim={d.result} {d.domain}" for d in auth.dkim) or "dkim=none"
    return Verdict(
        "unauthenticated", (dmarc_note, f"no pass: {spf_note}, {dkim_note}"), _unauthenticated_labels(policy)
    )


def _unauthenticated_labels(policy: InboxPolicy) -> tuple[str, ...]:
    if policy.unauthenticated == "accept":
        return ()
    if policy.unauthenticated == "spam":
        return (model.LABEL_SPAM, model.LABEL_UNAUTHENTICATED)
    return (model.LABEL_UNAUTHENTICATED,)
