"""Agent-facing text: HTML to text, sanitising, reply extraction, previews."""

from __future__ import annotations

import time

import pytest

from agentpost.proto.text import extract_reply, extract_reply_html, html_to_text, preview, sanitize_html

# --------------------------------------------------------------------------- html_to_text


@pytest.mark.parametrize(
    "hidden",
    [
        '<div style="display:none">PREHEADER</div>',
        '<div style="display: none !important; max-height:0">PREHEADER</div>',
        "<span style='visibility:hidden'>PREHEADER</span>",
        '<div style="mso-hide:all;font-size:1px">PREHEADER</div>',
        '<div style="max-height:0px; overflow:hidden">PREHEADER</div>',
        '<span style="opacity:0">PREHEADER</span>',
        "<div hidden>PREHEADER</div>",
    ],
)
def test_hidden_preheader_is_not_in_text(hidden: str) -> None:
    text = html_to_text(f"<html><body>{hidden}<p>Hello <b>world</b></p></body></html>")
    assert "PREHEADER" not in text
    assert "Hello world" in text


def test_html_to_text_keeps_structure_links_and_drops_script() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<p>First&nbsp;para</p><p>Second &amp; last</p><ul><li>one</li><li>two</li></ul>"
        '<a href="https://example.com/x">the link</a><script>alert(1)</script>'
        "<p>&zwnj;&#8203;\u034f</p></body></html>"
    )
    text = html_to_text(html)
    assert "First para" in text and "Second & last" in text
    assert "* one" in text and "* two" in text
    assert "[the link](https://example.com/x)" in text
    assert "alert" not in text and "color:red" not in text
    assert "\u200b" not in text and "\u200c" not in text and "\n\n\n" not in text


@pytest.mark.parametrize("html", ["", "   ", "<", "<<<>>>", "<html><body", "\x00\x01", "<p>" * 10_000])
def test_html_to_text_never_raises(html: str) -> None:
    assert isinstance(html_to_text(html), str)


# --------------------------------------------------------------------------- sanitize_html


def test_sanitize_removes_script_handlers_and_javascript_urls() -> None:
    dirty = (
        '<p onclick="steal()">Hi <b>there</b></p><script>alert(1)</script>'
        '<a href="javascript:alert(1)">bad</a><a href="https://example.com/">good</a>'
        '<img src="x" onerror="alert(1)"><iframe src="https://evil.example"></iframe>'
        "<style>body{display:none}</style><form action=/x><input name=p></form>"
        '<div style="position:fixed;top:0;color:red;background:url(javascript:x)">styled</div>'
        '<svg><script>alert(2)</script></svg><a href="data:text/html,<script>x</script>">data</a>'
    )
    clean = sanitize_html(dirty)
    lowered = clean.lower()
    for needle in ("<script", "onclick", "onerror", "javascript:", "<iframe", "<style", "<form", "<input",
                   "position", "data:text", "alert"):  # fmt: skip
        assert needle not in lowered, needle
    assert "<b>there</b>" in clean
    assert 'href="https://example.com/"' in clean
    assert "color:red" in clean
    assert "styled" in clean


def test_sanitize_keeps_tables_and_inline_cid_images() -> None:
    html = (
        '<table border="0" cellpadding="2"><tr><td colspan="2" style="padding:4px">cell</td></tr></table>'
        '<img src="cid:logo@example.com" alt="logo" width="10">'
    )
    clean = sanitize_html(html)
    assert "<table" in clean and 'colspan="2"' in clean and "padding:4px" in clean
    assert 'src="cid:logo@example.com"' in clean and 'alt="logo"' in clean


@pytest.mark.parametrize("html", ["", "<", "\x00<p>x", "<a href='", "<p>" * 10_000])
def test_sanitize_never_raises(html: str) -> None:
    assert isinstance(sanitize_html(html), str)


# --------------------------------------------------------------------------- extract_reply


