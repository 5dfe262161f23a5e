"""DataKeyCache: opened data keys per container, bounded in entries and age, never shown."""

import pytest

from broker.credentials.data_key_cache import DataKeyCache

CONTEXT = {"connection_id": "user-1", "purpose": "oauth2-token-set"}
KEY = bytes(range(32))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_key_is_found_only_for_its_wrapped_key_and_its_encryption_context():
    cache = DataKeyCache()
    cache.put(b"wrapped-1", CONTEXT, KEY)

    assert cache.get(b"wrapped-1", dict(reversed(CONTEXT.items()))) == KEY
    assert cache.get(b"wrapped-2", CONTEXT) is None
    assert cache.get(b"wrapped-1", {**CONTEXT, "connection_id": "user-2"}) is None
    assert cache.get(b"wrapped-1", {**CONTEXT, "purpose": "insightly-api-key"}) is None


def test_a_key_older_than_the_max_age_is_gone_and_kms_is_asked_again():
    clock = Clock()
    cache = DataKeyCache(max_age_seconds=300, clock=clock)
    cache.put(b"wrapped-1", CONTEXT, KEY)

    clock.now += 299
    assert cache.get(b"wrapped-1", CONTEXT) == KEY  # a hit does not extend its life
    clock.now += 1
    assert cache.get(b"wrapped-1", CONTEXT) is None
    assert len(cache) == 0


def test_past_max_entries_the_least_recently_used_key_goes():
    cache = DataKeyCache(max_entries=2)
    cache.put(b"a", CONTEXT, KEY)
    cache.put(b"b", CONTEXT, KEY)
    cache.get(b"a", CONTEXT)

    cache.put(b"c", CONTEXT, KEY)

    assert [cache.get(w, CONTEXT) is not None for w in (b"a", b"b", b"c")] == [True, False, True]
    assert len(cache) == 2


def test_wipe_forgets_every_key_and_overwrites_its_bytes():
    cache = DataKeyCache()
    cache.put(b"a", CONTEXT, KEY)
    held = next(iter(cache._entries.values()))[1]  # the cache's own copy of the key

    cache.wipe()

    assert cache.get(b"a", CONTEXT) is None and len(cache) == 0
    assert held == bytearray(len(KEY))


def test_an_evicted_key_is_overwritten_too():
    cache = DataKeyCache(max_entries=1)
    cache.put(b"a", CONTEXT, KEY)
    held = next(iter(cache._entries.values()))[1]

    cache.put(b"b", CONTEXT, KEY)

    assert held == bytearray(len(KEY))


def test_its_repr_never_shows_a_key():
    cache = DataKeyCache()
    cache.put(b"wrapped-1", CONTEXT, KEY)

    shown = repr(cache) + str(cache)

    assert "wrapped" not in shown and KEY.hex() not in shown and repr(KEY) not in shown
    assert shown.startswith("DataKeyCache(1 of")


@pytest.mark.parametrize(("entries", "age"), [(0, 300), (10, 0)])
def test_an_unbounded_cache_is_refused(entries, age):
    with pytest.raises(ValueError):
        DataKeyCache(max_entries=entries, max_age_seconds=age)
