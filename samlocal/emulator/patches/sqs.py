"""Fixes for moto's SQS emulation (written against moto 5.2.5; see ``base.MOTO_VERSION``).

``apply()`` replaces a handful of methods on ``moto.sqs.models.Queue``,
``moto.sqs.models.SQSBackend`` and ``moto.sqs.models.Message`` in place, so every
queue created afterwards (and, lazily, every queue created before) gets them.
The SQS patches fix three kinds of problems:

* per-request work that grows with the queue depth (moto rebuilds the whole
  ``Queue.attributes`` dict, which counts every message, several times per
  send/receive, scans the queue for FIFO deduplication, and scans it twice per
  delete and once per visibility change);
* FIFO semantics that differ from AWS (the deduplication window ignores deleted
  messages; a FIFO group whose in-flight messages time out together is
  redelivered last-message-first);
* unbounded memory growth in a long-running emulator.

Nothing here changes API-visible behaviour except where moto differs from AWS;
each patch says which moto behaviour it replaces and why.  Storage layout: a
queue's ``_messages`` becomes a ``_MessageStore`` (an insertion-ordered set with
a receipt-handle index) that still iterates, ``len()``s, ``append``s and
``remove``s like the list moto used.  Every mutation of it, and every iteration
over its live view, happens under the queue's own ``_messages_lock``; iterating
the store from outside (``for m in queue._messages``) walks a snapshot.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import json
import logging
import operator
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from moto.core.utils import camelcase_to_underscores, unix_time, unix_time_millis
from moto.moto_api._internal import mock_random as random
from moto.sqs import models as sqs_models
from moto.sqs.exceptions import (
    InvalidAttributeName,
    InvalidParameterValue,
    MissingParameter,
    ReceiptHandleIsInvalid,
)
from moto.sqs.models import (
    MAXIMUM_MESSAGE_DELAY,
    Message,
    Queue,
    SQSBackend,
    _filter_message_attributes,
    sqs_backends,
)

from samlocal.emulator.patches.base import Patch, Replacement

logger = logging.getLogger(__name__)

# Remember receipt handles of deleted messages (so deleting twice succeeds) for
# as long as a receipt handle can live on AWS (12 h), but never more than this
# many per queue, so a long-running emulator does not grow without bound.
DELETED_HANDLE_TTL_SECONDS = 43200.0
DELETED_HANDLE_MAX = 200_000
# Longest a long-polling receive sleeps before re-checking the queue (timeouts of
# in-flight messages expire without anything notifying the queue's condition).
_LONG_POLL_RECHECK_SECONDS = 1.0


# --------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------


class _MessageStore:
    """Insertion-ordered set of a queue's messages, plus a receipt-handle index and a group index.

    Replaces moto's ``Queue._messages`` list: ``remove`` and the lookup by
    receipt handle are O(1) instead of O(n) list scans.  It keeps the list
    operations moto and user code use (iteration in send order, ``len``,
    ``in``, ``append``, ``remove``, indexing).  ``__iter__`` walks a snapshot, so
    it is safe while other threads mutate the store; the patched hot paths use
    ``live()`` while holding the queue's ``_messages_lock``.
    """

    __slots__ = ("_items", "_by_handle", "_groups", "_ungrouped", "_next")

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        # OrderedDict, not dict: iterating from the front of a plain dict skips the
        # slots of every message removed since its last resize. Each message's value is
        # its place in the send order.
        self._items: OrderedDict[Message, int] = OrderedDict()
        self._by_handle: dict[str, Message] = {}
        # FIFO messages by group, each group in send order (``live_outside``).
        self._groups: dict[str, OrderedDict[Message, int]] = {}
        self._ungrouped = 0
        self._next = 0
        for message in messages:
            self.append(message)

    def append(self, message: Message) -> None:
        if message not in self._items:
            self._next += 1
            self._items[message] = self._next
            group = message.group_id
            if group is None:
                self._ungrouped += 1
            else:
                self._groups.setdefault(group, OrderedDict())[message] = self._next
        for handle in message.all_receipt_handles:
            if handle:
                self._by_handle[handle] = message

    def index_handle(self, message: Message, handle: str | None) -> None:
        """Record a receipt handle just issued for ``message``."""
        if handle and message in self._items:
            self._by_handle[handle] = message

    def by_handle(self, handle: str) -> Message | None:
        return self._by_handle.get(handle)

    def discard(self, message: Message) -> bool:
        if self._items.pop(message, _MISSING) is _MISSING:
            return False
        group = message.group_id
        if group is None:
            self._ungrouped -= 1
        else:
            members = self._groups[group]
            del members[message]
            if not members:
                del self._groups[group]
        for handle in message.all_receipt_handles:
            if handle and self._by_handle.get(handle) is message:
                del self._by_handle[handle]
        return True

    def remove(self, message: Message) -> None:
        if not self.discard(message):
            raise ValueError("message not in queue")

    def live(self) -> Iterator[Message]:
        """Iterate without copying; the caller must hold the queue's lock."""
        return iter(self._items)

    def live_outside(self, groups: set[str]) -> Iterator[Message]:
        """``live()`` without the messages of ``groups`` (a FIFO receive's blocked groups), in the same
        order. When those groups hold most of the queue — one long message's group in flight while
        thousands of its messages wait — the other groups are merged by send order instead of walking
        past every blocked message (a receive was O(queue) whatever it could return)."""
        blocked = sum(len(self._groups[g]) for g in groups if g in self._groups)
        if self._ungrouped or blocked * 2 <= len(self._items):
            return iter(self._items)
        others = [iter(members.items()) for group, members in self._groups.items() if group not in groups]
        return (message for message, _ in heapq.merge(*others, key=operator.itemgetter(1)))

    def __iter__(self) -> Iterator[Message]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, message: object) -> bool:
        return message in self._items

    def __getitem__(self, index: int) -> Message:
        return list(self._items)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (_MessageStore, list)):
            return list(self._items) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"_MessageStore({len(self._items)} messages)"


