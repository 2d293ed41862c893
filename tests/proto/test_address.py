"""Strict address parsing: RFC 5321 limits, RFC 5322 syntax, SMTPUTF8 and IDNA."""

from __future__ import annotations

import pytest

from agentpost.proto.address import (
    Address,
    AddressError,
    domain_of,
    local_part_of,
    parse_address,
    parse_address_list,
    parse_path,
    split_address_list,
)


@pytest.mark.parametrize(
    "value, addr_spec, display_name, key",
    [
        ("alice@example.com", "alice@example.com", None, "alice@example.com"),
        ("Alice <Alice@Example.COM>", "Alice@example.com", "Alice", "alice@example.com"),
        ('"Doe, John" <john@example.org>', "john@example.org", "Doe, John", "john@example.org"),
        ("<bob@example.net>", "bob@example.net", None, "bob@example.net"),
        ("MAILER-DAEMON@mx.example (Mail Delivery System)", "MAILER-DAEMON@mx.example", "Mail Delivery System",
         "mailer-daemon@mx.example"),
        ("  Bob   Smith   <bob@example.net>  ", "bob@example.net", "Bob Smith", "bob@example.net"),
        ('"a b"@example.com', '"a b"@example.com', None, '"a b"@example.com'),
        ('"ab"@example.com', "ab@example.com", None, "ab@example.com"),
        ("user+tag@example.com", "user+tag@example.com", None, "user+tag@example.com"),
        ("a@[192.0.2.1]", "a@[192.0.2.1]", None, "a@[192.0.2.1]"),
        ("a@[IPv6:2001:DB8:0::1]", "a@[IPv6:2001:db8::1]", None, "a@[ipv6:2001:db8::1]"),
        # IDN domain: stored as the A-label (RFC 5890), lowercased.
        ("jörg@Bücher.example", "jörg@xn--bcher-kva.example", None, "jörg@xn--bcher-kva.example"),
        # SMTPUTF8 local part (RFC 6531).
        ("Пользователь <пользователь@пример.рф>", "пользователь@xn--e1afmkfd.xn--p1ai", "Пользователь",
         "пользователь@xn--e1afmkfd.xn--p1ai"),
        ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v", None, "用户@xn--fsqu00a.xn--4rr70v"),
    ],
)  # fmt: skip
def test_parse_address_accepts(value: str, addr_spec: str, display_name: str | None, key: str) -> None:
    address = parse_address(value)
    assert address.addr_spec == addr_spec
    assert address.display_name == display_name
    assert address.key == key


@pytest.mark.parametrize(
    "value, reason",
    [
        ("", "empty"),
        ("alice", "no '@'"),
        ("a@b@example.com", "exactly one '@'"),
        ("a\r\n@example.com", "CR, LF or NUL"),
        ("Alice <alice@example.com>\r\nBcc: victim@example.org", "CR, LF or NUL"),
        ("alice@exa\nmple.com", "CR, LF or NUL"),
        ("al\x00ice@example.com", "CR, LF or NUL"),
        ("a..b@example.com", "invalid local part"),
        (".a@example.com", "invalid local part"),
        ("a.@example.com", "invalid local part"),
        ("a b@example.com", "invalid local part"),
        ("a@exa_mple.com", "invalid domain"),
        ("a@-example.com", "invalid domain"),
        ("a@example.com.", "invalid domain"),
        ("a@example..com", "invalid domain"),
        ("x" * 65 + "@example.com", "local part longer than 64"),
        ("a@" + ".".join(["a" * 63] * 4) + ".com", "domain longer than 255"),
        ("a@" + "b" * 64 + ".com", "invalid domain"),
        ("<alice@example.com> trailing", "text after '>'"),
        ("Alice <alice@example.com", "without closing"),
        ("<@relay.example:alice@example.com>", "source routes"),
        ('"unterminated@example.com', "unterminated"),
        ("a@[300.1.1.1]", "address literal"),
        ("a@xn--zz.example", "A-label"),
    ],
)
def test_parse_address_rejects(value: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        parse_address(value)


def test_path_length_limit_is_256_octets_with_brackets() -> None:
    local = "l" * 64
    domain = f"{'d' * 62}.{'d' * 62}.{'d' * 54}.example"  # 188 octets
    spec = f"{local}@{domain}"
    assert len(spec) == 253
    assert parse_path(f"<{spec}>") is not None
    with pytest.raises(AddressError, match="256"):
        parse_path(f"<{local}@ee.{domain}>")
    with pytest.raises(AddressError, match="254"):
        parse_address(f"{local}@ee.{domain}")


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"Doe, John" <john@example.org>, jane@example.org', ["john@example.org", "jane@example.org"]),
        ("a@example.com,,  b@example.com ,", ["a@example.com", "b@example.com"]),
        ("undisclosed-recipients:;", []),
        ("Team: a@example.com, b@example.com;, c@example.com", ["a@example.com", "b@example.com", "c@example.com"]),
        ('"x, (y" <x@example.com>, Z (comment, with comma) <z@example.com>', ["x@example.com", "z@example.com"]),
        ("", []),
    ],
)
def test_parse_address_list(value: str, expected: list[str]) -> None:
    assert [a.addr_spec for a in parse_address_list(value)] == expected


def test_parse_address_list_is_strict_about_every_member() -> None:
    with pytest.raises(AddressError):
        parse_address_list("good@example.com, bad@@example.com")


def test_split_address_list_never_raises_on_garbage() -> None:
    assert split_address_list('"unterminated, <a@b') == ['"unterminated, <a@b']


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", None),
        ("<>", None),
        ("  <>  ", None),
        ("a@example.com", "a@example.com"),
        ("<a@Example.com>", "a@example.com"),
        ("<@relay1.example,@relay2.example:user@example.com>", "user@example.com"),
        ("<user@bücher.example>", "user@xn--bcher-kva.example"),
    ],
)
def test_parse_path(value: str, expected: str | None) -> None:
    result = parse_path(value)
    assert (result.addr_spec if result else None) == expected


@pytest.mark.parametrize("value", ["Name <a@example.com>", "a@example.com\r\n", "a b@example.com"])
def test_parse_path_rejects_non_paths(value: str) -> None:
    with pytest.raises(AddressError):
        parse_path(value)


@pytest.mark.parametrize(
    "value, domain, local",
    [
        ("Alice@EXAMPLE.com", "example.com", "Alice"),
        ("x@Bücher.Example", "xn--bcher-kva.example", "x"),
        ("Name <y@Sub.Example.org>", "sub.example.org", "y"),
    ],
)
def test_domain_and_local_part_of(value: str, domain: str, local: str) -> None:
    assert domain_of(value) == domain
    assert local_part_of(value) == local


def test_domain_of_rejects_garbage() -> None:
    with pytest.raises(AddressError):
        domain_of("not an address")


def test_address_display_quotes_specials_and_keeps_unicode_domain() -> None:
    address = parse_address('"Doe, John" <john@bücher.example>')
    assert address.display == '"Doe, John" <john@xn--bcher-kva.example>'
    assert address.domain_unicode == "bücher.example"
    assert str(parse_address("Bob <b@example.com>")) == "Bob <b@example.com>"


def test_address_constructed_positionally_fills_unicode_domain() -> None:
    address = Address("a", "xn--bcher-kva.example", None)
    assert address.domain_unicode == "bücher.example"
    assert address.base_key == "a@xn--bcher-kva.example"
    assert Address("Bob+News", "example.com", None).base_key == "bob@example.com"
