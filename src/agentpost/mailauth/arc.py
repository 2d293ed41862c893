"""ARC chain validation (RFC 8617 §5.2): the ARC sets of a received message, the newest AMS and every AS, keys by DNS.

``verify(resolver, raw)`` returns one ``ArcResult``: the chain validation status of RFC 8617 §4.4
(``none``, ``pass``, ``fail``) with a reason, the number of ARC sets, the ``d=`` of every
ARC-Seal (the sealers, i=1 first), their ``cv=`` values and the oldest-pass instance (§5.2 step 5).
A key lookup that fails temporarily gives ``temperror`` instead of a verdict, unless another
signature already failed (one failure is enough for ``fail``).

The order of RFC 8617 §5.2:

1. collect the ARC sets (ARC-Authentication-Results, ARC-Message-Signature, ARC-Seal) by ``i=``;
   none -> ``none``; an instance above 50 -> ``fail``;
2. the newest ARC-Seal says ``cv=fail`` -> ``fail``;
3. structure (§5.1.1, §4.2.1): each instance 1..N has exactly one field of each kind, ``cv=none``
   at i=1 only, ``cv=pass`` above it -> otherwise ``fail``;
4. the newest ARC-Message-Signature verifies like a DKIM-Signature (§4.1.2) -> otherwise ``fail``;
5. older AMSs are verified only to find the oldest-pass instance;
6. every ARC-Seal verifies (§4.1.3: relaxed header canonicalisation over the ARC sets 1..i in
   order, AAR, AMS, AS within a set, the seal's own b= emptied) -> otherwise ``fail``;
7. ``pass``.

Parsing, canonicalisation and the key operations are those of ``mailauth.dkim_verify`` (OpenSSL
through ``cryptography``); everything CPU-bound is done before the key lookups, which run
concurrently, one per distinct key name.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from agentpost.mailauth.dkim import (
    _DNS_NAME,
    ED25519_SHA256,
    RSA_SHA256,
    _crlf_lines,
    _relaxed_body,
    _relaxed_header,
    _split_message,
)
from agentpost.mailauth.dkim_verify import (
    _FWS,
    MAX_HEADER_FIELDS,
    MAX_SIGNATURE_FIELD,
    MAX_SIGNED_NAMES,
    OFFLOAD_BYTES,
    _base64,
    _blanked_signature,
    _canonicalization,
    _fetch,
    _Invalid,
    _load_key,
    _number,
    _parse_tags,
    _signature_ok,
    _signed_fields,
    _simple_body,
    _split_fields,
    _value_text,
)
from agentpost.net.dns import DnsError, Resolver

__all__ = ["MAX_INSTANCES", "ArcResult", "ArcStatus", "verify"]

ArcStatus = Literal["none", "pass", "fail", "temperror"]

# RFC 8617 §4.2.1: instance values run from 1 to 50; a message with more sets fails (§5.2 step 1).
MAX_INSTANCES: Final = 50

_AAR: Final = b"arc-authentication-results"
_AMS: Final = b"arc-message-signature"
_AS: Final = b"arc-seal"
_KINDS: Final = (_AAR, _AMS, _AS)  # RFC 8617 §5.1.1: the order within a set, for the seal's hash
_TITLES: Final = {_AAR: "ARC-Authentication-Results", _AMS: "ARC-Message-Signature", _AS: "ARC-Seal"}
# RFC 8617 §4.1.1: AAR = "i=" instance ";" authres-payload (not a tag-list).
_AAR_INSTANCE: Final = re.compile(r"[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([0-9]{1,5})[ \t\r\n]*;")
_COMMENT: Final = re.compile(r"\((?:[^()\\]|\\.)*\)")
_DMARC_RESULT: Final = re.compile(r"(?:^|;)[ \t\r\n]*dmarc[ \t\r\n]*=[ \t\r\n]*([A-Za-z]+)", re.IGNORECASE)

_Tags = tuple[dict[str, str], dict[str, tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The chain validation status of one message (RFC 8617 §4.4) and what the chain says about its path."""

    result: ArcStatus
    reason: str = ""  # why, for logs and the Authentication-Results comment; "" on pass and none
    instances: int = 0  # N, the number of ARC sets (the highest i=)
    # RFC 8617 §5.2 step 5: the lowest instance from which every AMS up to N verifies; 0 when all
    # of them do. Set on pass only.
    oldest_pass: int | None = None
    sealers: tuple[str, ...] = ()  # d= of each ARC-Seal, i=1 first (empty when the structure is broken)
    cv: tuple[str, ...] = ()  # cv= of each ARC-Seal, i=1 first
    # The dmarc= result the newest sealer recorded in its ARC-Authentication-Results ("" if none):
    # what a trusted sealer vouches for (RFC 8617 §7.2).
    sealed_dmarc: str = ""

    @property
    def newest_sealer(self) -> str:
        return self.sealers[-1] if self.sealers else ""


