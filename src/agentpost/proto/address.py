"""Mail addresses: strict parsing and normalisation (RFC 5321, RFC 5322, RFC 6531 SMTPUTF8, IDNA)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

_idna: ModuleType | None
try:  # IDNA 2008 + UTS #46 when available; the stdlib codec is IDNA 2003.
    import idna as _idna_package

    _idna = _idna_package
except ImportError:  # pragma: no cover - depends on the environment
    _idna = None

__all__ = [
    "Address",
    "AddressError",
    "domain_of",
    "local_part_of",
    "normalise_domain",
    "parse_address",
    "parse_address_list",
    "parse_path",
    "split_address_list",
]


class AddressError(ValueError):
    """A value that is not an acceptable mail address; the message says why."""


# RFC 5321 §4.5.3.1.1-3: local part 64 octets, domain 255 octets, path 256 octets
# including the angle brackets, so an addr-spec holds at most 254.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_ADDR_SPEC = MAX_PATH - 2
# A display form longer than this is not a person's name but an attack on our parser.
MAX_MAILBOX = 2048
MAX_LIST = 128 * 1024

# RFC 5322 §3.2.3 atext, widened by RFC 6531 §3.3 to any non-ASCII UTF-8 character;
# non-printable characters (C1 controls, format characters, surrogates) are refused
# separately with str.isprintable().
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
# RFC 1035 §2.3.1 LDH label, as tightened by RFC 1123 §2.1 (may start with a digit).
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_FORBIDDEN = re.compile(r"[\r\n\x00]")
# Inside "<...>": what only parse_address handles (another bracket, a quoted string, a comment).
_NOT_BARE_SPEC = re.compile(r'[<>"(]')
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_WSP = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: local part as it should be sent, domain as a lowercase A-label."""

    local_part: str
    domain: str
    display_name: str | None = None
    domain_unicode: str = ""

    def __post_init__(self) -> None:
        if not self.domain_unicode:
            object.__setattr__(self, "domain_unicode", _to_unicode(self.domain))

    @property
    def addr_spec(self) -> str:
        return f"{self.local_part}@{self.domain}"

    @property
    def key(self) -> str:
        """Lowercased local@domain: the form used for lookups and comparisons."""
        return self.addr_spec.lower()

    @property
    def base_key(self) -> str:
        """The key without a "+tag" sub-address: the form used for suppression lists."""
        local = self.local_part.lower()
        if not local.startswith('"'):
            local = local.split("+", 1)[0] or local
        return f"{local}@{self.domain}"

    @property
    def display(self) -> str:
        """'Name <addr>' or 'addr', with the name quoted when RFC 5322 §3.2.5 needs it."""
        if not self.display_name:
            return self.addr_spec
        return f"{_quote_phrase(self.display_name)} <{self.addr_spec}>"

    def __str__(self) -> str:
        return self.display


def parse_address(value: str) -> Address:
    """Parse one mailbox, "Name <a@b>", "a@b" or "a@b (Name)"; raise AddressError if not strict-valid."""
    if not isinstance(value, str):
        raise AddressError("address must be a string")
    _check_raw(value, MAX_MAILBOX)
    text, comments = _strip_comments(value)
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    opens = _unquoted_positions(text, "<")
    if opens:
        if len(opens) > 1:
            raise AddressError("more than one '<' in address")
        start = opens[0]
        end = text.find(">", start)
        if end < 0:
            raise AddressError("'<' without closing '>'")
        if text[end + 1 :].strip():
            raise AddressError("text after '>'")
        phrase = _unquote_phrase(text[:start])
        spec = text[start + 1 : end].strip()
        if spec.startswith("@"):
            raise AddressError("source routes are not accepted in a mailbox")
    else:
        phrase = ""
        spec = text
        if comments:
            # RFC 5322 §3.4 (obsolete but common): "addr (Full Name)".
            phrase = " ".join(c.strip() for c in comments if c.strip())
    local, domain, domain_unicode = _parse_addr_spec(spec)
    return Address(local, domain, phrase or None, domain_unicode)


def parse_address_list(value: str) -> list[Address]:
    """Parse a comma-separated list (RFC 5322 §3.4 address-list, groups flattened); strict."""
    if not isinstance(value, str):
        raise AddressError("address list must be a string")
    _check_raw(value, MAX_LIST)
    return [parse_address(item) for item in split_address_list(value)]


