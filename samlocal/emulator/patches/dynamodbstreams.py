"""Fixes for moto's DynamoDB Streams (written against moto 5.2.5; see ``base.MOTO_VERSION``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from moto.dynamodbstreams.models import DynamoDBStreamsBackend

from samlocal.emulator.patches.base import Patch, Replacement

# poller at 4 calls a second leaks ~26 MB an hour per shard). AWS iterators expire after 15 minutes;
# so do these, with AWS's ExpiredIteratorException when one is used after that.
ITERATOR_TTL_SECONDS = 15 * 60
_iterator_births: dict[int, Any] = {}  # id(backend) → deque of (born, arn)
_iterator_lock = threading.Lock()


def _track_iterator(backend: DynamoDBStreamsBackend, arn: str) -> None:
    from collections import deque

    now = time.monotonic()
    with _iterator_lock:
        births = _iterator_births.setdefault(id(backend), deque())
        births.append((now, arn))
        while births and now - births[0][0] > ITERATOR_TTL_SECONDS:
            backend.shard_iterators.pop(births.popleft()[1], None)


def _make_get_shard_iterator(original: Any) -> Any:
    def _get_shard_iterator(self: DynamoDBStreamsBackend, *args: Any, **kwargs: Any) -> Any:
        iterator = original(self, *args, **kwargs)
        _track_iterator(self, iterator.arn)
        return iterator

    return _get_shard_iterator


def _make_get_records(original: Any) -> Any:
    from moto.core.exceptions import JsonRESTError

    def _get_records(self: DynamoDBStreamsBackend, iterator_arn: str, limit: int) -> Any:
        if iterator_arn not in self.shard_iterators:
            raise JsonRESTError("ExpiredIteratorException", "Iterator expired. The iterator was created more than "
                                "15 minutes ago (or never existed).")
        result = original(self, iterator_arn, limit)
        _track_iterator(self, result["NextShardIterator"])
        return result

    return _get_records


SHARD_ITERATORS = Patch(
    "dynamodbstreams.shard_iterators",
    "shard iterators expire after 15 minutes as on AWS (moto kept every one forever)",
    (
        Replacement(DynamoDBStreamsBackend, "get_shard_iterator", "method", _make_get_shard_iterator),
        Replacement(DynamoDBStreamsBackend, "get_records", "method", _make_get_records),
    ),
)
PATCHES = (SHARD_ITERATORS,)