_MISSING = object()


class _QueueState:
    """Per-queue bookkeeping the patches add to moto's ``Queue``."""

    __slots__ = ("dedup_first_sent", "deleted_handles", "sequence", "wakes")

    def __init__(self) -> None:
        # dedup key -> SentTimestamp (ms) of the first message sent with it.
        # Insertion-ordered, i.e. (roughly) oldest first, so expiry pops the front
        # (O(1) on an OrderedDict).
        self.dedup_first_sent: OrderedDict[Any, float] = OrderedDict()
        # receipt handle -> time.monotonic() when its message was deleted.
        self.deleted_handles: OrderedDict[str, float] = OrderedDict()
        # The last SequenceNumber given to a FIFO message of this queue.
        self.sequence = 0
        # Bumped by wake_receivers: a long poll waiting when it changes ends, empty.
        self.wakes = 0


def _state(queue: Queue) -> _QueueState:
    state = queue.__dict__.get("_local_sqs_state")
    if state is None:
        fresh = _QueueState()
        # A queue created before apply() (or after revert()) has moto's set here.
        legacy = queue.__dict__.pop("deleted_messages", None)
        if legacy:
            fresh.deleted_handles = OrderedDict.fromkeys(legacy, time.monotonic())
        state = queue.__dict__.setdefault("_local_sqs_state", fresh)
    return state


def _store(queue: Queue) -> _MessageStore:
    return queue._messages  # type: ignore[return-value]


def _content_based_dedup(queue: Queue) -> bool:
    """The queue's ContentBasedDeduplication flag, without building ``attributes``.

    Equivalent to moto's ``queue.attributes.get("ContentBasedDeduplication") ==
    "true"``: the attribute only appears for FIFO queues, and ``_set_attributes``
    stores it as a bool.
    """
    if not queue.fifo_queue:
        return False
    value = getattr(queue, "content_based_deduplication", False)
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def count_messages(messages: Iterable[Message], now: float) -> tuple[int, int, int, float | None]:
    """(visible, not visible, delayed, oldest SentTimestamp in ms or None) in one pass.

    Same definitions as moto's ``approximate_number_of_messages`` (visible and not delayed),
    ``..._not_visible`` and ``..._delayed``; moto computed each in its own pass, reading the
    clock twice per message. Also used by the emulator's CloudWatch sampler."""
    visible = not_visible = delayed = 0
    oldest: float | None = None
    for message in messages:
        is_delayed = now < message.delayed_until
        if is_delayed:
            delayed += 1
        if now > message.visible_at:
            if not is_delayed:
                visible += 1
        else:
            not_visible += 1
        sent = message.sent_timestamp
        if sent is not None and (oldest is None or sent < oldest):
            oldest = sent
    return visible, not_visible, delayed, oldest


