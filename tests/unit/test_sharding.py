"""The one sharding function: stable across processes and deploys, uniform, FIFO-id safe."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest
from mars_common.sharding import dedup_id, message_key, shard

QUEUES = 10


@pytest.mark.parametrize(("app_id", "message_id", "expected"), [
    ("checkout", "order-1001", 6),
    ("billing", "invoice-21", 6),
    ("app", "msg", 9),
    ("mars", "hello", 7),
])
def test_known_shards_are_pinned(app_id: str, message_id: str, expected: int) -> None:
    # Pinned: events already queued under the old hash would land in another queue/group after a change.
    assert shard(app_id, message_id, QUEUES) == expected


def test_message_key_is_pinned_sha256_of_app_and_message() -> None:
    assert message_key("checkout", "order-1001") == hashlib.sha256(b"checkout\x1forder-1001").hexdigest()
    assert message_key("checkout", "order-1001").startswith("ab683f462df812fc")


def test_shard_is_the_message_key_modulo_queue_count() -> None:
    for i in range(200):
        key = message_key("app", f"m{i}")
        assert shard("app", f"m{i}", QUEUES) == int(key[:16], 16) % QUEUES


def test_shard_is_deterministic_and_in_range() -> None:
    for i in range(500):
        s = shard("app", f"id-{i}", QUEUES)
        assert 0 <= s < QUEUES
        assert shard("app", f"id-{i}", QUEUES) == s


def test_all_shards_used_and_roughly_uniform_over_10000_ids() -> None:
    counts = Counter(shard("loadtest", f"message-{i}", QUEUES) for i in range(10_000))
    assert set(counts) == set(range(QUEUES))
    # expected 1000 each; a binomial sd is 30, so ±150 only fails for a broken hash
    assert all(850 <= c <= 1150 for c in counts.values()), counts


def test_uuid_message_ids_are_uniform_too() -> None:
    import uuid

    counts = Counter(shard("app", str(uuid.UUID(int=i * 7919 + 1)), QUEUES) for i in range(5_000))
    assert set(counts) == set(range(QUEUES))
    assert all(400 <= c <= 600 for c in counts.values()), counts


def test_the_app_is_part_of_the_shard_key() -> None:
    # the same message id in different apps is a different message, spread independently
    spread = {shard(f"app{i}", "same-id", QUEUES) for i in range(100)}
    assert len(spread) == QUEUES


@pytest.mark.parametrize("count", [1, 3, 16])
def test_other_queue_counts(count: int) -> None:
    assert {shard("a", f"m{i}", count) for i in range(2000)} == set(range(count))


@pytest.mark.parametrize("count", [0, -1])
def test_queue_count_must_be_positive(count: int) -> None:
    with pytest.raises(ValueError):
        shard("a", "m", count)


def test_group_id_fits_sqs_limits_for_any_message_id() -> None:
    allowed = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}$")  # SQS MessageGroupId
    for app_id, message_id in [("a", "m"), ("x" * 128, "y" * 256), ("app", "ünïcödé 日本 🚀 with spaces")]:
        key = message_key(app_id, message_id)
        assert len(key) <= 128 and allowed.match(key)


def test_message_key_has_no_concatenation_collisions() -> None:
    assert message_key("ab", "c") != message_key("a", "bc")
    assert message_key("a:b", "c") != message_key("a", "b:c")


def test_dedup_id_is_scoped_to_app_message_and_event() -> None:
    base = dedup_id("app", "msg", "evt-1")
    assert dedup_id("app", "msg", "evt-1") == base
    assert len(base) <= 128 and re.fullmatch(r"[0-9a-f]+", base)
    # the same client event id in another message or app is another event
    assert dedup_id("app", "msg-2", "evt-1") != base
    assert dedup_id("app-2", "msg", "evt-1") != base
    assert dedup_id("app", "msg", "evt-2") != base
    assert dedup_id("app", "msg", "evt-1") != message_key("app", "msg")
    assert dedup_id("ab", "c", "d") != dedup_id("a", "bc", "d")
    assert dedup_id("a", "b", "cd") != dedup_id("a", "bc", "d")
