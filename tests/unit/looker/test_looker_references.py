"""Cookieless session references: kept until Looker's TTL, bounded, oldest dropped first."""

from __future__ import annotations

from idgate.looker.references import ReferenceStore


def test_a_reference_lives_until_its_ttl() -> None:
    now = [1000.0]
    store = ReferenceStore(clock=lambda: now[0])
    store.put("k", "ref", 60)
    assert store.get("k") == "ref"
    now[0] += 59.9
    assert store.get("k") == "ref"
    now[0] += 0.1
    assert store.get("k") is None and store.get("other") is None


def test_the_store_is_bounded_and_drops_the_oldest() -> None:
    store = ReferenceStore(max_entries=2, clock=lambda: 0.0)
    store.put("a", "1", 60)
    store.put("b", "2", 60)
    store.put("a", "1b", 60)  # refreshed: now the newest
    store.put("c", "3", 60)
    assert (store.get("a"), store.get("b"), store.get("c")) == ("1b", None, "3")