def split_address_list(value: str) -> list[str]:
    """Split an address-list into mailbox texts without judging them; never raises.

    Commas inside quoted strings, comments, angle brackets and domain literals do not
    split; RFC 5322 §3.4 group syntax "name: a, b;" yields its members.
    """
    items: list[str] = []
    if "," not in value and ":" not in value and ";" not in value:
        item = value.strip()
        return [item] if item else []
    buf: list[str] = []
    quoted = escaped = False
    comment = 0
    angle = square = False
    skip_to = 0
    for index, ch in enumerate(value):
        if index < skip_to:
            continue
        if escaped:
            buf.append(ch)
            escaped = False
            continue
        if ch == "\\" and (quoted or comment):
            buf.append(ch)
            escaped = True
            continue
        if quoted:
            buf.append(ch)
            if ch == '"':
                quoted = False
            continue
        if comment:
            buf.append(ch)
            if ch == "(":
                comment += 1
            elif ch == ")":
                comment -= 1
            continue
        if ch == '"':
            quoted = True
        elif ch == "=" and not angle:
            # RFC 2047 encoded-words are atoms here, whatever (illegal) ":" or "," they hold.
            word = _ENCODED_WORD.match(value, index)
            if word is not None:
                buf.append(word.group(0))
                skip_to = word.end()
                continue
        elif ch == "(":
            comment = 1
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "[":
            square = True
        elif ch == "]":
            square = False
        elif not angle and not square:
            if ch in ",;":
                _flush(buf, items)
                continue
            if ch == ":":
                buf.clear()  # a group's display name, RFC 5322 §3.4
                continue
        buf.append(ch)
    _flush(buf, items)
    return items


def parse_path(value: str) -> Address | None:
    """SMTP reverse/forward path content ("a@b", "<a@b>"); the null path "<>" or "" is None.

    RFC 5321 §4.1.2: a source route "@a,@b:" before the mailbox must be accepted and ignored.
    """
    if not isinstance(value, str):
        raise AddressError("path must be a string")
    _check_raw(value, MAX_PATH + 2)
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text:
        return None
    if text.startswith("@"):
        colon = text.find(":")
        if colon < 0:
            raise AddressError("source route without ':'")
        text = text[colon + 1 :]
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ADDR_SPEC:
        raise AddressError(f"path longer than {MAX_PATH} octets")
    local, domain, domain_unicode = _parse_addr_spec(text)
    return Address(local, domain, None, domain_unicode)


def domain_of(addr: str) -> str:
    """The lowercased IDNA (A-label) domain of an addr-spec or mailbox."""
    return _parse_bare(addr)[1]


def local_part_of(addr: str) -> str:
    """The local part of an addr-spec or mailbox, case preserved (RFC 5321 §2.4)."""
    return _parse_bare(addr)[0]


def _parse_bare(addr: str) -> tuple[str, str, str]:
    if not isinstance(addr, str):
        raise AddressError("address must be a string")
    _check_raw(addr, MAX_MAILBOX)
    text = addr.strip()
    if text[:1] == "<" and text[-1:] == ">" and not _NOT_BARE_SPEC.search(text, 1, len(text) - 1):
        # A bare "<addr-spec>" (the common From and MAIL FROM form): what parse_address would
        # take out of the brackets, without its phrase and comment handling.
        spec = text[1:-1].strip()
        if spec.startswith("@"):
            raise AddressError("source routes are not accepted in a mailbox")
        return _parse_addr_spec(spec)
    if "<" in text or "(" in text:
        parsed = parse_address(text)
        return parsed.local_part, parsed.domain, parsed.domain_unicode
    return _parse_addr_spec(text)


def _check_raw(value: str, limit: int) -> None:
    # CVE-2024-6923 and RFC 5322 §2.2: a raw CR or LF would let an address start a new header.
    if _FORBIDDEN.search(value):
        raise AddressError("address contains CR, LF or NUL")
    if len(value) > limit:
        raise AddressError(f"address text longer than {limit} characters")


def _parse_addr_spec(spec: str) -> tuple[str, str, str]:
    """Validate an addr-spec; return (canonical local part, A-label domain, U-label domain)."""
    if not spec:
        raise AddressError("empty addr-spec")
    if spec.startswith('"'):
        close = _closing_quote(spec)
        if close < 0:
            raise AddressError("unterminated quoted local part")
        local = _canonical_quoted_local(spec[1:close])
        rest = spec[close + 1 :]
        if not rest.startswith("@"):
            raise AddressError("quoted local part must be followed by '@'")
        domain = rest[1:]
        if "@" in domain:
            raise AddressError("more than one '@' in address")
    else:
        if spec.count("@") != 1:
            raise AddressError("address must contain exactly one '@'" if "@" in spec else "address has no '@'")
        local, domain = spec.split("@")
        if not local:
            raise AddressError("empty local part")
        if not _DOT_ATOM.fullmatch(local) or not local.isprintable():
            raise AddressError(f"invalid local part {local!r}")
    if len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
        raise AddressError(f"local part longer than {MAX_LOCAL_PART} octets")
    ascii_domain, unicode_domain = normalise_domain(domain)
    if len(local.encode("utf-8", "surrogatepass")) + 1 + len(ascii_domain) > MAX_ADDR_SPEC:
        raise AddressError(f"address longer than {MAX_ADDR_SPEC} octets")
    return local, ascii_domain, unicode_domain


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i
        i += 1
    return -1


