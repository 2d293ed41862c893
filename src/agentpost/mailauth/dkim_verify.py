"""DKIM verification (RFC 6376, RFC 8463, RFC 8301): every DKIM-Signature of a received message, keys by DNS.

``verify(resolver, raw)`` returns one ``DkimResult`` per DKIM-Signature field (top down, at most
``MAX_SIGNATURES``), each pass / fail / neutral / policy / temperror / permerror with d=, s=, a=, the
header.b prefix of RFC 6008 and a reason. A message without signatures gives ``[]`` (dkim=none).

It runs on every inbound message before the 250, so:

- the canonicalisation is the signer's (``mailauth.dkim``, proven byte-compatible with dkimpy, OpenDKIM
  and Mail::DKIM), the key operations run in OpenSSL through ``cryptography``;
- everything CPU-bound (parsing, canonicalisation, both hashes) is done once, before the key lookups,
  which run concurrently, one per distinct key name; a body hash is shared by every signature with the
  same body canonicalisation and ``l=``; messages above ``OFFLOAD_BYTES`` are hashed in a worker thread;
- nothing is quadratic in hostile input: header fields are split once and indexed by name, folded
  lines are joined once, and the number of header fields, signatures, h= entries and the size of a
  DKIM-Signature field are capped.

Results (RFC 8601 §2.7.1 names):

- ``pass``: the signature verified. ``testing`` is set when the key carries ``t=y``.
- ``fail``: the body hash or the signature did not verify, or ``l=`` exceeds the body.
- ``neutral``: a signature that failed under a key in testing mode (``t=y``): RFC 6376 §3.6.1 says
  such mail must not be treated differently from unsigned mail.
- ``policy``: the signature verified but ``l=`` leaves part of the body unsigned (RFC 6376 §8.2: anyone
  can append content); it is not a pass, so DMARC does not count it.
- ``temperror``: the key lookup failed (SERVFAIL, timeout): a later attempt may succeed.
- ``permerror``: the signature or the key record is unusable: bad syntax, missing tags, rsa-sha1 or an
  RSA key under 1024 bits (RFC 8301), no key (RFC 6376 §6.1.2), a revoked key, an expired signature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agentpost.mailauth.dkim import (
    _DNS_NAME,
    _PKCS1V15,
    _PREHASHED_SHA256,
    ED25519_SHA256,
    RSA_SHA256,
    _crlf_lines,
    _relaxed_body,
    _relaxed_header,
    _split_message,
)
from agentpost.net.dns import DnsError, Resolver, answered

__all__ = [
    "MAX_HEADER_FIELDS",
    "MAX_SIGNATURES",
    "VERIFY_MIN_RSA_BITS",
    "DkimResult",
    "DkimStatus",
    "verify",
]

DkimStatus = Literal["pass", "fail", "neutral", "policy", "temperror", "permerror"]

# Verification limits. A message carries one to three signatures in practice; ten covers every honest
# case and bounds the DNS queries and RSA operations a hostile message can cause.
MAX_SIGNATURES: Final = 10
MAX_HEADER_FIELDS: Final = 1000
MAX_SIGNATURE_FIELD: Final = 16 * 1024  # bytes of one DKIM-Signature field, folding included
MAX_SIGNED_NAMES: Final = 128  # entries in h=, over-signing included
# RFC 8301 §3.2: verifiers MUST NOT accept RSA keys under 1024 bits and MUST handle 1024 to 4096 bits.
# Above 8192 bits a key only costs us CPU.
VERIFY_MIN_RSA_BITS: Final = 1024
VERIFY_MAX_RSA_BITS: Final = 8192
# Above this size the hashing runs in a worker thread (hashlib releases the GIL), off the event loop.
OFFLOAD_BYTES: Final = 256 * 1024
# RFC 6008 §4: header.b carries at least the first 8 characters of b=, more when needed to be unique.
_B_PREFIX: Final = 8

_CRLF: Final = b"\r\n"
_FWS: Final = " \t\r\n"
_TAG_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # RFC 6376 §3.2 tag-name
_DIGITS: Final = re.compile(r"[0-9]{1,18}")
_WSP_RUN: Final = re.compile(r"[ \t\r\n]+")
_WSP: Final = b" \t\r\n"
_KEY_TYPES: Final = {"rsa": RSA_SHA256, "ed25519": ED25519_SHA256}

_PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The verdict on one DKIM-Signature field."""

    result: DkimStatus
    domain: str  # d= (SDID), lower case; "" when the field has none
    selector: str  # s=
    algorithm: str  # a=, lower case
    identity: str  # i= (AUID); "@" + d= when absent
    b: str  # header.b: a prefix of b= unique among the message's signatures (RFC 6008 §4)
    reason: str  # why, for logs and Authentication-Results comments; "" on a plain pass
    testing: bool = False  # the key record has t=y (RFC 6376 §3.6.1)
    key_bits: int = 0  # RSA modulus size, 256 for Ed25519, 0 when no key was loaded


