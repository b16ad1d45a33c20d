"""Fixes for moto's DynamoDB (written against moto 5.2.5; see ``base.MOTO_VERSION``).

An ``UpdateItem`` that creates its item emits one INSERT with the full new image, as on AWS (moto
emitted a keys-only INSERT first); stream records get their sequence numbers under a lock; requests
to one DynamoDB backend are serialised (moto mutates items in place while other requests read them);
expired TTL items are deleted by a sweeper (moto deleted nothing); a Query reads its partition, not
the whole table sorted (moto's cost grew with every item of the table); a transaction snapshots the
items it touches, not every table it touches, and a cancelled one leaves no stream record; an
UpdateExpression is parsed once per distinct text, not twice per request; items are serialised in one
pass (moto's serializer walked every attribute value member by member).
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from moto.core.serialize import BaseJSONSerializer
from moto.dynamodb.comparisons import get_comparison_func
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import StreamShard, Table
from moto.dynamodb.models.utilities import bytesize
from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node  # type: ignore[attr-defined]
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
from moto.dynamodb.parsing.validators import ActionCountValidator, UpdateExpressionValidator, Validator
from moto.dynamodb.responses import DynamoHandler

from samlocal.emulator.patches.base import Patch, Replacement

logger = logging.getLogger(__name__)



# Moto's ``update_item`` on a key with no item yet first ``put_item``s the bare
# keys (which appends an INSERT whose NewImage is only the keys) and then appends
# a second INSERT with the full item: a stream consumer sees two INSERTs for one
# write.  AWS emits one.  The wrapper below marks, in a thread-local (moto server
# serves requests on many threads), that this thread's next INSERT on that table
# is the interim one; the wrapped ``StreamShard.add`` skips exactly that record.
_stream_local = threading.local()
# ``StreamShard.add`` numbers a record ``len(items) + start`` and then appends it:
# two concurrent writes to one table could get the same sequence number.
_stream_lock = threading.Lock()
# Signalled after every record added: the runtime's idle stream readers wait on it
# (``wait_for_stream_records``, the emulator's /_local/dynamodbstreams/wait) instead of
# polling an empty shard 4 times a second.
_stream_added = threading.Condition(_stream_lock)
ADDED = "_local_records_added"  # the shard's count of records ever added (moto's list can be emptied)
_stream_waits_released = [0]  # bumped by release_stream_waits: every wait then in progress answers now


def _item_exists(backend: DynamoDBBackend, table: Any, key: dict[str, Any]) -> bool:
    hash_key, range_key = backend.get_keys_value(table, key)
    return table.get_item(hash_key, range_key) is not None


def _make_update_item(original: Any) -> Any:
    def _update_item(self: DynamoDBBackend, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            table = self.get_table(table_name)
            creates = table.stream_shard is not None and not _item_exists(self, table, key)
        except Exception:  # an invalid request: moto's own update_item reports it
            creates = False
        if not creates:
            return original(self, table_name, key, *args, **kwargs)
        previous = getattr(_stream_local, "interim_insert", None)
        _stream_local.interim_insert = table
        try:
            return original(self, table_name, key, *args, **kwargs)
        finally:
            _stream_local.interim_insert = previous

    return _update_item


def _make_stream_add(original: Any) -> Any:
    def _add(self: StreamShard, old: Any, new: Any) -> None:
        if old is None and getattr(_stream_local, "interim_insert", None) is self.table:
            _stream_local.interim_insert = None  # skip this one only: the next INSERT is the real one
            return
        with _stream_added:
            original(self, old, new)
            if new is None and getattr(_stream_local, "ttl_delete", False):
                # A TTL deletion: DynamoDB marks its REMOVE record as the service's, not a caller's.
                self.items[-1].record["userIdentity"] = dict(TTL_USER_IDENTITY)
            self.__dict__[ADDED] = self.__dict__.get(ADDED, 0) + 1
            _stream_added.notify_all()

    return _add


def wait_for_stream_records(shard: StreamShard, known: int | None, seconds: float) -> int:
    """How many records the shard has ever had, once that is not ``known`` (at once when ``known`` is
    None or already stale) or after ``seconds``. A record a cancelled transaction took back still
    counts: the reader then reads once more and finds nothing, as a poll would."""
    deadline = time.monotonic() + seconds
    with _stream_added:
        released = _stream_waits_released[0]
        while known is not None and shard.__dict__.get(ADDED, 0) == known and _stream_waits_released[0] == released:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _stream_added.wait(left)
        return int(shard.__dict__.get(ADDED, 0))


def release_stream_waits() -> None:
    """Answers every stream wait in progress (the emulator is stopping: no server thread left waiting)."""
    with _stream_added:
        _stream_waits_released[0] += 1
        _stream_added.notify_all()


# moto's DynamoDB keeps no lock: an UpdateItem mutates an item's attribute dict in place while a
# concurrent Query/GetItem deep-copies or serialises it ("dictionary changed size during iteration",
# a 500). DynamoDB itself is linearisable per item; here every request to one backend (account and
# region) runs alone. Under the GIL the requests' Python work never ran in parallel anyway, so one
# uncontended lock per request costs ~1 µs, and transactions and batches spanning tables stay atomic.
_dynamodb_locks: dict[tuple[str, str], threading.RLock] = {}
_dynamodb_locks_guard = threading.Lock()


def dynamodb_lock(account: str, region: str) -> threading.RLock:
    """The lock every request to that DynamoDB backend holds (the TTL sweeper takes it too)."""
    key = (account, region)
    lock = _dynamodb_locks.get(key)
    if lock is None:
        with _dynamodb_locks_guard:
            lock = _dynamodb_locks.setdefault(key, threading.RLock())
    return lock


def _make_dynamodb_call_action(original: Any) -> Any:
    def _call_action(self: Any) -> Any:
        with dynamodb_lock(self.current_account, self.region):
            return original(self)

    return _call_action


# moto stores a table's TimeToLiveSpecification and never deletes anything. DynamoDB deletes an
# item whose TTL attribute (a Number, epoch seconds) is in the past "typically within a few days";
# locally a sweeper does it every few seconds, so TTL-driven code (and its REMOVE stream records)
# can be tested. Items more than five years past their TTL are left alone, as in DynamoDB.
# The Streams API spells it {"Type", "PrincipalId"}; Lambda's event {"type", "principalId"}.
TTL_USER_IDENTITY = {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}
TTL_MAX_AGE_SECONDS = 5 * 365 * 24 * 3600


def _expired(item: Any, attribute: str, now: float) -> bool:
    value = item.attrs.get(attribute)
    if value is None or value.type != "N":
        return False
    try:
        return now - TTL_MAX_AGE_SECONDS <= float(value.value) < now
    except (TypeError, ValueError):
        return False


# Items checked per hold of the backend's lock: requests wait a few milliseconds at most for a sweep.
TTL_SWEEP_CHUNK = 2000


def sweep_expired_items(now: float | None = None) -> int:
    """Deletes every expired item of every TTL-enabled table (all accounts and regions), each
    with a REMOVE stream record whose ``userIdentity`` is DynamoDB's; returns how many."""
    from moto.dynamodb.models import dynamodb_backends

    now = time.time() if now is None else now
    deleted = 0
    # Snapshots (list(...)): a request may add an account's or a region's backend meanwhile.
    backends = [(account, region, backend) for account, regions in list(dynamodb_backends.items())
                for region, backend in list(regions.items())]
    for account, region, backend in backends:
        lock = dynamodb_lock(account, region)
        for table in list(backend.tables.values()):
            ttl = getattr(table, "ttl", None) or {}
            attribute = ttl.get("AttributeName")
            if ttl.get("TimeToLiveStatus") != "ENABLED" or not attribute:
                continue
            with lock:
                rows = list(table.items.values())
            removed = 0
            for start in range(0, len(rows), TTL_SWEEP_CHUNK):
                with lock:  # a chunk at a time: the table may change between chunks
                    chunk = rows[start:start + TTL_SWEEP_CHUNK]
                    candidates: Iterable[Any] = itertools.chain.from_iterable(r.values() for r in chunk) if table.range_key_attr else chunk
                    items = [item for item in candidates if _expired(item, attribute, now)]
                    _stream_local.ttl_delete = True
                    try:
                        for item in items:
                            current = table.get_item(item.hash_key, item.range_key)
                            if current is not None and _expired(current, attribute, now):  # not rewritten since
                                table.delete_item(item.hash_key, item.range_key)
                                removed += 1
                    finally:
                        _stream_local.ttl_delete = False
            deleted += removed
            if removed:
                logger.info("ttl sweep", extra={"table": table.name, "deleted": removed})
    return deleted