def _counts(queue: Queue) -> tuple[int, int, int]:
    """(visible, not visible, delayed) with one clock read; the store iterates a snapshot."""
    visible, not_visible, delayed, _oldest = count_messages(queue._messages, unix_time_millis())
    return visible, not_visible, delayed


# --------------------------------------------------------------------------
# Message: instance tracking
# --------------------------------------------------------------------------


class _WeakInstances(weakref.WeakSet):
    """Stands in for moto's ``instances_tracked`` list, holding weak references."""

    def append(self, item: Any) -> None:
        self.add(item)


# Moto's BaseModel.__new__ appends every model instance to a class-level list that
# is only read by the /moto-api/data.json dashboard.  For SQS that is every message
# ever sent *and* the copy made for every receive, kept forever: a long-running
# emulator leaks its whole message history.  Track messages weakly instead, so the
# dashboard still lists the live ones.
def _message_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    instance: Any = object.__new__(cls)
    tracked = cls.__dict__.get("instances_tracked")
    if not isinstance(tracked, _WeakInstances):
        tracked = _WeakInstances()
        cls.instances_tracked = tracked  # type: ignore[attr-defined]
    tracked.append(instance)
    return instance


# --------------------------------------------------------------------------
# Queue
# --------------------------------------------------------------------------


# ``_messages`` becomes a property over a _MessageStore (see its docstring):
# moto's list made delete O(n) twice per call, and visibility changes O(n).
# The setter accepts any iterable, so moto's ``queue._messages = []`` (in
# ``Queue.__init__`` and ``purge_queue``) keeps working, and a queue created
# before ``apply()`` is converted on first access.
def _get_messages(self: Queue) -> _MessageStore:
    store = self.__dict__.get("_message_store")
    if store is None:
        store = _MessageStore(self.__dict__.pop("_messages", ()))
        store = self.__dict__.setdefault("_message_store", store)
    return store


def _set_messages(self: Queue, value: Iterable[Message]) -> None:
    if not isinstance(value, _MessageStore):
        value = _MessageStore(value)
    self.__dict__["_message_store"] = value


# ``deleted_messages`` was a set of every receipt handle of every deleted message,
# growing forever.  Keep the same read interface (``in``, ``len``, iteration) over
# a bounded, time-ordered dict (see DELETED_HANDLE_*).
def _get_deleted_messages(self: Queue) -> Any:
    return _state(self).deleted_handles.keys()


def _set_deleted_messages(self: Queue, value: Iterable[str]) -> None:
    now = time.monotonic()
    _state(self).deleted_handles = OrderedDict.fromkeys(value, now)


# Moto evaluates ``message.visible`` / ``message.delayed`` (a clock read each) per
# message in three separate passes; one pass with one clock read gives the same
# numbers.
def _approximate_number_of_messages(self: Queue) -> int:
    return _counts(self)[0]


def _approximate_number_of_messages_not_visible(self: Queue) -> int:
    return _counts(self)[1]


def _approximate_number_of_messages_delayed(self: Queue) -> int:
    return _counts(self)[2]


def _messages_property(self: Queue) -> list[Message]:
    now = unix_time_millis()
    return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]


