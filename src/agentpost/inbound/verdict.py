"""Inbound step 2, decide: authentication results -> accept (with labels) | reject | defer, before the 250.

Pure: ``decide(auth)`` reads ``AuthResults`` and returns a ``Verdict``; the receive pipeline acts on
it. The default policy (per-inbox policies may come later), first match wins:

- local delivery or a trusted client: accept (verdict ``internal``);
- DMARC pass: accept (``pass``);
- DMARC temperror, or DMARC fail while SPF or a DKIM key lookup failed temporarily: ``451 4.7.1``,
  the sender retries; no verdict is built on a DNS failure (``temperror``);
- DMARC fail under p=reject: ``550 5.7.1`` at DATA, refused before the 250, so no backscatter
  (``reject``);
- DMARC fail under p=quarantine: accept with labels ``spam`` and ``unauthenticated`` (``quarantine``);
- DMARC fail under p=none: accept with label ``unauthenticated`` (``unauthenticated``);
- no DMARC verdict (no record, permerror) but an SPF (MAIL FROM) or DKIM pass: accept (``neutral``);
- no pass at all: accept with label ``unauthenticated`` (``unauthenticated``).

``spam`` and ``unauthenticated`` are hidden from default listings (``include_spam``,
``include_unauthenticated``). The policy is the one after ``t=y`` (RFC 9989 §4.7: a domain testing
p=reject is quarantined, not refused). RFC 9989 §7.4 lets a receiver deviate from p=reject; this
default follows it, since refusing at DATA costs a legitimate sender nothing but a bounce from its
own MTA, while accepting a forgery puts it in front of an agent.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentpost import model
from agentpost.inbound.authenticate import AuthResults
from agentpost.proto import codes
from agentpost.proto.codes import Reply

__all__ = ["Verdict", "decide"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with the message: ``reply`` set means refuse with it; otherwise store with ``labels``."""

    verdict: str  # internal | pass | neutral | unauthenticated | quarantine | reject | temperror
    reasons: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    reply: Reply | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def decide(auth: AuthResults) -> Verdict:
    if auth.internal:
        return Verdict("internal", (auth.note,))
    dmarc = auth.dmarc
    if dmarc is not None and dmarc.result == "pass":
        aligned = ([f"spf {dmarc.spf_aligned}"] if dmarc.spf_aligned else []) + [
            f"dkim {d}" for d in dmarc.dkim_aligned
        ]
        return Verdict("pass", (f"dmarc=pass from={dmarc.header_from} aligned: {', '.join(aligned)}",))
    if dmarc is not None and (dmarc.result == "temperror" or (dmarc.result == "fail" and auth.some_temperror)):
        why = dmarc.reason if dmarc.result == "temperror" else "an SPF or DKIM DNS lookup failed temporarily"
        return Verdict(
            "temperror", (f"dmarc={dmarc.result} from={dmarc.header_from}: {why}",), reply=codes.R451_AUTH_TEMPFAIL
        )
    if dmarc is not None and dmarc.result == "fail":
        reason = f"dmarc=fail p={dmarc.policy} from={dmarc.header_from}: {dmarc.reason}"
        if dmarc.disposition == "reject":
            return Verdict("reject", (reason,), reply=codes.R550_DMARC_REJECT)
        if dmarc.disposition == "quarantine":
            return Verdict("quarantine", (reason,), (model.LABEL_SPAM, model.LABEL_UNAUTHENTICATED))
        return Verdict("unauthenticated", (reason,), (model.LABEL_UNAUTHENTICATED,))
    dmarc_note = f"dmarc={dmarc.result}: {dmarc.reason}" if dmarc is not None else "dmarc not evaluated"
    if auth.any_pass:
        passed = ([f"spf {auth.spf.domain}"] if auth.spf is not None and auth.spf.result == "pass" else []) + [
            f"dkim {d.domain}" for d in auth.dkim if d.result == "pass"
        ]
        return Verdict("neutral", (dmarc_note, f"not aligned with From: {', '.join(passed)}"))
    spf_note = f"spf={auth.spf.result}" if auth.spf is not None else "spf not checked"
    dkim_note = ", ".join(f"dkim={d.result} {d.domain}" for d in auth.dkim) or "dkim=none"
    return Verdict("unauthenticated", (dmarc_note, f"no pass: {spf_note}, {dkim_note}"), (model.LABEL_UNAUTHENTICATED,))