# moto keeps every shard iterator forever and GetRecords mints a new one per call (~1.8 KB each: a


# moto's ``Table.query`` gathers its candidates from ``all_items()``, which lists every item of the table
# and sorts them all — then keeps the partition's and sorts those again. So every Query cost
# O(table · log table): a 20,000-event message's store calls grew from ~60 ms to ~500 ms as its pages
# (and every other message's) piled up. DynamoDB reads only the key range of one partition. While a
# Query runs, this thread's ``all_items()`` on that table answers the partition (a table query) or the
# unsorted items (an index query, which ``sorted_items`` sorts by the index keys and then the table's,
# so no order is lost); Query sorts its candidates itself either way.
# A table query with a sort key condition gets only the partition's items in that key range: moto sorted
# the whole partition and, for every item of it, added its size (a walk of every attribute) to test the
# 1 MB limit before testing the key condition — a 20,000-event message's Query walked every page of the
# message. DynamoDB reads only the key range (its 1 MB counts the items read); the condition is moto's
# own (`get_comparison_func` on the `cast_value`s, as `DynamoType.compare`), applied before rather than
# inside the loop, with the range's neighbours kept, so the items and pages answered are the same (but
# where moto would stop a page at an item outside the range because the page's items already neared
# 1 MB: DynamoDB reads no item outside the range, and neither does this). The partition keeps its sort
# order between Queries (``_Partition``), the range is found in it by bisection, and a Query with a Limit
# (and no ExclusiveStartKey) gets only the Limit items it can read in its direction: a Limit=1 Query of
# a 2,400-item partition no longer sorts and tests all 2,400.
_query_local = threading.local()
_QUERY_ARGS = ("range_comparison", "range_objs", "limit", "exclusive_start_key", "scan_index_forward",
               "projection_expressions", "index_name", "consistent_read", "filter_expression",
               "hash_key_conditions", "range_key_conditions")