@dataclass(frozen=True, slots=True)
class _Identity:
    """What is known of a signature before its verdict (for the result fields)."""

    domain: str
    selector: str
    algorithm: str
    identity: str
    b: str  # the whole b= value, whitespace removed


@dataclass(frozen=True, slots=True)
class _Verdict:
    who: _Identity
    result: DkimStatus
    reason: str
    testing: bool = False
    key_bits: int = 0


@dataclass(frozen=True, slots=True)
class _Pending:
    """A well-formed signature with both hashes done, waiting for its key."""

    who: _Identity
    key_name: str  # <selector>._domainkey.<domain>
    auid_domain: str  # the domain of i=, for the key's t=s flag
    body_ok: bool  # the body hash matched
    unsigned_body: int  # canonical body bytes beyond l= (0 without l=)
    digest: bytes  # SHA-256 of the canonical signed header fields and this field with b= emptied
    signature: bytes


class _Invalid(Exception):
    """A permanent error in a signature or key record; the message becomes the result's reason."""


# --------------------------------------------------------------------------- the API


async def verify(
    resolver: Resolver, raw: bytes, *, now: float | None = None, max_signatures: int = MAX_SIGNATURES
) -> list[DkimResult]:
    """One result per DKIM-Signature field of ``raw`` (the message as received), top down, at most ``max_signatures``.

    ``raw`` is read with CRLF line ends; a bare LF is taken as a line end, as the signer does. ``now``
    (seconds since the epoch) is the clock for x= expiry.
    """
    clock = int(time.time() if now is None else now)
    if len(raw) > OFFLOAD_BYTES:
        checks = await asyncio.to_thread(_prepare, raw, clock, max_signatures)
    else:
        checks = _prepare(raw, clock, max_signatures)
    names = sorted({check.key_name for check in checks if isinstance(check, _Pending)})
    if answered(resolver, names):  # every key is cached: no lookup to overlap
        answers = [await _fetch(resolver, name) for name in names]
    else:
        answers = await asyncio.gather(*(_fetch(resolver, name) for name in names))
    records = dict(zip(names, answers, strict=True))
    verdicts = [check if isinstance(check, _Verdict) else _finish(check, records[check.key_name]) for check in checks]
    all_b = [verdict.who.b for verdict in verdicts]
    return [
        DkimResult(
            result=verdict.result,
            domain=verdict.who.domain,
            selector=verdict.who.selector,
            algorithm=verdict.who.algorithm,
            identity=verdict.who.identity,
            b=_b_prefix(verdict.who.b, all_b),
            reason=verdict.reason,
            testing=verdict.testing,
            key_bits=verdict.key_bits,
        )
        for verdict in verdicts
    ]


async def _fetch(resolver: Resolver, name: str) -> list[str] | DnsError:
    try:
        return await resolver.txt(name)
    except DnsError as exc:
        return exc


# --------------------------------------------------------------------------- before the key: parse and hash


def _prepare(raw: bytes, now: int, max_signatures: int) -> list[_Pending | _Verdict]:
    """Parse every signature and compute its hashes: the CPU-bound half of verification, no I/O."""
    header_block, body = _split_message(_crlf_lines(raw))
    fields = _split_fields(header_block)
    signatures = [i for i, (name, _raw) in enumerate(fields) if name == b"dkim-signature"][:max_signatures]
    if len(fields) > MAX_HEADER_FIELDS:
        reason = f"more than {MAX_HEADER_FIELDS} header fields: not verified"
        return [
            _Verdict(_identity(_parse_tags(_value_text(fields[i][1])) or ({}, {})), "permerror", reason)
            for i in signatures
            if i < MAX_HEADER_FIELDS
        ]
    by_name: dict[bytes, list[int]] = {}
    for i, (name, _raw) in enumerate(fields):
        by_name.setdefault(name, []).append(i)
    bodies: dict[bool, bytes] = {}  # canonical body by "relaxed?"
    relaxed_fields: dict[int, bytes] = {}  # relaxed canonical form by field index, shared by signatures
    return [_check(i, fields, by_name, body, bodies, relaxed_fields, now) for i in signatures]


