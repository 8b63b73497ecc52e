"""uuid7: RFC 9562 version 7 ids, unique and sortable by creation time."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

from spangraph._ids import uuid7


def test_format_version_and_variant() -> None:
    text = uuid7()
    u = uuid.UUID(text)
    assert text == str(u)  # lower-case, canonical 8-4-4-4-12
    assert text == text.lower()
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert (u.int >> 76) & 0xF == 0x7
    assert (u.int >> 62) & 0b11 == 0b10


def test_timestamp_is_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    ms = u.int >> 80
    # the counter may borrow a millisecond or two when many ids were made just before
    assert before <= ms <= after + 2


def test_monotonic_and_unique_in_tight_loop() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    ints = [uuid.UUID(i).int for i in ids]
    assert all(a < b for a, b in itertools.pairwise(ints))
    assert all(uuid.UUID(i).version == 7 for i in ids[::97])


def test_unique_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def make(n: int) -> None:
        out[n].extend(uuid7() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    everything = [i for chunk in out for i in chunk]
    assert len(everything) == 8000
    assert len(set(everything)) == 8000
    for chunk in out:
        assert chunk == sorted(chunk)


def test_random_bits_differ() -> None:
    a, b = uuid.UUID(uuid7()), uuid.UUID(uuid7())
    mask = (1 << 62) - 1
    assert a.int & mask != b.int & mask
