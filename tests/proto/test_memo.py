"""short_text_cache: a short text is computed once, a long one every time."""

from __future__ import annotations

from agentpost.proto.memo import short_text_cache


def test_short_texts_are_computed_once_and_long_ones_every_time() -> None:
    calls: list[str] = []

    @short_text_cache(4)
    def upper(text: str) -> str:
        calls.append(text)
        return text.upper()

    assert upper("abcd") == upper("abcd") == "ABCD"
    assert upper("abcde") == upper("abcde") == "ABCDE"
    assert calls == ["abcd", "abcde", "abcde"]