def _split_fields(header_block: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, raw field without its final CRLF) for every header field, top to bottom.

    Folded lines are collected in lists and joined once (joining as they come would be quadratic in a
    field folded over many lines). A line that is neither a field nor a continuation is skipped, as the
    signer does; a verifier cannot match it to a name either.
    """
    lines_by_field: list[list[bytes]] = []
    for line in header_block.split(_CRLF):
        if line[:1] in (b" ", b"\t"):
            if lines_by_field:  # RFC 5322 §2.2.3: a line starting with WSP continues the field above
                lines_by_field[-1].append(line)
        elif line:
            lines_by_field.append([line])
    fields: list[tuple[bytes, bytes]] = []
    for lines in lines_by_field:
        colon = lines[0].find(b":")
        if colon <= 0:
            continue
        fields.append((lines[0][:colon].rstrip(b" \t").lower(), _CRLF.join(lines)))
    return fields


def _value_text(raw: bytes) -> str:
    """The field value after the colon, as text whose indexes are byte offsets into ``raw`` after the colon."""
    return raw[raw.index(b":") + 1 :].decode("latin-1")


def _parse_tags(text: str) -> tuple[dict[str, str], dict[str, tuple[int, int]]] | None:
    """RFC 6376 §3.2 tag-list -> ({name: value}, {name: (start, end)}), or None when it is not one.

    Values lose their surrounding FWS; a span runs from just after "=" to the end of the value, which is
    what RFC 6376 §3.7 blanks for b= ("b=" stays, the value and the FWS before it go).
    """
    tags: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    position = 0
    for segment in text.split(";"):
        start = position
        position += len(segment) + 1
        equals = segment.find("=")
        if equals < 0:
            if segment.strip(_FWS):
                return None  # a tag-spec without "="
            continue  # an empty spec: the optional final ";" (tolerated anywhere)
        name = segment[:equals].strip(_FWS)
        if not _TAG_NAME.fullmatch(name) or name in tags:
            return None  # RFC 6376 §3.2: a duplicated tag name makes the whole tag-list invalid
        value = segment[equals + 1 :]
        stripped = value.strip(_FWS)
        lead = len(value) - len(value.lstrip(_FWS))
        tags[name] = stripped
        spans[name] = (start + equals + 1, start + equals + 1 + lead + len(stripped))
    return tags, spans


def _identity(parsed: tuple[dict[str, str], dict[str, tuple[int, int]]]) -> _Identity:
    tags = parsed[0]
    domain = tags.get("d", "").lower()
    return _Identity(
        domain=domain,
        selector=tags.get("s", ""),
        algorithm=tags.get("a", "").lower(),
        identity=tags.get("i", f"@{domain}" if domain else ""),
        b=_without_wsp(tags.get("b", "")),
    )


def _check(
    index: int,
    fields: list[tuple[bytes, bytes]],
    by_name: dict[bytes, list[int]],
    body: bytes,
    bodies: dict[bool, bytes],
    relaxed_fields: dict[int, bytes],
    now: int,
) -> _Pending | _Verdict:
    raw = fields[index][1]
    if len(raw) > MAX_SIGNATURE_FIELD:
        return _Verdict(_Identity("", "", "", "", ""), "permerror", f"DKIM-Signature longer than {MAX_SIGNATURE_FIELD}")
    parsed = _parse_tags(_value_text(raw))
    if parsed is None:
        return _Verdict(_Identity("", "", "", "", ""), "permerror", "DKIM-Signature is not a valid tag-list")
    who = _identity(parsed)
    try:
        return _check_parsed(who, raw, parsed, fields, by_name, body, bodies, relaxed_fields, now)
    except _Invalid as exc:
        return _Verdict(who, "permerror", str(exc))


def _check_parsed(
    who: _Identity,
    raw: bytes,
    parsed: tuple[dict[str, str], dict[str, tuple[int, int]]],
    fields: list[tuple[bytes, bytes]],
    by_name: dict[bytes, list[int]],
    body: bytes,
    bodies: dict[bool, bytes],
    relaxed_fields: dict[int, bytes],
    now: int,
) -> _Pending | _Verdict:
    """RFC 6376 §6.1.1 (validate the signature field) and §6.1.3 (compute both hashes)."""
    tags, spans = parsed
    for required in ("v", "a", "b", "bh", "d", "h", "s"):  # RFC 6376 §3.5: the REQUIRED tags
        if required not in tags:
            raise _Invalid(f"missing {required}= tag")
    if tags["v"] != "1":
        raise _Invalid(f"unknown version v={tags['v']}")
    algorithm = who.algorithm
    if algorithm == "rsa-sha1":
        raise _Invalid("rsa-sha1 signatures are not accepted (RFC 8301 §3.1)")
    if algorithm not in (RSA_SHA256, ED25519_SHA256):
        raise _Invalid(f"unknown algorithm a={algorithm}")
    header_relaxed, body_relaxed = _canonicalization(tags.get("c", "simple/simple"))

    domain, selector = who.domain, who.selector
    if len(domain) > 253 or not _DNS_NAME.fullmatch(domain):
        raise _Invalid(f"invalid d={domain}")
    if "." not in domain:
        raise _Invalid(f"d={domain} is a top-level domain")  # RFC 6376 §6.1.1: verifiers MAY refuse it
    if len(selector) > 253 or not _DNS_NAME.fullmatch(selector):
        raise _Invalid(f"invalid s={selector}")
    # RFC 6376 §6.1.1: the domain of i= must be d= or one of its subdomains.
    _local, at, auid_domain = who.identity.rpartition("@")
    auid_domain = auid_domain.lower()
    if not at or not (auid_domain == domain or auid_domain.endswith("." + domain)):
        raise _Invalid(f"i={who.identity} is not within d={domain}")
    if "q" in tags and "dns/txt" not in [q.strip(_FWS).lower() for q in tags["q"].split(":")]:
        raise _Invalid(f"no supported query method in q={tags['q']}")

    signed = [name.strip(_FWS).lower() for name in tags["h"].split(":")]
    if not all(signed):
        raise _Invalid("empty header field name in h=")
    if len(signed) > MAX_SIGNED_NAMES:
        raise _Invalid(f"more than {MAX_SIGNED_NAMES} names in h=")
    if "from" not in signed:
        raise _Invalid("h= does not include From (RFC 6376 §5.4)")

    timestamp = _number(tags, "t")
    expires = _number(tags, "x")
    if expires is not None:
        # RFC 6376 §3.5: x= MUST be greater than t=; past x=, verifiers MAY refuse the signature.
        if timestamp is not None and expires < timestamp:
            raise _Invalid("x= is earlier than t=")
        if expires < now:
            raise _Invalid("signature expired (x=)")
    length = _number(tags, "l")
    body_hash = _base64(tags["bh"], "bh")
    signature = _base64(tags["b"], "b")
    if not signature:
        raise _Invalid("empty b=")

    # RFC 6376 §3.7 step 1: the body hash, over the first l= octets of the canonical body when l= is given.
    canonical = bodies.get(body_relaxed)
    if canonical is None:
        canonical = bodies[body_relaxed] = _relaxed_body(body) if body_relaxed else _simple_body(body)
    if length is not None and length > len(canonical):
        return _Verdict(who, "fail", f"l={length} is longer than the body ({len(canonical)} canonical bytes)")
    signed_body = canonical if length is None else canonical[:length]
    body_ok = hashlib.sha256(signed_body).digest() == body_hash

    data = _signed_fields(signed, fields, by_name, header_relaxed, relaxed_fields)
    # RFC 6376 §3.7 step 2: then this DKIM-Signature field, b= value emptied, without its final CRLF.
    data.append(_blanked_signature(b"dkim-signature", raw, spans["b"], header_relaxed))
    return _Pending(
        who=who,
        key_name=f"{selector}._domainkey.{domain}",
        auid_domain=auid_domain,
        body_ok=body_ok,
        unsigned_body=len(canonical) - len(signed_body),
        digest=hashlib.sha256(b"".join(data)).digest(),
        signature=signature,
    )


def _signed_fields(
    signed: Sequence[str],
    fields: list[tuple[bytes, bytes]],
    by_name: dict[bytes, list[int]],
    header_relaxed: bool,
    relaxed_fields: dict[int, bytes],
) -> list[bytes]:
    """The canonical header fields h= selects, in h= order (also the ARC-Message-Signature's, RFC 8617 §4.1.2)."""
    # RFC 6376 §5.4.2: each name in h= takes the next instance of that field from the bottom up; a name with
    # no instance left (over-signing) contributes nothing.
    taken: dict[bytes, int] = {}
    data: list[bytes] = []
    for text in signed:
        name = text.encode("latin-1")
        instances = by_name.get(name, ())
        used = taken.get(name, 0)
        if used >= len(instances):
            continue
        taken[name] = used + 1
        index = instances[-1 - used]
        if header_relaxed:
            canonical_field = relaxed_fields.get(index)
            if canonical_field is None:
                canonical_field = relaxed_fields[index] = _relaxed_header(name, fields[index][1])
            data.append(canonical_field)
        else:
            data.append(fields[index][1] + _CRLF)
    return data


def _blanked_signature(name: bytes, raw: bytes, b_span: tuple[int, int], header_relaxed: bool) -> bytes:
    """The signature field itself with its b= value emptied, canonical, without its final CRLF (RFC 6376 §3.7)."""
    offset = raw.index(b":") + 1
    start, end = b_span
    blanked = raw[: offset + start] + raw[offset + end :]
    return _relaxed_header(name, blanked)[:-2] if header_relaxed else blanked


def _canonicalization(value: str) -> tuple[bool, bool]:
    """c= -> (header relaxed?, body relaxed?); RFC 6376 §3.5: "relaxed" alone means relaxed/simple."""
    header, _slash, body = value.lower().partition("/")
    body = body or "simple"
    if header not in ("simple", "relaxed") or body not in ("simple", "relaxed"):
        raise _Invalid(f"unknown canonicalization c={value}")
    return header == "relaxed", body == "relaxed"


def _simple_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.3: drop empty lines at the end; an empty body (or one of empty lines) is a single CRLF."""
    if not body.endswith(_CRLF):
        body += _CRLF  # as the body reads on the wire, after DATA adds the final CRLF
    end = len(body)
    while body.endswith(b"\r\n\r\n", 0, end):
        end -= 2
    return body[:end]


def _number(tags: dict[str, str], name: str) -> int | None:
    if name not in tags:
        return None
    if not _DIGITS.fullmatch(tags[name]):
        raise _Invalid(f"invalid {name}={tags[name][:20]}")
    return int(tags[name])


def _without_wsp(value: str) -> str:
    """``value`` without SP, HTAB, CR and LF (the FWS a base64 tag value may be folded with).
    bytes.translate deletes them in one C pass, several times faster than re.sub."""
    try:
        return value.encode("latin-1").translate(None, _WSP).decode("latin-1")
    except UnicodeEncodeError:  # a DNS record's text is not confined to latin-1
        return _WSP_RUN.sub("", value)


def _base64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(_without_wsp(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Invalid(f"{name}= is not base64") from exc


# --------------------------------------------------------------------------- after the key: check the signature


def _finish(pending: _Pending, answer: list[str] | DnsError) -> _Verdict:
    """RFC 6376 §6.1.2 (the key) and the end of §6.1.3 (compare the hashes, verify the signature)."""
    who = pending.who
    if isinstance(answer, DnsError):
        if answer.temporary:
            return _Verdict(who, "temperror", f"key lookup for {pending.key_name} failed: {answer}")
        return _Verdict(who, "permerror", f"key lookup for {pending.key_name} failed: {answer}")
    if not answer:
        return _Verdict(who, "permerror", f"no key at {pending.key_name}")  # RFC 6376 §6.1.2 step 3
    try:
        key, testing, strict = _load_key(answer, pending.key_name, who.algorithm)
    except _Invalid as exc:
        return _Verdict(who, "permerror", str(exc))
    bits = key.key_size if isinstance(key, rsa.RSAPublicKey) else 256
    if strict and pending.auid_domain != who.domain:
        # RFC 6376 §3.6.1 t=s: the i= domain must be d= itself, not a subdomain.
        return _Verdict(who, "permerror", "key has t=s but i= is a subdomain of d=", testing, bits)

    failure = ""
    if not pending.body_ok:
        failure = "body hash mismatch (bh=): the body was changed"
    elif not _signature_ok(key, pending.signature, pending.digest):
        failure = "signature did not verify: a signed header field was changed"
    if failure:
        if testing:  # RFC 6376 §3.6.1 t=y: treat like unsigned mail, not as a failure
            return _Verdict(who, "neutral", f"{failure}; ignored, the key is in testing mode (t=y)", testing, bits)
        return _Verdict(who, "fail", failure, testing, bits)
    if pending.unsigned_body:
        # RFC 6376 §8.2: l= lets anyone append content; a pass would vouch for text the signer never saw.
        return _Verdict(who, "policy", f"l= leaves {pending.unsigned_body} body bytes unsigned", testing, bits)
    return _Verdict(who, "pass", "key in testing mode (t=y)" if testing else "", testing, bits)


def _signature_ok(key: _PublicKey, signature: bytes, digest: bytes) -> bool:
    """Whether ``signature`` is ``key``'s over the SHA-256 ``digest`` of the canonical header data."""
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, _PKCS1V15, _PREHASHED_SHA256)
        else:
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonical data.
            key.verify(signature, digest)
    except InvalidSignature:
        return False
    return True


