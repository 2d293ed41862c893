"""CachingResolver: answers and empty answers kept for their TTL, errors never, one lookup for concurrent askers."""

from __future__ import annotations

import asyncio

import pytest

from agentpost.net.dns import CachingResolver, DnsError, FakeResolver, FamilyResolver, answered


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_answers_are_cached_for_ttl_and_empty_answers_for_negative_ttl() -> None:
    fake = FakeResolver({"a.example": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]}})
    clock = Clock()
    cache = CachingResolver(fake, ttl=60, negative_ttl=5, clock=clock)
    assert isinstance(cache, FamilyResolver)
    for _ in range(3):
        assert await cache.txt("A.example") == ["v=spf1 -all"]
        assert await cache.txt("missing.example") == []
        assert await cache.ipv4("a.example") == ["192.0.2.1"]
    assert fake.queries == [("a.example", "TXT"), ("missing.example", "TXT"), ("a.example", "A")]
    clock.now += 10  # the empty answer expired, the positive one did not
    await cache.txt("a.example")
    await cache.txt("missing.example")
    assert fake.queries[3:] == [("missing.example", "TXT")]
    clock.now += 60
    await cache.txt("a.example")
    assert fake.queries[4:] == [("a.example", "TXT")]


async def test_errors_are_not_cached() -> None:
    fake = FakeResolver({}, servfail=["down.example"])
    cache = CachingResolver(fake)
    for _ in range(2):
        with pytest.raises(DnsError):
            await cache.txt("down.example")
    assert fake.queries == [("down.example", "TXT")] * 2


async def test_concurrent_questions_share_one_lookup_and_callers_get_their_own_list() -> None:
    class Slow(FakeResolver):
        async def txt(self, name: str) -> list[str]:
            await asyncio.sleep(0.01)
            return await super().txt(name)

    fake = Slow({"a.example": {"TXT": ["one"]}})
    cache = CachingResolver(fake)
    answers = await asyncio.gather(*(cache.txt("a.example") for _ in range(5)))
    assert answers == [["one"]] * 5 and fake.queries == [("a.example", "TXT")]
    answers[0].append("mutated")
    assert await cache.txt("a.example") == ["one"]


async def test_oldest_entries_make_room() -> None:
    fake = FakeResolver({})
    cache = CachingResolver(fake, max_entries=2)
    for name in ("a.example", "b.example", "c.example", "a.example"):
        await cache.txt(name)
    assert [q[0] for q in fake.queries] == ["a.example", "b.example", "c.example", "a.example"]


async def test_answered_only_when_every_question_has_a_fresh_answer() -> None:
    fake = FakeResolver({"a.example": {"TXT": ["one"]}})
    clock = Clock()
    cache = CachingResolver(fake, ttl=60, negative_ttl=5, clock=clock)
    assert not answered(cache, ["a.example"])
    await cache.txt("A.example")
    assert cache.holds("TXT", "a.example") and not cache.holds("MX", "a.example")
    assert answered(cache, ["a.example"]) and answered(cache, [])
    assert not answered(cache, ["a.example", "b.example"])
    await cache.txt("b.example")  # an empty answer is an answer, kept negative_ttl
    assert answered(cache, ["a.example", "b.example"])
    clock.now += 10
    assert not answered(cache, ["a.example", "b.example"]) and answered(cache, ["a.example"])
    clock.now += 60
    assert not answered(cache, ["a.example"])
    assert not answered(fake, [])  # a resolver without a cache always asks
