"""Thread keys and base subjects (RFC 5322 §3.6.4, RFC 5256 §2.1)."""

from __future__ import annotations

import pytest

from agentpost.proto.threads import base_subject, msgids_in, normalise_msgid, thread_keys


@pytest.mark.parametrize(
    "value, expected",
    [
        ("<abc@Example.COM>", "<abc@example.com>"),
        ("  <AbC.123@host.example>  ", "<AbC.123@host.example>"),
        ("<CAF=x+y/z@mail.gmail.com>", "<CAF=x+y/z@mail.gmail.com>"),
        ("<long-id-part-one\r\n part-two@host.example>", "<long-id-part-onepart-two@host.example>"),
        ("(comment) <a@b.example>", "<a@b.example>"),
        ("bare@host.example", "<bare@host.example>"),
        ("<no-at-sign>", "<no-at-sign>"),
        ("", None),
        ("no id here", None),
        ("<@host.example>", None),
        ("<a@>", None),
        ("<unterminated@host", None),
    ],
)
def test_normalise_msgid(value: str, expected: str | None) -> None:
    assert normalise_msgid(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("<a@x> <b@x>\r\n <c@x>", ["<a@x>", "<b@x>", "<c@x>"]),
        ("<a@x>,<b@x>", ["<a@x>", "<b@x>"]),
        ("<a@x> <a@X> <b@x>", ["<a@x>", "<b@x>"]),
        ("a@x b@x", ["<a@x>", "<b@x>"]),
        ("<a@x> (Bob's message of Monday)", ["<a@x>"]),
        (None, []),
        ("", []),
    ],
)
def test_msgids_in(value: str | None, expected: list[str]) -> None:
    assert msgids_in(value) == expected


@pytest.mark.parametrize(
    "message_id, in_reply_to, references, expected",
    [
        (None, None, [], []),
        ("<m3@x>", "<m2@x>", ["<m1@x>", "<m2@x>"], ["<m2@x>", "<m1@x>"]),
        ("<m3@x>", None, ["<m1@x>", "<m2@x>"], ["<m2@x>", "<m1@x>"]),
        ("<m3@x>", "<m2@x>", [], ["<m2@x>"]),
        # Its own id never counts, whatever a broken client put in References.
        ("<m3@x>", "<m2@x>", ["<m1@x>", "<m3@x>", "<m2@x>"], ["<m2@x>", "<m1@x>"]),
        # id-right compares case-insensitively, id-left exactly.
        ("<m3@X>", None, ["<m3@x>", "<M3@x>"], ["<M3@x>"]),
        # In-Reply-To disagreeing with References: both kept, In-Reply-To first.
        ("<m9@x>", "<p@x>", ["<r1@x>", "<r2@x>"], ["<p@x>", "<r2@x>", "<r1@x>"]),
        (None, "garbage", ["also garbage", "<ok@x>"], ["<ok@x>"]),
    ],
)
def test_thread_keys(
    message_id: str | None, in_reply_to: str | None, references: list[str], expected: list[str]
) -> None:
    assert thread_keys(message_id, in_reply_to, references) == expected


def test_thread_keys_bounded_on_hostile_references() -> None:
    references = [f"<r{i}@x>" for i in range(10_000)]
    keys = thread_keys("<me@x>", None, references)
    assert keys[0] == "<r9999@x>"
    assert len(keys) <= 200


@pytest.mark.parametrize(
    "subject, expected",
    [
        (None, ""),
        ("", ""),
        ("Hello", "hello"),
        ("Re: Hello", "hello"),
        ("RE: re: Fwd: Hello", "hello"),
        ("Re[2]: Hello", "hello"),
        ("Re^3: Hello", "hello"),
        ("Fw: Hello", "hello"),
        ("AW: WG: Hello", "hello"),
        ("SV: VS: Hello", "hello"),
        ("Antw: Hello", "hello"),
        ("TR: Réf : Hello", "hello"),
        ("回复：Hello", "hello"),
        ("[list-tag] Re: Hello", "hello"),
        ("Re: [list-tag] Re: Hello", "hello"),
        ("[only-a-tag]", "[only-a-tag]"),
        ("Hello (fwd)", "hello"),
        ("Hello (fwd) (FWD)", "hello"),
        ("[Fwd: Re: Hello]", "hello"),
        ("  Hello \t  world  ", "hello world"),
        ("Reply needed", "reply needed"),
        ("Re:", ""),
        ("Resume: my CV", "resume: my cv"),
    ],
)
def test_base_subject(subject: str | None, expected: str) -> None:
    assert base_subject(subject) == expected
