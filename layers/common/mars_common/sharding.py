"""The one sharding function: every ingress path routes a message to the same queue and group."""

from __future__ import annotations

import hashlib


def message_key(app_id: str, message_id: str) -> str:
    """Stable 64-hex identity of a message; also its FIFO MessageGroupId (≤128 chars, any id allowed)."""
    return hashlib.sha256(f"{app_id}\x1f{message_id}".encode()).hexdigest()


def shard(app_id: str, message_id: str, queue_count: int) -> int:
    """Queue index for a message: all its events land in one queue, in order."""
    if queue_count < 1:
        raise ValueError("queue_count must be >= 1")
    return int(message_key(app_id, message_id)[:16], 16) % queue_count


def dedup_id(app_id: str, message_id: str, event_id: str) -> str:
    """FIFO MessageDeduplicationId: an event id is unique within its message, not across messages."""
    return hashlib.sha256(f"{app_id}\x1f{message_id}\x1f{event_id}".encode()).hexdigest()