def _canonical_quoted_local(content: str) -> str:
    # RFC 5322 §3.2.4: quoted-pair; RFC 5321 §4.1.2 prefers the unquoted form when it is a dot-atom.
    chars: list[str] = []
    it = iter(content)
    for ch in it:
        if ch == "\\":
            ch = next(it, "")
            if not ch:
                raise AddressError("dangling backslash in quoted local part")
        if not (ch == " " or ch == "\t" or ch.isprintable()):
            raise AddressError("control character in quoted local part")
        chars.append(ch)
    unquoted = "".join(chars)
    if not unquoted:
        raise AddressError("empty local part")
    if _DOT_ATOM.fullmatch(unquoted) and unquoted.isprintable():
        return unquoted
    return '"' + unquoted.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=4096)
def normalise_domain(domain: str) -> tuple[str, str]:
    """Return (lowercase A-label form, Unicode form) of a domain or address literal."""
    if not domain:
        raise AddressError("empty domain")
    if domain.startswith("["):
        return _address_literal(domain)
    if domain.isascii():
        lowered = domain.lower()
        labels = lowered.split(".")
        for label in labels:
            if not _LDH_LABEL.fullmatch(label):
                raise AddressError(f"invalid domain {domain!r}")
        if len(lowered) > MAX_DOMAIN:
            raise AddressError(f"domain longer than {MAX_DOMAIN} octets")
        if "xn--" not in lowered:
            return lowered, lowered
        unicode_form = _decode_idna(lowered)
        return lowered, unicode_form
    if not domain.isprintable():
        raise AddressError(f"invalid domain {domain!r}")
    ascii_form = _encode_idna(domain)
    if len(ascii_form) > MAX_DOMAIN:
        raise AddressError(f"domain longer than {MAX_DOMAIN} octets")
    for label in ascii_form.split("."):
        if not _LDH_LABEL.fullmatch(label):
            raise AddressError(f"invalid domain {domain!r}")
    return ascii_form, _decode_idna(ascii_form)


def _address_literal(domain: str) -> tuple[str, str]:
    # RFC 5321 §4.1.3: "[" IPv4 "]" or "[IPv6:" IPv6 "]"; general literals are refused.
    if not domain.endswith("]"):
        raise AddressError(f"invalid address literal {domain!r}")
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            literal = f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        else:
            literal = f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError as exc:
        raise AddressError(f"invalid address literal {domain!r}") from exc
    return literal, literal


def _encode_idna(domain: str) -> str:
    try:
        if _idna is not None:
            encoded: bytes = _idna.encode(domain, uts46=True)
            return encoded.decode("ascii")
        return domain.encode("idna").decode("ascii").lower()  # pragma: no cover
    except (UnicodeError, ValueError) as exc:
        raise AddressError(f"invalid internationalised domain {domain!r}") from exc


def _decode_idna(domain: str) -> str:
    try:
        if _idna is not None:
            decoded: str = _idna.decode(domain)
            return decoded
        return domain.encode("ascii").decode("idna")  # pragma: no cover
    except (UnicodeError, ValueError) as exc:
        raise AddressError(f"invalid A-label in domain {domain!r}") from exc


def _to_unicode(domain: str) -> str:
    if "xn--" not in domain:
        return domain
    try:
        return _decode_idna(domain)
    except AddressError:
        return domain


def _strip_comments(value: str) -> tuple[str, list[str]]:
    """Remove RFC 5322 §3.2.2 comments outside quoted strings; return the text and the comments."""
    if "(" not in value and ")" not in value:
        return value, []
    out: list[str] = []
    comments: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in value:
        if escaped:
            (current if depth else out).append(ch)
            escaped = False
            continue
        if ch == "\\" and (quoted or depth):
            escaped = True
            if not depth:
                out.append(ch)
            continue
        if depth:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    comments.append("".join(current))
                    current = []
                    out.append(" ")
                    continue
            current.append(ch)
            continue
        if quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch == "(":
            depth = 1
            continue
        elif ch == ")":
            raise AddressError("unbalanced ')' in address")
        out.append(ch)
    if depth:
        raise AddressError("unterminated comment in address")
    if quoted:
        raise AddressError("unterminated quoted string in address")
    return "".join(out), comments


def _unquoted_positions(text: str, target: str) -> list[int]:
    if '"' not in text:
        positions: list[int] = []
        start = text.find(target)
        while start >= 0:
            positions.append(start)
            start = text.find(target, start + 1)
        return positions
    found: list[int] = []
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == target and not quoted:
            found.append(i)
    if quoted:
        raise AddressError("unterminated quoted string in address")
    return found


def _unquote_phrase(phrase: str) -> str:
    """RFC 5322 §3.2.5 phrase: words and quoted strings; quotes removed, whitespace collapsed."""
    if '"' not in phrase:
        return _WSP.sub(" ", phrase).strip()
    out: list[str] = []
    quoted = escaped = False
    for ch in phrase:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        else:
            out.append(ch)
    return _WSP.sub(" ", "".join(out)).strip()


_PHRASE_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


def _quote_phrase(name: str) -> str:
    if _PHRASE_SPECIALS.search(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def _flush(buf: list[str], items: list[str]) -> None:
    item = "".join(buf).strip()
    if item:
        items.append(item)
    buf.clear()