@dataclass(frozen=True, slots=True)
class _Signed:
    """One AMS or AS with its hashes done, waiting for its key."""

    what: str  # "ARC-Seal i=2", for reasons
    key_name: str
    algorithm: str
    digest: bytes
    signature: bytes
    failure: str = ""  # a failure found before the key (body hash, l=)


@dataclass(slots=True)
class _Chain:
    """The checks a well-formed chain needs: newest AMS, older AMSs (newest first), seals (newest first)."""

    instances: int
    sealers: tuple[str, ...]
    cv: tuple[str, ...]
    sealed_dmarc: str
    newest_ams: _Signed
    older_ams: list[_Signed | None] = field(default_factory=list)  # None: malformed, stops oldest-pass
    seals: list[_Signed] = field(default_factory=list)


async def verify(resolver: Resolver, raw: bytes) -> ArcResult:
    """The ARC chain validation status of ``raw`` (the message as received, CRLF or bare LF line ends)."""
    if len(raw) > OFFLOAD_BYTES:
        chain = await asyncio.to_thread(_prepare, raw)
    else:
        chain = _prepare(raw)
    if isinstance(chain, ArcResult):
        return chain
    checks = [chain.newest_ams, *chain.seals, *(c for c in chain.older_ams if c is not None)]
    names = sorted({check.key_name for check in checks if not check.failure})
    answers = await asyncio.gather(*(_fetch(resolver, name) for name in names))
    records = dict(zip(names, answers, strict=True))

    def outcome(check: _Signed) -> tuple[str, str]:
        return ("fail", check.failure) if check.failure else _finish(check, records[check.key_name])

    verdicts = [outcome(chain.newest_ams)] + [outcome(seal) for seal in chain.seals]
    found = ArcResult("pass", "", chain.instances, None, chain.sealers, chain.cv, chain.sealed_dmarc)
    # RFC 8617 §5.2 steps 4 and 6: the newest AMS, then each AS from N down to 1; any failure fails the chain.
    # A failure is a verdict even when another key lookup failed temporarily; a DNS failure alone is not.
    for result, reason in verdicts:
        if result == "fail":
            return replace(found, result="fail", reason=reason)
    for result, reason in verdicts:
        if result == "temperror":
            return replace(found, result="temperror", reason=reason)
    # RFC 8617 §5.2 step 5: walk the older AMSs down from N-1; the first that does not verify ends the walk.
    oldest = 0
    for instance, check in zip(range(chain.instances - 1, 0, -1), chain.older_ams, strict=False):
        if check is None or outcome(check)[0] != "pass":
            oldest = instance + 1
            break
    return replace(found, oldest_pass=oldest)


def _finish(check: _Signed, answer: list[str] | DnsError) -> tuple[str, str]:
    """("pass" | "fail" | "temperror", reason) for one AMS or AS once its key record is known."""
    if isinstance(answer, DnsError):
        if answer.temporary:
            return "temperror", f"{check.what}: key lookup for {check.key_name} failed: {answer}"
        return "fail", f"{check.what}: key lookup for {check.key_name} failed: {answer}"
    if not answer:
        return "fail", f"{check.what}: no key at {check.key_name}"
    try:
        key, _testing, _strict = _load_key(answer, check.key_name, check.algorithm)
    except _Invalid as exc:
        return "fail", f"{check.what}: {exc}"
    if not _signature_ok(key, check.signature, check.digest):
        return "fail", f"{check.what}: signature did not verify"
    return "pass", ""


# --------------------------------------------------------------------------- before the keys: structure and hashes