@pytest.mark.parametrize(
    "name, text, expected",
    [
        (
            "gmail",
            "Thanks, I will look at it tomorrow.\n\n"
            "On Mon, Jan 1, 2024 at 10:00 AM Alice Example <alice@example.com> wrote:\n"
            "> Can you check the numbers?\n> Thanks\n",
            "Thanks, I will look at it tomorrow.",
        ),
        (
            "gmail wrapped attribution",
            "Sounds good.\n\nOn Mon, Jan 1, 2024 at 10:00 AM Alice Example <\nalice@example.com> wrote:\n\n> q\n",
            "Sounds good.",
        ),
        (
            "german",
            "Passt, danke!\n\nAm 01.01.2024 um 10:00 schrieb Alice <alice@example.com>:\n> Kannst du das prüfen?\n",
            "Passt, danke!",
        ),
        (
            "french",
            "D'accord, c'est noté.\n\nLe lun. 1 janv. 2024 à 10:00, Alice <alice@example.com> a écrit :\n"
            "> Peux-tu vérifier ?\n",
            "D'accord, c'est noté.",
        ),
        (
            "spanish",
            "Vale.\n\nEl lun, 1 ene 2024 a las 10:00, Alice (<alice@example.com>) escribió:\n> pregunta\n",
            "Vale.",
        ),
        (
            "outlook",
            "Sure, done.\n\n________________________________\nFrom: Alice <a@example.com>\n"
            "Sent: Monday, January 1, 2024 10:00 AM\nTo: Bob <b@example.com>\nSubject: Numbers\n\nCan you check?\n",
            "Sure, done.",
        ),
        (
            "outlook original message",
            "Approved.\n\n-----Original Message-----\n"
            "From: Alice\nSent: Monday\nTo: Bob\nSubject: PO\n\nPlease approve\n",
            "Approved.",
        ),
        (
            "rfc 3676 signature",
            "Here is the report.\n\n-- \nBob Builder\nACME Corp | +1 555 0100\n",
            "Here is the report.",
        ),
        (
            "signature and quote",
            "Yes.\n\n-- \nBob\n\nOn Tue, Jan 2, 2024 at 9:00 AM Alice <a@example.com> wrote:\n> ok?\n",
            "Yes.",
        ),
        (
            "sent from my phone",
            "Yes please\n\nSent from my iPhone\n\n> On 1 Jan 2024, at 10:00, Alice <a@example.com> wrote:\n> q\n",
            "Yes please",
        ),
        (
            "valediction with quote",
            "Hi Alice,\n\nAll done.\n\nBest regards,\nBob Smith\n\n"
            "On Mon, Jan 1, 2024 at 10:00 AM Alice <a@x.example> wrote:\n"
            "> Please do it\n",
            "Hi Alice,\n\nAll done.",
        ),
        (
            "thanks is not a signature when it is a sentence",
            "Hi,\nThanks, got it. Can you also send the invoice?\n\n"
            "On Mon, Jan 1, 2024 Alice <a@x.example> wrote:\n> x\n",
            "Hi,\nThanks, got it. Can you also send the invoice?",
        ),
        (
            "bottom posted",
            "On Mon, Jan 1, 2024 at 10:00 AM Alice <alice@example.com> wrote:\n> question?\n\nanswer here\n",
            "answer here",
        ),
        (
            "trailing quote without attribution",
            "My answer.\n\n> the question\n> more question\n",
            "My answer.",
        ),
        (
            "interleaved answers keep their quotes",
            "> first question\nfirst answer\n> second question\nsecond answer\n",
            "first answer\n> second question\nsecond answer",
        ),
        (
            "indentation kept",
            "Try this:\n\n    def f():\n        return 1\n\nOn Mon, Jan 1, 2024 Alice <a@x.example> wrote:\n> how?\n",
            "Try this:\n\n    def f():\n        return 1",
        ),
        (
            "everything quoted falls back to the text",
            "> only\n> quotes\n",
            "> only\n> quotes",
        ),
    ],
)
def test_extract_reply(name: str, text: str, expected: str) -> None:
    assert extract_reply(text) == expected
    assert extract_reply(text.replace("\n", "\r\n")) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Hello,\n\nplease find the numbers below.\n  - item one\n  - item two\n\nCheers, Bob\n",
        "Meeting at 10:00 tomorrow, see https://example.com/agenda for details.\nNote: bring a laptop.",
        "Data: 42\nDo: nothing\nTo do: everything",
    ],
)
def test_extract_reply_without_quotes_returns_text_as_is(text: str) -> None:
    assert extract_reply(text) == text.strip()