class _KeyRange:
    """A table query's sort key condition: moto's own test (`get_comparison_func` on the `cast_value`s,
    as `DynamoType.compare`) and, for the conditions that select one run of a sorted partition, that
    run found by bisection."""

    __slots__ = ("name", "func", "values")

    def __init__(self, name: str, func: Callable[..., Any], values: list[Any]) -> None:
        self.name, self.func, self.values = name, func, values

    def test(self, value: Any) -> bool:
        return bool(self.func(value, *self.values))

    def span(self, values: list[Any]) -> tuple[int, int] | None:
        """[lo, hi) of the sorted cast `values` in range, or None (a condition or values bisection cannot
        answer for: the caller tests every value). moto's own test confirms the edges — the first and
        last of the run are in range, their neighbours are not — so a wrong bound can only send the
        caller to the full walk, never change an answer."""
        name, v, n = self.name, self.values, len(values)
        try:
            if name in ("EQ", "="):
                lo, hi = bisect.bisect_left(values, v[0]), bisect.bisect_right(values, v[0])
            elif name in ("LT", "<"):
                lo, hi = 0, bisect.bisect_left(values, v[0])
            elif name in ("LE", "<="):
                lo, hi = 0, bisect.bisect_right(values, v[0])
            elif name in ("GT", ">"):
                lo, hi = bisect.bisect_right(values, v[0]), n
            elif name in ("GE", ">="):
                lo, hi = bisect.bisect_left(values, v[0]), n
            elif name == "BETWEEN":
                lo, hi = bisect.bisect_left(values, v[0]), bisect.bisect_right(values, v[1])
            elif name == "BEGINS_WITH":  # the keys with a prefix follow the prefix itself in sort order
                lo = hi = bisect.bisect_left(values, v[0])
                while hi < n and self.test(values[hi]):
                    hi += 1
            else:
                return None
            hi = max(hi, lo)
            if lo < hi and not (self.test(values[lo]) and self.test(values[hi - 1])):
                return None
            if (lo > 0 and self.test(values[lo - 1])) or (hi < n and self.test(values[hi])):
                return None
        except (TypeError, IndexError):  # values of another type than the keys, a malformed condition
            return None
        return lo, hi


def _key_range(table: Table, call: dict[str, Any]) -> _KeyRange | None:
    """The sort key condition of a table query, or None (no condition, an index)."""
    comparison, objs, conditions = call.get("range_comparison"), call.get("range_objs"), call.get("range_key_conditions")
    if call.get("index_name") or not comparison or not table.range_key_attr:
        return None
    if conditions and (len(conditions) != 1 or conditions[0][0] != table.range_key_attr):
        return None  # a multi-attribute key: moto's loop decides
    func = get_comparison_func(comparison)
    if func is None:
        return None
    return _KeyRange(comparison, func, [obj.cast_value for obj in objs or ()])