def _prepare(raw: bytes) -> ArcResult | _Chain:
    """Collect the sets, check the structure, hash everything: the CPU-bound half, no I/O."""
    header_block, body = _split_message(_crlf_lines(raw))
    if b"arc-" not in header_block.lower():
        return ArcResult("none")  # the usual case, without splitting the fields: no name starts with "arc-"
    fields = _split_fields(header_block)
    arc_fields = [i for i, (name, _raw) in enumerate(fields) if name in _KINDS]
    if not arc_fields:
        return ArcResult("none")
    if len(fields) > MAX_HEADER_FIELDS:
        return ArcResult("fail", f"more than {MAX_HEADER_FIELDS} header fields: not verified")
    if len(arc_fields) > 3 * MAX_INSTANCES:
        return ArcResult("fail", f"more than {3 * MAX_INSTANCES} ARC header fields (RFC 8617 §5.2 step 1)")

    # Step 1: every ARC field by instance and kind; the field indexes keep the message order.
    sets: dict[int, dict[bytes, list[int]]] = {}
    tags: dict[int, _Tags] = {}
    for index in arc_fields:
        name, field_raw = fields[index]
        if name != _AAR and len(field_raw) > MAX_SIGNATURE_FIELD:
            return ArcResult("fail", f"{_TITLES[name]} longer than {MAX_SIGNATURE_FIELD}")
        text = _value_text(field_raw)
        if name == _AAR:
            match = _AAR_INSTANCE.match(text)
            instance_text = match.group(1) if match else ""
        else:
            parsed = _parse_tags(text)
            if parsed is None:
                return ArcResult("fail", f"{_TITLES[name]} is not a valid tag-list")
            tags[index] = parsed
            instance_text = parsed[0].get("i", "")
        if not instance_text.isdigit() or not 1 <= int(instance_text) <= MAX_INSTANCES:
            return ArcResult("fail", f"{_TITLES[name]} without a valid instance i= (1 to {MAX_INSTANCES})")
        sets.setdefault(int(instance_text), {}).setdefault(name, []).append(index)
    count = max(sets)

    # Step 2: the newest seal reports a failed chain.
    newest_seals = sets[count].get(_AS, [])
    if len(newest_seals) == 1 and tags[newest_seals[0]][0].get("cv", "").lower() == "fail":
        return ArcResult("fail", f"ARC-Seal i={count} has cv=fail", instances=count)

    # Step 3: structure (RFC 8617 §5.1.1 and §4.2.1).
    by_kind: dict[tuple[int, bytes], int] = {}
    for instance in range(1, count + 1):
        for kind in _KINDS:
            found = sets.get(instance, {}).get(kind, [])
            if len(found) != 1:
                problem = "no" if not found else f"{len(found)}"
                return ArcResult("fail", f"instance {instance} has {problem} {_TITLES[kind]}", instances=count)
            by_kind[(instance, kind)] = found[0]
    cv: list[str] = []
    sealers: list[str] = []
    for instance in range(1, count + 1):
        seal = tags[by_kind[(instance, _AS)]][0]
        value = seal.get("cv", "").lower()
        expected = "none" if instance == 1 else "pass"
        if value != expected:
            return ArcResult("fail", f"ARC-Seal i={instance} has cv={value or '(missing)'}, not {expected}", count)
        cv.append(value)
        sealers.append(seal.get("d", "").lower())

    by_name: dict[bytes, list[int]] = {}
    for index, (name, _raw) in enumerate(fields):
        by_name.setdefault(name, []).append(index)
    bodies: dict[bool, bytes] = {}
    relaxed_fields: dict[int, bytes] = {}

    def ams(instance: int) -> _Signed:
        index = by_kind[(instance, _AMS)]
        return _ams(instance, fields[index][1], tags[index], fields, by_name, body, bodies, relaxed_fields)

    try:
        newest = ams(count)
        seals = [_seal(instance, fields, tags, by_kind, relaxed_fields) for instance in range(count, 0, -1)]
    except _Invalid as exc:
        return ArcResult("fail", str(exc), count, sealers=tuple(sealers), cv=tuple(cv))
    older: list[_Signed | None] = []
    for instance in range(count - 1, 0, -1):
        try:
            older.append(ams(instance))
        except _Invalid:
            older.append(None)
            break  # step 5 stops at the first AMS that does not verify
    aar = _value_text(fields[by_kind[(count, _AAR)]][1])
    return _Chain(count, tuple(sealers), tuple(cv), _recorded_dmarc(aar), newest, older, seals)


def _common_tags(what: str, parsed: _Tags, required: Sequence[str]) -> tuple[str, str, str, bytes]:
    """(algorithm, d=, key name, signature) of an AMS or AS after the checks both share (RFC 8617 §4.1.2, §4.1.3)."""
    tags = parsed[0]
    for name in required:
        if name not in tags:
            raise _Invalid(f"{what}: missing {name}= tag")
    algorithm = tags["a"].lower()
    if algorithm == "rsa-sha1":
        raise _Invalid(f"{what}: rsa-sha1 is not accepted (RFC 8301 §3.1)")
    if algorithm not in (RSA_SHA256, ED25519_SHA256):
        raise _Invalid(f"{what}: unknown algorithm a={algorithm}")
    domain, selector = tags["d"].lower(), tags["s"]
    if len(domain) > 253 or not _DNS_NAME.fullmatch(domain) or "." not in domain:
        raise _Invalid(f"{what}: invalid d={domain}")
    if len(selector) > 253 or not _DNS_NAME.fullmatch(selector):
        raise _Invalid(f"{what}: invalid s={selector}")
    signature = _base64(tags["b"], "b")
    if not signature:
        raise _Invalid(f"{what}: empty b=")
    return algorithm, domain, f"{selector}._domainkey.{domain}", signature