def _load_key(records: Sequence[str], key_name: str, algorithm: str) -> tuple[_PublicKey, bool, bool]:
    """The public key of the first record that parses as a DKIM key (RFC 6376 §3.6.1), with its t=y and t=s flags.

    ``algorithm`` is the signature's a=, which the key type must match.
    """
    return _load_key_cached(tuple(records), key_name, algorithm)


# Parsed keys by record text: one sender's mail carries the same few keys, and parsing the record
# and loading the key cost more than verifying the signature. Keyed by the record text itself, so
# a changed record (rotation, revocation) is parsed anew; invalid records raise and are not kept.
@functools.lru_cache(maxsize=4096)
def _load_key_cached(records: tuple[str, ...], key_name: str, algorithm: str) -> tuple[_PublicKey, bool, bool]:
    parsed = [tags for tags in (_parse_key_record(record) for record in records) if tags is not None]
    if not parsed:
        raise _Invalid(f"no valid DKIM key record at {key_name}")
    tags = parsed[0]
    if "h" in tags and "sha256" not in [h.strip(_FWS).lower() for h in tags["h"].split(":")]:
        raise _Invalid(f"key h={tags['h']} does not allow sha256")
    key_type = tags.get("k", "rsa").lower()
    if key_type not in _KEY_TYPES:
        raise _Invalid(f"unknown key type k={key_type}")
    if _KEY_TYPES[key_type] != algorithm:
        raise _Invalid(f"key type k={key_type} does not match a={algorithm}")
    services = [s.strip(_FWS).lower() for s in tags.get("s", "*").split(":")]
    if "*" not in services and "email" not in services:
        raise _Invalid(f"key is not for email (s={tags['s']})")
    flags = {flag.strip(_FWS).lower() for flag in tags.get("t", "").split(":")}
    if "p" not in tags:
        raise _Invalid("key record has no p=")
    data = _without_wsp(tags["p"])
    if not data:
        raise _Invalid("key revoked (empty p=)")  # RFC 6376 §3.6.1, §6.1.2 step 7
    try:
        der = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Invalid("key p= is not base64") from exc
    key: _PublicKey
    if key_type == "rsa":
        try:
            # SubjectPublicKeyInfo as RFC 6376 §3.6.1 says; a bare PKCS#1 RSAPublicKey is accepted too.
            loaded = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise _Invalid("key p= is not an RSA public key") from exc
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise _Invalid("key p= is not an RSA public key")
        if loaded.key_size < VERIFY_MIN_RSA_BITS:
            raise _Invalid(f"RSA key of {loaded.key_size} bits is too short (RFC 8301 §3.2)")
        if loaded.key_size > VERIFY_MAX_RSA_BITS:
            raise _Invalid(f"RSA key of {loaded.key_size} bits is longer than {VERIFY_MAX_RSA_BITS}")
        key = loaded
    else:
        if len(der) != 32:  # RFC 8463 §4: the raw 32-byte public key
            raise _Invalid("key p= is not a 32-byte Ed25519 public key")
        key = ed25519.Ed25519PublicKey.from_public_bytes(der)
    return key, "y" in flags, "s" in flags


def _parse_key_record(record: str) -> dict[str, str] | None:
    """A key record's tags, or None when it is not a DKIM key record (RFC 6376 §3.6.1: v=, if present, is first)."""
    parsed = _parse_tags(record)
    if parsed is None:
        return None
    tags = parsed[0]
    if "v" in tags and (tags["v"] != "DKIM1" or next(iter(tags)) != "v"):
        return None
    return tags


def _b_prefix(b: str, all_b: list[str]) -> str:
    """RFC 6008 §4: the first 8 characters of b=, or as many more as make it unique in the message."""
    others = [other for other in all_b if other != b]
    for length in range(_B_PREFIX, len(b)):
        prefix = b[:length]
        if not any(other.startswith(prefix) for other in others):
            return prefix
    return b