def test_extract_reply_fast_path_is_cheap() -> None:
    text = "Hello Bob,\n\nthe build passed and the release is tagged. Nothing else to report today.\n\nAlice\n"
    extract_reply(text)
    started = time.process_time()  # CPU time: a busy machine's other processes don't count
    for _ in range(1000):
        extract_reply(text)
    # About 5 µs each on the development machine; the library path costs over 100 µs.
    assert (time.process_time() - started) / 1000 < 50e-6


@pytest.mark.parametrize(
    "text", ["", "\n", ">", "wrote:", "-- ", "On wrote:\n>", "From: x\nTo: y\n" * 5000, "年" * 10_000]
)
def test_extract_reply_never_raises(text: str) -> None:
    assert isinstance(extract_reply(text), str)


def test_extract_reply_hostile_colon_lines_stay_fast() -> None:
    text = "answer\n" + "From: a\nTo: b\nx: y\n" * 20_000
    started = time.perf_counter()
    assert extract_reply(text) == "answer"
    assert time.perf_counter() - started < 2.0


# --------------------------------------------------------------------------- extract_reply_html


def test_extract_reply_html_gmail() -> None:
    html = (
        '<div dir="ltr">New text <b>here</b><script>alert(1)</script></div><br>'
        '<div class="gmail_quote gmail_quote_container">'
        '<div dir="ltr" class="gmail_attr">On Mon, Alice wrote:<br></div>'
        '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex">old <div>stuff</div></blockquote></div>'
    )
    reply = extract_reply_html(html)
    assert "New text <b>here</b>" in reply
    assert "old" not in reply and "wrote" not in reply and "script" not in reply


def test_extract_reply_html_outlook_cuts_to_the_end() -> None:
    html = (
        '<div>Reply text</div><div id="appendonsend"></div><hr style="display:inline-block">'
        '<div id="divRplyFwdMsg"><b>From:</b> Alice<br><b>Sent:</b> Monday</div><div>old message</div>'
    )
    reply = extract_reply_html(html)
    assert "Reply text" in reply
    assert "Alice" not in reply and "old message" not in reply


def test_extract_reply_html_blockquote_and_thunderbird() -> None:
    html = (
        '<p>Mine</p><div class="moz-cite-prefix">On 1/1/24 Alice wrote:<br></div>'
        '<blockquote type="cite"><blockquote>older</blockquote>old</blockquote><p>after</p>'
    )
    reply = extract_reply_html(html)
    assert "Mine" in reply and "after" in reply
    assert "old" not in reply and "Alice" not in reply


@pytest.mark.parametrize("html", ["", "<blockquote>unclosed", "<div class='gmail_quote'>", "</div></div>", "<"])
def test_extract_reply_html_never_raises(html: str) -> None:
    assert isinstance(extract_reply_html(html), str)


# --------------------------------------------------------------------------- preview


@pytest.mark.parametrize(
    "text, length, expected",
    [
        ("", 200, ""),
        ("  Hello\n\n  world\t!  ", 200, "Hello world !"),
        ("abc def ghi", 7, "abc def"),
        ("abc def ghi", 4, "abc"),
        (" \n" * 5000 + "late text", 20, "late text"),
        ("x" * 500, 200, "x" * 200),
    ],
)
def test_preview(text: str, length: int, expected: str) -> None:
    assert preview(text, length) == expected