def _ams(
    instance: int,
    raw: bytes,
    parsed: _Tags,
    fields: list[tuple[bytes, bytes]],
    by_name: dict[bytes, list[int]],
    body: bytes,
    bodies: dict[bool, bytes],
    relaxed_fields: dict[int, bytes],
) -> _Signed:
    """RFC 8617 §4.1.2: an ARC-Message-Signature is a DKIM-Signature with i= the instance and no v=."""
    what = f"ARC-Message-Signature i={instance}"
    tags, spans = parsed
    try:
        algorithm, _domain, key_name, signature = _common_tags(what, parsed, ("i", "a", "b", "bh", "d", "h", "s"))
        header_relaxed, body_relaxed = _canonicalization(tags.get("c", "simple/simple"))
        signed = [name.strip(_FWS).lower() for name in tags["h"].split(":")]
        if not all(signed) or len(signed) > MAX_SIGNED_NAMES:
            raise _Invalid("empty header field name in h=, or too many names")
        if "arc-seal" in signed:
            raise _Invalid("h= includes ARC-Seal (RFC 8617 §4.1.2)")
        if "from" not in signed:
            raise _Invalid("h= does not include From (RFC 6376 §5.4)")
        length = _number(tags, "l")
        body_hash = _base64(tags["bh"], "bh")
    except _Invalid as exc:
        text = str(exc)
        raise _Invalid(text if text.startswith(what) else f"{what}: {text}") from exc
    canonical = bodies.get(body_relaxed)
    if canonical is None:
        canonical = bodies[body_relaxed] = _relaxed_body(body) if body_relaxed else _simple_body(body)
    failure = ""
    if length is not None and length != len(canonical):
        # RFC 6376 §8.2: l= shorter than the body leaves content nobody signed; no pass vouches for it.
        failure = f"{what}: l={length} does not cover the body ({len(canonical)} canonical bytes)"
    elif hashlib.sha256(canonical).digest() != body_hash:
        failure = f"{what}: body hash mismatch (bh=): the body was changed"
    data = _signed_fields(signed, fields, by_name, header_relaxed, relaxed_fields)
    data.append(_blanked_signature(_AMS, raw, spans["b"], header_relaxed))
    return _Signed(what, key_name, algorithm, hashlib.sha256(b"".join(data)).digest(), signature, failure)


def _seal(
    instance: int,
    fields: list[tuple[bytes, bytes]],
    tags: dict[int, _Tags],
    by_kind: dict[tuple[int, bytes], int],
    relaxed_fields: dict[int, bytes],
) -> _Signed:
    """RFC 8617 §4.1.3 and §5.1.1: an ARC-Seal signs the sets 1..i in order, relaxed, its own b= emptied."""
    what = f"ARC-Seal i={instance}"
    index = by_kind[(instance, _AS)]
    parsed = tags[index]
    algorithm, _domain, key_name, signature = _common_tags(what, parsed, ("i", "cv", "a", "b", "d", "s"))
    if "h" in parsed[0]:
        raise _Invalid(f"{what}: h= is not allowed in an ARC-Seal (RFC 8617 §4.1.3)")
    data: list[bytes] = []
    for number in range(1, instance + 1):
        for kind in _KINDS:
            at = by_kind[(number, kind)]
            if number == instance and kind == _AS:
                data.append(_blanked_signature(_AS, fields[at][1], parsed[1]["b"], True))
                continue
            canonical = relaxed_fields.get(at)
            if canonical is None:
                canonical = relaxed_fields[at] = _relaxed_header(kind, fields[at][1])
            data.append(canonical)
    return _Signed(what, key_name, algorithm, hashlib.sha256(b"".join(data)).digest(), signature)


def _recorded_dmarc(aar: str) -> str:
    """The dmarc= result in an ARC-Authentication-Results value (RFC 8601 §2.2 resinfo), lower case; "" if none."""
    text = _COMMENT.sub(" ", aar.replace("\r\n", " "))
    match = _DMARC_RESULT.search(text)
    return match.group(1).lower() if match else ""