class _Partition(dict[Any, Any]):
    """A table partition (range key -> item) that keeps its keys in sort order as they come and go.

    A Query sorted its partition on every call (a 20,000-event message: ~2,000 pages, ~7 ms of the
    emulator's CPU for each of its store's Limit=1 Queries). The order depends only on the set of keys:
    an item written over (a put or an update of a key already there) keeps it. The partition's dict
    is turned into one of these by the first Query that reads it (``_ordered``); moto's own writes
    (``table.items[h][r] = item``, ``.pop``, ``del``) move keys in and out of the order, and any other
    change to the keys drops it (the next Query sorts again)."""

    __slots__ = ("order",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order: tuple[list[Any], list[Any]] | None = None  # (keys, their cast values), sorted

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in self:
            self._insert(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._remove(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            self._remove(key)
        return super().pop(key, *default)

    # A new key goes into its place (every store batch of a long message adds a page: re-sorting the
    # partition at its next Query cost as much as the sort this saves); anything unexpected (a key
    # whose value does not compare with the others) drops the order, which the next Query rebuilds.
    def _insert(self, key: Any) -> None:
        if self.order is None:
            return
        keys, values = self.order
        try:
            value = key.cast_value
            at = bisect.bisect_right(values, value)
        except (TypeError, AttributeError):
            self.order = None
            return
        keys.insert(at, key)
        values.insert(at, value)

    def _remove(self, key: Any) -> None:
        if self.order is None:
            return
        keys, values = self.order
        try:
            at = bisect.bisect_left(values, key.cast_value)
        except (TypeError, AttributeError):
            at = len(keys)
        if at < len(keys) and keys[at] == key:
            del keys[at], values[at]
        else:
            self.order = None

    def popitem(self) -> Any:
        self.order = None
        return super().popitem()

    def clear(self) -> None:
        self.order = None
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.order = None
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self.order = None
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]  # dict's own signature, as dict has it
        self.order = None
        return super().__ior__(other)

    def __deepcopy__(self, memo: dict[int, Any]) -> _Partition:  # backups and restores: the items, no order
        clone = _Partition()
        memo[id(self)] = clone
        for key, value in self.items():
            dict.__setitem__(clone, copy.deepcopy(key, memo), copy.deepcopy(value, memo))
        return clone

    def __reduce__(self) -> Any:  # a pickled partition is a plain dict
        return (dict, (dict(self),))


def _ordered(table: Table, hash_key: Any, rows: dict[Any, Any]) -> tuple[list[Any], list[Any]]:
    """The partition's range keys in moto's sort order (``DynamoType.__lt__``: by ``cast_value``), with
    their cast values, kept on the partition."""
    if type(rows) is not _Partition:
        rows = table.items[hash_key] = _Partition(rows)
    order = rows.order
    if order is None:
        keys = sorted(rows, key=lambda key: key.cast_value)
        order = rows.order = (keys, [key.cast_value for key in keys])
    return order


def _make_query(original: Any) -> Any:
    def _query(self: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        call = {**dict(zip(_QUERY_ARGS, args)), **kwargs}
        index_name = call.get("index_name")
        previous = getattr(_query_local, "scope", None)
        # With a Limit and no ExclusiveStartKey or legacy QueryFilter, moto's loop reads at most Limit items
        # of the range in the Query's direction, and the one after them (for LastEvaluatedKey).
        plain = call.get("limit") and not call.get("exclusive_start_key") and set(call) <= set(_QUERY_ARGS)
        window = (int(call["limit"]), call.get("scan_index_forward") is not False) if plain else None
        _query_local.scope = (self, None if index_name else hash_key, _key_range(self, call), window)
        try:
            return original(self, hash_key, *args, **kwargs)
        finally:
            _query_local.scope = previous

    return _query


def _make_all_items(original: Any) -> Any:
    def _all_items(self: Table) -> list[Any]:
        scope = getattr(_query_local, "scope", None)
        if scope is None or scope[0] is not self:
            return original(self)
        hash_key, in_range, window = scope[1], scope[2], scope[3]
        if hash_key is None:  # an index query: every item, unsorted
            return [item for rows in self.items.values()
                    for item in (rows.values() if self.range_key_attr else (rows,))]
        rows = self.items.get(hash_key)  # .get: the defaultdict must not grow an empty partition
        if rows is None:
            return []
        if not self.range_key_attr:
            return [rows]
        if in_range is None and window is None:
            return list(rows.values())
        keys, values = _ordered(self, hash_key, rows)
        if in_range is None:
            lo, hi = 0, len(keys)
        else:
            span = in_range.span(values)
            if span is None:  # a condition bisection does not answer for: moto's test of every key
                inside = [n for n, value in enumerate(values) if in_range.test(value)]
                span = (inside[0], inside[-1] + 1) if inside else (0, 0)
            lo, hi = span
        if lo == hi:
            return []  # moto would answer nothing, without a LastEvaluatedKey
        if window is not None:  # the first Limit items of the range in the Query's direction
            limit, forward = window
            lo, hi = (lo, min(hi, lo + limit)) if forward else (max(lo, hi - limit), hi)
        # The range and its two neighbours: moto sets LastEvaluatedKey when an item follows the one that
        # reached Limit, in range or not (DynamoDB answers one whenever Limit is reached), so the first item
        # past the range in either direction stays. (Query sorts them again: O(n) on sorted items.)
        return [rows[key] for key in keys[max(lo - 1, 0):hi + 1]]

    return _all_items


# A Query then compares every candidate's hash key (``==``) and sorts them (``<``): DynamoType builds
# both sides' ``cast_value`` per comparison (~3-10 µs; a 2,000-page partition: ~45 ms a Query). For two
# strings or two binaries ``cast_value`` is the raw value, so comparing those directly gives the same
# answer ~10× faster; every other pair (numbers, sets, mixed types) goes to moto's own method.
_RAW_TYPES = frozenset({"S", "B"})


def _make_dynamo_eq(original: Any) -> Any:
    def __eq__(self: DynamoType, other: Any) -> bool:  # noqa: N807 - the replaced dunder
        if type(other) is DynamoType and self.type == other.type and self.type in _RAW_TYPES:
            return bool(self.value == other.value)
        return bool(original(self, other))

    return __eq__


def _make_dynamo_lt(original: Any) -> Any:
    def __lt__(self: DynamoType, other: Any) -> bool:  # noqa: N807
        if type(other) is DynamoType and self.type == other.type and self.type in _RAW_TYPES:
            return bool(self.value < other.value)
        return bool(original(self, other))

    return __lt__


# moto's ``transact_write_items`` deep-copies every table the transaction names before running it and,
# when it is cancelled, puts the copies in the tables' place. Two faults: the copy is O(table) per
# transaction (a table of 2,000 items: ~50 ms, growing with every write), and after a cancelled one the
# table is a new object with a new stream shard, while every open shard iterator still reads the old
# shard — which holds the cancelled writes' records (a consumer sees writes that never happened) and
# never gets another (it misses every later write: a stream that stalls without a word). DynamoDB
# cancels a transaction atomically and emits no record for it. Here moto's own transaction runs with
# its table copies made shallow (the table itself, so its "rollback" changes nothing), and this wrapper
# snapshots exactly the items the transaction names beforehand; on any error it puts them back and drops
# the stream records the transaction appended. All of it runs under the backend's request lock
# (``dynamodb.request_lock``), so no reader sees the interim state.
_transact_local = threading.local()


def _touched_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]] | None:
    """(table, hash key, range key, a deep copy of the item or None) for every item the transaction
    names; None when any operation is malformed (then moto's own transaction reports it)."""
    touched = []
    try:
        for entry in transact_items:
            (_, op), = entry.items()
            table = backend.get_table(op["TableName"])
            if "Item" in op:  # a Put names its item by the item's key attributes
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            hash_key, range_key = backend.get_keys_value(table, key)
            item = table.get_item(hash_key, range_key)
            touched.append((table, hash_key, range_key, None if item is None else copy.deepcopy(item)))
    except Exception:  # noqa: BLE001 - any malformed request: moto's own code answers it
        return None
    return touched


def _restore(touched: list[tuple[Any, Any, Any, Any]], shards: dict[int, tuple[Any, list[Any], int]]) -> None:
    for table, hash_key, range_key, snapshot in reversed(touched):  # reversed: the first snapshot of a key wins
        if table.range_key_attr is None:
            if snapshot is None:
                table.items.pop(hash_key, None)
            else:
                table.items[hash_key] = snapshot
        elif snapshot is None:
            rows = table.items.get(hash_key)
            if rows is not None:
                rows.pop(range_key, None)
        else:
            table.items[hash_key][range_key] = snapshot
    for shard, records, length in shards.values():
        if shard.items is records:  # the same list: truncate what the transaction appended
            del records[length:]


def _make_transact_write_items(original: Any) -> Any:
    def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> Any:
        touched = _touched_items(self, transact_items) if len(transact_items) <= 100 else None
        if touched is None:
            return original(self, transact_items)
        shards = {id(table): (table.stream_shard, table.stream_shard.items, len(table.stream_shard.items))
                  for table, *_ in touched if table.stream_shard is not None}
        _transact_local.shallow = True
        try:
            return original(self, transact_items)
        except BaseException:
            _restore(touched, shards)
            raise
        finally:
            _transact_local.shallow = False

    return _transact_write_items


def _table_deepcopy(_: Any) -> Any:
    def __deepcopy__(self: Table, memo: dict[int, Any]) -> Table:  # noqa: N807
        if getattr(_transact_local, "shallow", False):
            return self
        # Anywhere else (backups, restores): what copy.deepcopy does for a plain object.
        clone: Table = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    return __deepcopy__


# Moto 5.2.5 serialises every response through its shape-driven serializer, which walks an item's
# AttributeValues member by member (each member's value looked up through alias providers, the key path
# kept as a list): a page of 10 events (~70 values) took milliseconds, ~2/3 of the DynamoDB emulator's
# busy time in a long message's store calls (docs/BENCHMARKS.md, "A long message's batches"). An
# AttributeValue is written here in one recursive pass with the serializer's own rules: members in
# the shape's order, None members left out, S and N as strings, B and BS base64, M and L recursed,
# NULL and BOOL as given. Anything else (a value that is not a dict, an empty key, an unknown member)
# goes to moto's own path.
_ATTRIBUTE_VALUE_MEMBERS = ("S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL")


class _UnusualValueError(Exception):
    """A value the fast path does not write exactly as moto would: moto's serializer writes it."""


def _json_string(value: Any) -> Any:
    return str(value) if value not in (None, {}, []) else value  # moto's BaseJSONSerializer._serialize_type_string


def _attribute_value(serializer: Any, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value.keys() <= set(_ATTRIBUTE_VALUE_MEMBERS):
        raise _UnusualValueError
    out: dict[str, Any] = {}
    for member in _ATTRIBUTE_VALUE_MEMBERS:
        got = value.get(member)
        if got is None:
            continue
        if member in ("S", "N"):
            out[member] = _json_string(got)
        elif member == "B":
            out[member] = serializer._base64(got)
        elif member in ("SS", "NS", "BS"):
            if not isinstance(got, list | tuple):
                raise _UnusualValueError
            out[member] = [serializer._base64(v) if member == "BS" else _json_string(v) for v in got]
        elif member == "M":
            if not isinstance(got, dict) or "" in got:
                raise _UnusualValueError
            out[member] = {k: _attribute_value(serializer, v) for k, v in got.items()}
        elif member == "L":
            if not isinstance(got, list | tuple):
                raise _UnusualValueError
            out[member] = [_attribute_value(serializer, v) for v in got]
        else:
            out[member] = got
    return out


def _make_serialize_structure(original: Any) -> Any:
    def _serialize_type_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if key and shape.name == "AttributeValue" and value is not None:
            try:
                serialized[self.get_serialized_name(shape, key)] = _attribute_value(self, value)
                return
            except _UnusualValueError:
                pass
        original(self, serialized, value, shape, key)

    return _serialize_type_structure


# moto's ``DynamoType.size`` builds a new DynamoType for every map value it measures, and that
# constructor wraps the value's whole subtree again: each level of nesting re-wraps everything below it
# (a page of 50 events: ~140 constructions per ``size()``, ~0.6 ms). A Query measures each item it
# answers about six times (its 1 MB limit, the consumed capacity) and every attribute written re-measures
# the whole item (``LimitedSizeDict``'s 400 KB check). The same sums, without the constructions:
# ``_own_size`` is the method (a list's elements measured as they are), ``_wrapped_size`` is
# ``DynamoType(value).size()`` (what the method does for a map's values: lists below get wrapped).
_SETS = frozenset({"SS", "NS", "BS"})


def _scalar_size(typ: str, value: Any) -> int:
    if typ == "N":
        return len(str(value))
    if typ in _SETS:
        sub = typ[0]
        return sum(_scalar_size(sub, v) for v in value)
    if isinstance(value, bool):
        return 1
    return bytesize(value)


def _own_size(dt: DynamoType) -> int:
    if dt.type == "L":  # the one difference from a wrapped value: the elements as they are
        return sum(_own_size(v) if type(v) is DynamoType else v.size() for v in dt.value)
    return _wrapped_size(dt)


def _wrapped_size(v: Any) -> int:
    if type(v) is DynamoType:
        typ, value = v.type, v.value
    else:  # as DynamoType.__init__ reads a plain dict (and fails on anything else)
        typ, value = list(v)[0], list(v.values())[0]
    if typ == "L":
        return sum(_wrapped_size(x) for x in value)
    if typ == "M":
        return sum(bytesize(k) + _wrapped_size(x) for k, x in value.items())
    return _scalar_size(typ, value)


def _make_size(_: Any) -> Any:
    def size(self: DynamoType) -> int:
        return _own_size(self)

    return size


# Every UpdateItem (and every Update of a transaction) made moto parse its UpdateExpression twice (the
# request's checks, then the backend) and then walk the tree ~12 times, each walk rebuilding its
# processors' type map for every node, and ActionCountValidator re-searching every subtree of every
# clause (quadratic in the clauses). The store's upsert names a dozen clauses per event, so this was
# most of the emulator's time per stored batch. Three changes, the answers unchanged:
# - a parsed tree is kept per (parser, text) — it is never mutated: the validator deep-copies it before
#   substituting names, values and the item, and the request's checks only read it — and a text that
#   does not parse raises each time, as before (nothing is cached for it);
# - a tree that passed ActionCountValidator (a check of the tree alone: at most one SET, ADD, REMOVE)
#   is not counted again;
# - a traverser computes its type map once, not per node, and finds a node's processor by the node's
#   type (a map per traverser class), not by isinstance against each of its types;
# - the validator's copy of a cached tree is a node-by-node clone, not copy.deepcopy (its memo and
#   per-object dispatch were a seventh of a funnel test's CPU): a parsed tree's leaves are str, int, bool
#   or None and each node's parent is the node that lists it (checked when the tree is cached; a tree
#   that is not so, or anything else, is deep-copied as before).
PARSE_CACHE_SIZE = 1024
_parsed: dict[tuple[type, str], Any] = {}
_parsed_ids: dict[int, Any] = {}  # id(tree) → tree, for the trees in _parsed
_counts_checked: set[int] = set()  # ids of cached trees that passed ActionCountValidator
_clonable: set[int] = set()  # ids of cached trees that _clone_tree copies exactly
_LEAVES = (str, int, bool, type(None))  # immutable: a clone shares them (bool is an int; listed for the reader)


def forget_parsed_expressions() -> None:
    """Empties the parse cache and what is recorded about its trees (they go together: ids outlive trees)."""
    _parsed.clear()
    _parsed_ids.clear()
    _counts_checked.clear()
    _clonable.clear()


def _is_clonable(node: Any, parent: Any = None) -> bool:
    """Whether ``_clone_tree`` copies this tree as deepcopy would: nodes holding only type, children and
    parent, each parent the node that lists it, every other child an immutable leaf."""
    if not isinstance(node, Node):
        return isinstance(node, _LEAVES)
    if node.parent is not parent or node.__dict__.keys() != {"type", "children", "parent"}:
        return False
    return node.children is None or (type(node.children) is list
                                     and all(_is_clonable(child, node) for child in node.children))


def _clone_tree(node: Any, parent: Any = None) -> Any:
    """A copy of a tree ``_is_clonable`` passed: new nodes, the same leaves."""
    clone = object.__new__(type(node))
    children = node.children
    clone.__dict__.update(type=node.type, parent=parent, children=None if children is None else [
        _clone_tree(child, clone) if isinstance(child, Node) else child for child in children])
    return clone


def _make_parse(original: Any) -> Any:
    parse = original.__func__  # a classmethod in moto's class body

    def make(cls: type, expression_str: str) -> Any:
        key = (cls, expression_str)
        tree = _parsed.get(key)
        if tree is None:
            tree = parse(cls, expression_str)
            if len(_parsed) >= PARSE_CACHE_SIZE:  # many distinct texts: start over rather than grow
                forget_parsed_expressions()
            _parsed[key] = tree
            _parsed_ids[id(tree)] = tree
            if _is_clonable(tree):
                _clonable.add(id(tree))
        return tree

    return classmethod(make)


def _make_validator_init(_: Any) -> Any:
    base_init = Validator.__dict__["__init__"]

    def __init__(self: UpdateExpressionValidator, expression: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        cached = _parsed_ids.get(id(expression)) is expression
        if cached and id(expression) in _clonable:
            # moto's __init__ with a tree of no nodes (its deepcopy is then of None), then the clone
            base_init(self, None, *args, **kwargs)
            self.node_to_validate = _clone_tree(expression)
        else:
            base_init(self, expression, *args, **kwargs)
        if not cached:
            return
        if id(expression) in _counts_checked:
            self.processors = [p for p in self.processors if not isinstance(p, ActionCountValidator)]
        else:
            self._counted_tree = expression  # type: ignore[attr-defined]  # validate() records its pass

    return __init__


def _make_validator_validate(_: Any) -> Any:
    base_validate = Validator.__dict__["validate"]

    def validate(self: UpdateExpressionValidator) -> Any:
        node = base_validate(self)
        tree = self.__dict__.get("_counted_tree")
        if tree is not None and _parsed_ids.get(id(tree)) is tree:
            _counts_checked.add(id(tree))
        return node

    return validate


def _make_nodes_to_be_processed(original: Any) -> Any:
    def nodes_to_be_processed(self: DepthFirstTraverser) -> Any:
        types = self.__dict__.get("_node_types")
        if types is None:
            types = self.__dict__["_node_types"] = original(self)
        return types

    return nodes_to_be_processed


def _processing_of(traverser: DepthFirstTraverser) -> dict[Any, Any]:
    """The traverser's type → processor map, built once per traverser (moto built it at every node)."""
    processing = traverser.__dict__.get("_processing")
    if processing is None:
        processing = traverser.__dict__["_processing"] = traverser._processing_map()
    return processing


_NOT_A_NODE, _NOT_PROCESSED = object(), object()  # a leaf; a node no processor of the traverser takes
_traverse_keys: dict[tuple[type, tuple[type, ...]], dict[type, Any]] = {}  # (traverser, its types) → node type → key


def _make_traverse(_: Any) -> Any:
    """moto's depth-first traversal (children first, then the node, replaced in its parent by what its
    processor returns), with the processor found by the node's type in a map kept per traverser class
    and its types: moto asked isinstance of every processor type at every node, through ABCMeta, and
    each UpdateItem runs ten traversers over its tree (a quarter of the funnel test's CPU)."""
    default_pre = DepthFirstTraverser.pre_processing_of_child

    def traverse(self: DepthFirstTraverser, root: Any) -> Any:
        types = self.nodes_to_be_processed()
        processing = _processing_of(self)
        keys = _traverse_keys.get((type(self), types))
        if keys is None:
            keys = _traverse_keys[(type(self), types)] = {}
        pre = None if type(self).pre_processing_of_child is default_pre else self.pre_processing_of_child

        def visit(node: Any, child_id: int) -> Any:
            kind = type(node)
            key = keys.get(kind)
            if key is None:  # the first type of the map that matches, as moto's process()
                if not isinstance(node, Node):
                    key = _NOT_A_NODE
                elif isinstance(node, types):
                    key = next((k for k in processing if isinstance(node, k)), _NOT_PROCESSED)
                else:
                    key = _NOT_PROCESSED
                keys[kind] = key
            if key is _NOT_A_NODE:
                return node
            parent = node.parent
            children = node.children
            if children is not None:
                for i, child in enumerate(children):
                    if pre is not None:
                        pre(node, i)
                    visit(child, i)
            if key is not _NOT_PROCESSED:
                node = processing[key](node)
                node.parent = parent
                if parent:
                    parent.children[child_id] = node
            return node

        return visit(root, -1)

    return traverse


def _make_process(_: Any) -> Any:
    def process(self: DepthFirstTraverser, node: Any) -> Any:
        processing = _processing_of(self)
        for node_type, processor in processing.items():  # the first type that matches, as moto's own
            if isinstance(node, node_type):
                return processor(node)
        return None

    return process


REQUEST_LOCK = Patch(
    "dynamodb.request_lock",
    "one request at a time per backend: moto mutates items in place while others read them",
    (Replacement(DynamoHandler, "call_action", "method", _make_dynamodb_call_action),),
)
STREAM_RECORDS = Patch(
    "dynamodb.stream_records",
    "one INSERT per creating UpdateItem, locked sequence numbers, TTL deletions marked as the service's",
    (
        Replacement(DynamoDBBackend, "update_item", "method", _make_update_item),
        Replacement(StreamShard, "add", "method", _make_stream_add),
    ),
)
QUERY_PARTITION = Patch(
    "dynamodb.query_partition",
    "a Query reads its partition's key range (DynamoDB's cost), not every item of the table sorted: the "
    "partition's order is kept and bisected, a Limit reads only its items; string and binary keys compare directly",
    (
        Replacement(Table, "query", "method", _make_query),
        Replacement(Table, "all_items", "method", _make_all_items),
        Replacement(DynamoType, "__eq__", "method", _make_dynamo_eq),
        Replacement(DynamoType, "__lt__", "method", _make_dynamo_lt),
    ),
)
TRANSACTIONS = Patch(
    "dynamodb.transactions",
    "a transaction snapshots the items it names (not every table it names); a cancelled one leaves the "
    "tables, their stream shards and every open iterator as they were",
    (
        Replacement(DynamoDBBackend, "transact_write_items", "method", _make_transact_write_items),
        Replacement(Table, "__deepcopy__", "added", _table_deepcopy),
    ),
)
UPDATE_EXPRESSIONS = Patch(
    "dynamodb.update_expressions",
    "an UpdateExpression is parsed once per distinct text and its clause counts checked once; a traverser "
    "builds its type map once and finds a node's processor by the node's type",
    (
        Replacement(UpdateExpressionParser, "make", "method", _make_parse),
        Replacement(UpdateExpressionValidator, "__init__", "inherited", _make_validator_init),
        Replacement(UpdateExpressionValidator, "validate", "inherited", _make_validator_validate),
        Replacement(DepthFirstTraverser, "nodes_to_be_processed", "method", _make_nodes_to_be_processed),
        Replacement(DepthFirstTraverser, "process", "method", _make_process),
        Replacement(DepthFirstTraverser, "traverse", "method", _make_traverse),
    ),
)
ATTRIBUTE_VALUES = Patch(
    "dynamodb.attribute_values",
    "items (DynamoDB's and its streams' answers) are serialised in one pass, as moto's serializer writes them, "
    "and measured without rebuilding every nested value",
    (Replacement(BaseJSONSerializer, "_serialize_type_structure", "method", _make_serialize_structure),
     Replacement(DynamoType, "size", "method", _make_size)),
)
PATCHES = (REQUEST_LOCK, STREAM_RECORDS, QUERY_PARTITION, TRANSACTIONS, UPDATE_EXPRESSIONS, ATTRIBUTE_VALUES)