# Moto's ``attributes`` counts every message three times (see above) and is called
# several times per send and per received message.  Same result, counted once.
# (The hot paths no longer call it at all; this keeps GetQueueAttributes cheap.)
def _attributes(self: Queue) -> dict[str, Any]:
    visible, not_visible, delayed = _counts(self)
    counts = {
        "ApproximateNumberOfMessages": visible,
        "ApproximateNumberOfMessagesNotVisible": not_visible,
        "ApproximateNumberOfMessagesDelayed": delayed,
    }
    result: dict[str, Any] = {}
    for attribute in self.BASE_ATTRIBUTES:
        if attribute in counts:
            result[attribute] = counts[attribute]
        else:
            result[attribute] = getattr(self, camelcase_to_underscores(attribute))
    if self.fifo_queue:
        for attribute in self.FIFO_ATTRIBUTES:
            result[attribute] = getattr(self, camelcase_to_underscores(attribute))
    if self.kms_master_key_id:  # type: ignore[attr-defined]
        for attribute in self.KMS_ATTRIBUTES:
            result[attribute] = getattr(self, camelcase_to_underscores(attribute))
    if self.policy:
        result["Policy"] = self.policy
    if self.redrive_policy:
        result["RedrivePolicy"] = json.dumps(self.redrive_policy)
    for key in result:
        if isinstance(result[key], bool):
            result[key] = str(result[key]).lower()
    return result


def dedup_window_ms() -> float:
    """AWS's 5-minute deduplication interval; read from moto on every use, so a
    test that patches ``moto.sqs.models.DEDUPLICATION_TIME_IN_SECONDS`` works."""
    return sqs_models.DEDUPLICATION_TIME_IN_SECONDS * 1000


def _dedup_key(queue: Queue, message: Message) -> Any:
    # DeduplicationScope=messageGroup (high-throughput FIFO) scopes ids to the
    # message group on AWS; moto ignored the setting and deduplicated queue-wide.
    if getattr(queue, "deduplication_scope", "queue") == "messageGroup":
        return (message.group_id, message.deduplication_id)
    return message.deduplication_id


def _is_duplicate(queue: Queue, message: Message) -> bool:
    """FIFO deduplication with AWS semantics, O(1) amortised.

    Moto scanned every message still in the queue for the same dedup id, so a
    duplicate of an already-deleted message was enqueued again.  On AWS a message
    whose MessageDeduplicationId was first sent less than 5 minutes ago is accepted
    but not delivered, whether or not the first one is still in the queue.  The
    first send time of each id is kept in an insertion-ordered dict; entries older
    than the window are dropped lazily from the front.  Caller holds the lock.
    """
    index = _state(queue).dedup_first_sent
    window_ms = dedup_window_ms()
    sent = float(message.sent_timestamp or unix_time_millis())
    while index:
        oldest_key = next(iter(index))
        if sent - index[oldest_key] < window_ms:
            break
        del index[oldest_key]
    key = _dedup_key(queue, message)
    first = index.get(key)
    if first is not None and sent - first < window_ms:
        return True
    index[key] = sent
    index.move_to_end(key)
    return False


def _enqueue(queue: Queue, message: Message, deduplicate: bool) -> bool:
    """Append ``message`` (unless it is a FIFO duplicate) and wake long pollers."""
    with queue._messages_lock:
        if deduplicate and queue.fifo_queue and (_content_based_dedup(queue) or message.deduplication_id) and _is_duplicate(queue, message):
            return False
        _store(queue).append(message)
        queue._messages_lock.notify_all()
    return True


def _run_event_source_mappings(queue: Queue) -> None:
    """Moto's Lambda event-source-mapping delivery, verbatim from ``Queue.add_message``."""
    for arn, esm in queue.lambda_event_source_mappings.items():
        if not esm.enabled:
            continue
        backend = sqs_backends[queue.account_id][queue.region]
        messages = backend.receive_message(
            queue.name,
            esm.batch_size,
            queue.receive_message_wait_time_seconds,  # type: ignore[attr-defined]
            queue.visibility_timeout,  # type: ignore[attr-defined]
        )
        from moto.awslambda.utils import get_backend

        result = get_backend(queue.account_id, queue.region).send_sqs_batch(arn, messages, queue.queue_arn)
        if result:
            for m in messages:
                backend.delete_message(queue.name, m.receipt_handle)  # type: ignore[arg-type]
        else:
            for m in messages:
                backend.change_message_visibility(
                    queue.name,
                    m.receipt_handle,  # type: ignore[arg-type]
                    visibility_timeout=0,
                )


# Moto: ``attributes`` rebuilt (counting all messages) and every message scanned
# for a duplicate dedup id, per send.  Now: O(1) flag read and dedup index.
def _add_message(self: Queue, message: Message) -> None:
    if _enqueue(self, message, deduplicate=True):
        _run_event_source_mappings(self)


# Moto: ``any()`` over all messages, then a rebuild of the whole list, per delete.
# Now: receipt-handle index.  Unchanged: deleting an already-deleted handle is a
# no-op, an unknown handle raises ReceiptHandleIsInvalid, any receipt handle the
# message ever had deletes it.  Deleting also wakes long pollers, since it can
# unblock a FIFO message group.
def _delete_message(self: Queue, receipt_handle: str) -> None:
    with self._messages_lock:
        deleted = _state(self).deleted_handles
        if receipt_handle in deleted:
            return
        message = _store(self).by_handle(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid()
        _store(self).discard(message)
        self._pending_messages.discard(message)
        now = time.monotonic()
        for handle in message.all_receipt_handles:
            if handle:
                deleted[handle] = now
        while deleted:
            oldest = next(iter(deleted))
            if len(deleted) <= DELETED_HANDLE_MAX and now - deleted[oldest] < DELETED_HANDLE_TTL_SECONDS:
                break
            del deleted[oldest]
        self._messages_lock.notify_all()


# Moto: ``wait_for(lambda: self.messages)`` builds the list of visible messages on
# every wake-up.  Same predicate, short-circuiting.
def _wait_for_messages(self: Queue, timeout: int) -> None:
    def has_visible() -> bool:
        now = unix_time_millis()
        return any(now > m.visible_at and not now < m.delayed_until for m in _store(self).live())

    with self._messages_lock:
        self._messages_lock.wait_for(has_visible, timeout=timeout)


# --------------------------------------------------------------------------
# SQSBackend
# --------------------------------------------------------------------------


# Moto reads ``queue.attributes`` (O(n)) twice per FIFO message here, and
# ``send_message_batch`` validates every entry twice.  Same checks, O(1) flag.
def _validate_message(
    self: SQSBackend,
    queue: Queue,
    message_body: str,
    delay_seconds: int,
    deduplication_id: str | None = None,
    group_id: str | None = None,
    validate_group_id: bool = True,
) -> None:
    if queue.fifo_queue:
        content_based = _content_based_dedup(queue)
        if not content_based and not group_id:
            raise MissingParameter("MessageGroupId")
        if not content_based and group_id and not deduplication_id:
            raise InvalidParameterValue(
                "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly"
            )
        if delay_seconds > 0:
            raise InvalidParameterValue(
                f"Value {delay_seconds} for parameter DelaySeconds is invalid. Reason: "
                "The request include parameter that is not valid for this queue type."
            )
    if len(message_body) > queue.maximum_message_size:  # type: ignore[attr-defined]
        raise InvalidParameterValue(
            f"One or more parameters are invalid. Reason: Message must be shorter than {queue.maximum_message_size} bytes."  # type: ignore[attr-defined]
        )
    if group_id is None and queue.fifo_queue:
        raise MissingParameter("MessageGroupId")


# Moto's ``send_message`` with the content-based-dedup flag read directly instead
# of via ``queue.attributes`` (which counts every message), and FIFO sequence
# numbers as SQS gives them: moto drew 20 random digits, and only when the sender
# passed a deduplication id (none with content-based deduplication).  SQS gives
# every FIFO message one, increasing in the order the queue accepted them.
def _send_message(
    self: SQSBackend,
    queue_name: str,
    message_body: str,
    message_attributes: dict[str, Any] | None = None,
    delay_seconds: int | None = None,
    deduplication_id: str | None = None,
    group_id: str | None = None,
    system_attributes: dict[str, Any] | None = None,
    validate_group_id: bool = True,
) -> Message:
    queue = self.get_queue(queue_name)
    self._validate_message(
        queue,
        message_body=message_body,
        delay_seconds=int(delay_seconds or 0),
        deduplication_id=deduplication_id,
        group_id=group_id,
        validate_group_id=validate_group_id,
    )
    if delay_seconds is not None:
        delay_seconds = int(delay_seconds)
    else:
        delay_seconds = queue.delay_seconds  # type: ignore[attr-defined]

    message = Message(str(random.uuid4()), message_body, system_attributes)
    if _content_based_dedup(queue):
        message.deduplication_id = hashlib.sha256(message_body.encode("utf-8")).hexdigest()
    if deduplication_id is not None:
        message.deduplication_id = deduplication_id
    if queue.fifo_queue:
        message.sequence_number = _next_sequence_number(queue)
    if group_id is not None:
        message.group_id = group_id
    if message_attributes:
        message.message_attributes = message_attributes
    if delay_seconds > MAXIMUM_MESSAGE_DELAY:
        raise InvalidParameterValue(
            f"Value {delay_seconds} for parameter DelaySeconds is invalid. Reason: DelaySeconds must be >= 0 and <= 900."
        )
    message.mark_sent(delay_seconds=delay_seconds)
    queue.add_message(message)
    return message


def _next_sequence_number(queue: Queue) -> str:
    """20 digits, like SQS's, increasing per queue (so within every message group)."""
    with queue._messages_lock:
        state = _state(queue)
        state.sequence += 1
        return f"{18_000_000_000_000_000_000 + state.sequence:020d}"


def _response_copy(message: Message) -> Message:
    # Moto deep-copies each received message; the response only needs a snapshot
    # of its scalar fields (``_filter_message_attributes`` assigns a new dict).
    message_copy = copy.copy(message)
    message_copy._old_receipt_handles = list(message._old_receipt_handles)
    return message_copy


# Rewrite of moto's ``receive_message``.  Fixes:
# * FIFO redelivery order: moto dropped timed-out messages from
#   ``pending_messages`` one at a time while iterating and recomputed the pending
#   groups after each, so a group whose in-flight messages all timed out stayed
#   "pending" until its LAST message was visited, which was then delivered first,
#   alone.  Now every message that is visible again leaves ``pending_messages``
#   before the scan and the pending groups are computed once, so the group is
#   redelivered from its first message, in order, as on AWS.
# * O(n) per call: moto materialised ``queue.messages`` (two clock reads per
#   message), deep-copied the pending groups (again per timed-out message), and
#   per received message called ``is_message_valid_based_on_retention_period``,
#   which built ``queue.attributes`` three times.  Now one lazy scan from the
#   front with one clock read, stopping after ``count`` messages — past the blocked
#   FIFO groups without visiting their messages when they hold most of the queue
#   (``_MessageStore.live_outside``).
# * Long polling busy-looped (``wait_for_messages`` returns at once while any
#   message is visible, even if every visible message is in a blocked FIFO group),
#   holding the GIL for the whole wait.  Now it sleeps on the queue's condition
#   until a send/delete/visibility change or 1 s, whichever is first.
# * Messages past the retention period: moto marked the first one received (it
#   became invisible and its FIFO group blocked) and stopped the scan.  AWS deletes
#   them; so does this.
# * A receive holds the queue lock while it picks messages, so concurrent receives
#   cannot return the same message twice.
# Kept: a FIFO receive never returns a message of a group with messages in flight;
# it may return several messages of one group, in order; messages received
# ``maxReceiveCount`` times move to the dead-letter queue on the next receive.
def _receive_message(
    self: SQSBackend,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Message]:
    if message_attribute_names is None:
        message_attribute_names = []
    queue = self.get_queue(queue_name)
    polling_end = unix_time() + wait_seconds_timeout
    result: list[Message] = []
    wakes = _state(queue).wakes

    while True:
        messages_to_dlq: list[Message] = []
        with queue._messages_lock:
            store = _store(queue)
            pending = queue._pending_messages
            now = unix_time_millis()
            retention_ms = int(queue.message_retention_period) * 1000  # type: ignore[attr-defined]
            for message in [m for m in pending if now > m.visible_at]:
                pending.discard(message)
            blocked_groups: set[str] = set()
            if queue.fifo_queue:
                blocked_groups = {m.group_id for m in pending if m.group_id is not None}
            redrive = queue.redrive_policy if queue.dead_letter_queue else None
            expired: list[Message] = []

            for message in (store.live_outside(blocked_groups) if blocked_groups else store.live()):
                if not now > message.visible_at:
                    # In flight.  Its group (if any) stays blocked for this scan
                    # even if it is not in ``pending_messages``.
                    if queue.fifo_queue and message.group_id is not None:
                        blocked_groups.add(message.group_id)
                    continue
                if now < message.delayed_until:
                    continue
                if queue.fifo_queue and message.group_id in blocked_groups:
                    continue
                if redrive and message.approximate_receive_count >= redrive["maxReceiveCount"]:
                    messages_to_dlq.append(message)
                    continue
                if message.sent_timestamp + retention_ms <= now:  # type: ignore[operator]
                    expired.append(message)
                    continue
                pending.add(message)
                message.mark_received(visibility_timeout=visibility_timeout)
                store.index_handle(message, message.receipt_handle)
                message_copy = _response_copy(message)
                _filter_message_attributes(message_copy, message_attribute_names)
                result.append(message_copy)
                if len(result) >= count:
                    break

            for message in expired:
                store.discard(message)
                pending.discard(message)
            for message in messages_to_dlq:
                store.discard(message)
                pending.discard(message)

            if not result and not messages_to_dlq and wait_seconds_timeout:
                remaining = polling_end - unix_time()
                if remaining > 0:
                    queue._messages_lock.wait(min(remaining, _LONG_POLL_RECHECK_SECONDS))

        # Outside the source queue's lock: no lock-order cycle between queues that
        # are each other's dead-letter queue.
        dlq = queue.dead_letter_queue
        for message in messages_to_dlq:
            if dlq is not None and _enqueue(dlq, message, deduplicate=False):
                _run_event_source_mappings(dlq)

        if result or not wait_seconds_timeout or unix_time() >= polling_end or _state(queue).wakes != wakes:
            return result


def wake_receivers(queue: Queue) -> None:
    """Ends every long poll waiting on this queue now, empty-handed (not an SQS API: the local runtime's
    pollers wait 20 s, as Lambda's do, and a paused or stopping one must not take a message after it)."""
    with queue._messages_lock:
        _state(queue).wakes += 1
        queue._messages_lock.notify_all()


# Moto: scan of every message with ``had_receipt_handle`` (which builds a list per
# message).  Now the receipt-handle index; same validation and errors.  Making a
# message visible again wakes long pollers.
def _change_message_visibility(self: SQSBackend, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
    queue = self.get_queue(queue_name)
    with queue._messages_lock:
        message = _store(queue).by_handle(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid()
        visibility_timeout_msec = int(visibility_timeout) * 1000
        given_visibility_timeout = unix_time_millis() + visibility_timeout_msec
        if given_visibility_timeout - message.sent_timestamp > 43200 * 1000:  # type: ignore[operator]
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. "
                "Reason: Total VisibilityTimeout for the message is beyond the limit "
                "[43200 seconds]"
            )
        message.change_visibility(visibility_timeout)
        if message.visible and message in queue.pending_messages:
            queue.pending_messages.remove(message)
            queue._messages_lock.notify_all()


# Moto builds ``queue.attributes`` (O(n)) up to three times per requested name.
# Same validation and result, built once.
def _get_queue_attributes(self: SQSBackend, queue_name: str, attribute_names: list[str]) -> dict[str, Any]:
    queue = self.get_queue(queue_name)
    if not attribute_names:
        return {}
    valid_names = ["All"] + queue.BASE_ATTRIBUTES + queue.FIFO_ATTRIBUTES + queue.KMS_ATTRIBUTES
    invalid_name = next((name for name in attribute_names if name not in valid_names), None)
    if invalid_name or invalid_name == "":
        raise InvalidAttributeName(invalid_name)
    attributes = queue.attributes
    if "All" in attribute_names:
        return attributes
    return {name: attributes[name] for name in attribute_names if name in attributes and attributes[name] is not None}


# Moto reads the retention period through ``get_queue_attributes`` (three
# ``attributes`` builds).  Same test, O(1).
def _is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Message) -> bool:
    queue = self.get_queue(queue_name)
    retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000  # type: ignore[attr-defined, operator]
    return retain_until > unix_time()


# Moto's purge, done under the queue lock so it cannot race a receive/delete.
# The deduplication history survives a purge, as on AWS.
def _make_purge_queue(original: Any) -> Any:
    def _purge_queue(self: SQSBackend, queue_name: str) -> None:
        queue = self.get_queue(queue_name)
        with queue._messages_lock:
            original(self, queue_name)

    return _purge_queue



# --------------------------------------------------------------------------
# The patches
# --------------------------------------------------------------------------


def _new(value: Any) -> Any:
    return lambda original: value


MESSAGE_TRACKING = Patch(
    "sqs.message_tracking",
    "moto keeps every Message ever built (sent and received copies) alive for its dashboard",
    (Replacement(Message, "__new__", "inherited", _new(staticmethod(_message_new))),),
)
MESSAGE_STORE = Patch(
    "sqs.message_store",
    "a queue's messages in an ordered set with a receipt-handle index; bounded deleted-handle memory; FIFO dedup window",
    (
        Replacement(Queue, "_messages", "instance", _new(property(_get_messages, _set_messages))),
        Replacement(Queue, "deleted_messages", "instance", _new(property(_get_deleted_messages, _set_deleted_messages))),
        Replacement(Queue, "add_message", "method", _new(_add_message)),
        Replacement(Queue, "delete_message", "method", _new(_delete_message)),
        Replacement(Queue, "wait_for_messages", "method", _new(_wait_for_messages)),
        Replacement(SQSBackend, "purge_queue", "method", _make_purge_queue),
    ),
)
COUNTS = Patch(
    "sqs.counts",
    "queue attributes and approximate counts in one pass over the messages, not three per attribute",
    (
        Replacement(Queue, "messages", "method", _new(property(_messages_property))),
        Replacement(Queue, "attributes", "method", _new(property(_attributes))),
        Replacement(Queue, "approximate_number_of_messages", "method", _new(property(_approximate_number_of_messages))),
        Replacement(Queue, "approximate_number_of_messages_not_visible", "method",
                    _new(property(_approximate_number_of_messages_not_visible))),
        Replacement(Queue, "approximate_number_of_messages_delayed", "method",
                    _new(property(_approximate_number_of_messages_delayed))),
        Replacement(SQSBackend, "get_queue_attributes", "method", _new(_get_queue_attributes)),
        Replacement(SQSBackend, "is_message_valid_based_on_retention_period", "method",
                    _new(_is_message_valid_based_on_retention_period)),
    ),
)
SEND_RECEIVE = Patch(
    "sqs.send_receive",
    "send and receive without O(n) scans; FIFO groups redelivered in order; sequence numbers increasing",
    (
        Replacement(SQSBackend, "_validate_message", "method", _new(_validate_message)),
        Replacement(SQSBackend, "send_message", "method", _new(_send_message)),
        Replacement(SQSBackend, "receive_message", "method", _new(_receive_message)),
        Replacement(SQSBackend, "change_message_visibility", "method", _new(_change_message_visibility)),
    ),
)
PATCHES = (MESSAGE_TRACKING, MESSAGE_STORE, COUNTS, SEND_RECEIVE)


def snapshot_layouts() -> list[tuple[Queue, list[Message], set[str]]]:
    """Every queue's messages and deleted handles, to put back in moto's own layout after a revert."""
    layouts = []
    for _, _, backend in sqs_backends.iter_backends():
        for queue in list(backend.queues.values()):  # type: ignore[attr-defined]
            with queue._messages_lock:
                layouts.append((queue, list(queue._messages), set(queue.deleted_messages)))
    return layouts


def restore_layouts(layouts: list[tuple[Queue, list[Message], set[str]]]) -> None:
    Message.instances_tracked = []  # type: ignore[attr-defined]
    for queue, messages, deleted in layouts:
        queue.__dict__.pop("_message_store", None)
        queue.__dict__.pop("_local_sqs_state", None)
        queue.__dict__["_messages"] = messages
        queue.__dict__["deleted_messages"] = deleted
