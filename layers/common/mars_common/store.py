"""MessagesTable, EventsTable and AppsTable access: the idempotent upsert and every read pattern.

Data model (docs/ARCHITECTURE.md, "Data model"):
- A short timeline lives in one MessagesTable item (key app_id, message_id); each event is an attribute
  `e:<event_id>` written with if_not_exists — one UpdateItem per message per batch, as before.
- Once a timeline outgrows INLINE_MAX_BYTES, its events move to EventsTable pages (pk
  `<app_id>#<message_id>`, sk `p#<lo>#<seq>`) and the MessagesTable item keeps only a summary
  (counts, first/last seen, steps seen, updated_at, stuck_at, TTL). Pages partition the event keys
  `<created_at>#<event_id>` into groups [lo, next lo); a batch goes to a new page (in-order traffic) or
  is appended to the page of the group its keys fall in, never beyond PAGE_MAX_BYTES, so a write costs
  what it writes, not what the message already holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import ConditionBase, Key
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from . import aws
from .config import settings
from .events import Event, derive_event_id, format_ts, utc_now
from .timeline import Deadline, Lifecycle, step_stats, summarize, summarize_steps

EVENT_PREFIX = "e:"
BY_MESSAGE_INDEX = "ByMessage"
BY_APP_INDEX = "ByAppUpdated"
MAX_EVENTS_PER_UPDATE = 50  # keeps an UpdateExpression far below DynamoDB's 4 KB limit
STUCK_AT = "stuck_at"  # set by the stuck sweep (an alert was sent), removed by the next event
PAGED = "paged"  # a summary whose events live in EventsTable
STEP_STATS = "step_stats"  # a summary's {step: {"t": first created_at, "n": events}}: bounded by its distinct steps
# A timeline stays in its one item while the item stays under this (a 5-10 event timeline: 1-4 WRU a
# write, as before); past it, the events move to EventsTable pages.
INLINE_MAX_BYTES = 4 * 1024
# An append to an existing page stops here (a new page of the group is started): a write never costs
# more than ~8 WRU, however long the message.
PAGE_MAX_BYTES = 8 * 1024
PAGE_PREFIX = "p#"
FIRST_LO = ""  # the first group covers every key below the second group's
MAX_PAGE_LIMIT = 1000
INLINE_BYTES = "inline_bytes"  # an inline item's event bytes so far: its size guard, checked by the write itself
MARKER_PREFIX = "i#"  # EventsTable `i#<event_id>`: which created_at a client's id was first stored with
ATTEMPT_PREFIX = "a#"  # EventsTable `a#<commit>` under attempts_pk: every page the attempts at that commit wrote
PAGES_END = "p#~"  # above every page key (created_at starts with a digit), below nothing else of ours
# A paged read asks each Query for about the pages its answer still needs, at most PAGES_PER_READ, guessing
# GUESS_EVENTS_PER_PAGE until it has seen some (in-order traffic writes a page per batch of ~10): a poll of
# `limit=1` reads 2-3 pages, a page of 1,000 events ~100.
PAGES_PER_READ = 64
GUESS_EVENTS_PER_PAGE = 10
# Messages this process moved to pages (or found paged): their next batch reads the summary instead of
# trying the guarded inline write, which a summary would refuse at the price of a write. A hint only.
KNOWN_PAGED_MAX = 10_000
_known_paged: OrderedDict[tuple[str, str], None] = OrderedDict()


@dataclass(frozen=True)
class UpsertResult:
    stored: int
    duplicates: int
    unstuck: bool = False  # the message was marked stuck and this write cleared the mark (an SLA alert resolves)


# --- item sizes, as DynamoDB counts them (write units, the inline and page budgets) ----------------
def value_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | float | Decimal):
        digits = str(abs(Decimal(str(value)))).replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, dict):
        return 3 + sum(len(k.encode()) + value_size(v) + 1 for k, v in value.items())
    if isinstance(value, list | tuple):
        return 3 + sum(value_size(v) + 1 for v in value)
    if isinstance(value, set | frozenset):
        return sum(value_size(v) for v in value)
    raise TypeError(f"no DynamoDB size for {type(value).__name__}")


def item_size(item: dict[str, Any]) -> int:
    """Bytes of an item: attribute names plus values (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html)."""
    return sum(len(k.encode()) + value_size(v) for k, v in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


# --- keys -----------------------------------------------------------------------------------------
def events_pk(app_id: str, message_id: str) -> str:
    return f"{app_id}#{message_id}"  # app ids have no '#', so the split is unambiguous


def attempts_pk(app_id: str, message_id: str) -> str:
    """The partition of a message's attempt records, apart from its pages: one record per commit would
    otherwise outnumber the pages ~10 to 1, and the local emulator's Query reads a whole partition.
    App ids have no '!', so no events_pk starts like this one."""
    return f"{app_id}!a#{message_id}"


def event_key(created_at: str, event_id: str) -> str:
    """The order of a long timeline: created_at (fixed width), then event_id ('#' sorts below every id character)."""
    return f"{created_at}#{event_id}"


def page_sk(lo: str, seq: int) -> str:
    return f"{PAGE_PREFIX}{lo}#{seq:05d}"


def page_lo(sk: str) -> str:
    return sk[len(PAGE_PREFIX):-6]


def _entry(ev: Event, q: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"event": ev.event, "created_at": ev.created_at, "received_at": ev.received_at}
    if ev.meta:
        entry["meta"] = ev.meta
    if q is not None:
        entry["q"] = q
    return entry


def _public(event_id: str, value: dict[str, Any]) -> dict[str, Any]:
    ev = {"event": value["event"], "created_at": value["created_at"], "received_at": value.get("received_at"),
          "event_id": event_id}
    if value.get("meta"):
        ev["meta"] = dict(value["meta"])
    return ev


def _entries(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k[len(EVENT_PREFIX):]: v for k, v in item.items() if k.startswith(EVENT_PREFIX)}


# --- the idempotent upsert ------------------------------------------------------------------------
def _is_derived(ev: Event) -> bool:
    """An id Mars derived from the event's own fields (created_at among them): no other version of it can exist."""
    return ev.event_id == derive_event_id(ev.app_id, ev.message_id, ev.event, ev.created_at, ev.meta)


def _entry_bytes(event_id: str, entry: dict[str, Any]) -> int:
    return len(EVENT_PREFIX) + len(event_id) + value_size(entry)


def _inline_overhead(app_id: str, message_id: str) -> int:
    """The bytes of an inline item besides its events (keys, clocks, the byte guard, a stuck mark)."""
    return item_size({"app_id": app_id, "message_id": message_id, "updated_at": utc_now(), "expires_at": 2**31,
                      INLINE_BYTES: 2**20, STUCK_AT: utc_now()})


def _remember_paged(app_id: str, message_id: str) -> None:
    _known_paged[(app_id, message_id)] = None
    _known_paged.move_to_end((app_id, message_id))
    while len(_known_paged) > KNOWN_PAGED_MAX:
        _known_paged.popitem(last=False)


def upsert_message(table_name: str, app_id: str, message_id: str, events: list[Event], retention_days: int,
                   events_table: str | None = None) -> UpsertResult:
    """Adds events to a message; an event id already stored keeps its first version.

    Short timelines: one conditional UpdateItem and no read (the item's `inline_bytes` guards its size).
    Long ones, or a write the guard refuses: the item (from the refusal or a GetItem), then EventsTable
    pages and the summary (see _upsert_paged). `events_table` defaults to the stack's; without one every
    timeline stays inline.
    """
    events_table = settings().events_table if events_table is None else events_table
    unique: dict[str, Event] = {}
    for ev in events:
        unique.setdefault(ev.event_id, ev)
    batch = list(unique.values())
    in_call = len(events) - len(batch)
    if not batch:
        return UpsertResult(0, in_call)
    if not events_table:  # no pages to move to: the one-item model, no read
        result = _upsert_inline(table_name, app_id, message_id, batch, retention_days)
        return UpsertResult(result.stored, result.duplicates + in_call, result.unstuck)
    adding = sum(_entry_bytes(ev.event_id, _entry(ev)) for ev in batch)
    room = INLINE_MAX_BYTES - _inline_overhead(app_id, message_id) - adding
    summary: dict[str, Any] | None = None
    if (app_id, message_id) not in _known_paged and len(batch) <= MAX_EVENTS_PER_UPDATE and room >= 0:
        try:  # the common case, a short timeline: written without reading it first (bench (b): 1 call a message)
            result = _upsert_inline(table_name, app_id, message_id, batch, retention_days, room=room)
            return UpsertResult(result.stored, result.duplicates + in_call, result.unstuck)
        except _RefusedError as refused:  # paged, too big for the guard, or an item without one: decide from it
            summary = refused.item
    if summary is None:
        summary = aws.table(table_name).get_item(Key={"app_id": app_id, "message_id": message_id},
                                                 ConsistentRead=True).get("Item") or {}
    if not summary.get(PAGED):
        present = _entries(summary)
        base = sum(_entry_bytes(k, v) for k, v in present.items())
        grown = item_size(summary) + sum(_entry_bytes(ev.event_id, _entry(ev)) for ev in batch
                                         if ev.event_id not in present)
        if grown <= INLINE_MAX_BYTES:
            result = _upsert_inline(table_name, app_id, message_id, batch, retention_days, base=base)
            return UpsertResult(result.stored, result.duplicates + in_call, result.unstuck)
    result = _upsert_paged(table_name, events_table, summary, app_id, message_id, batch, retention_days)
    _remember_paged(app_id, message_id)
    return UpsertResult(result.stored, result.duplicates + in_call, result.unstuck)


class _RefusedError(Exception):
    """The guarded inline write's condition failed: `item` is the message's item as it is (maybe {})."""

    def __init__(self, item: dict[str, Any]) -> None:
        super().__init__("the inline write was refused")
        self.item = item


def _upsert_inline(table_name: str, app_id: str, message_id: str, batch: list[Event], retention_days: int,
                   *, room: int | None = None, base: int = 0) -> UpsertResult:
    """`SET e:<id> = if_not_exists(...)` per event, in chunks. `inline_bytes` adds up the event bytes
    written (duplicates too: an overestimate only moves a timeline to pages sooner); with `room`, the
    write is conditional on it being at most `room` (a new item passes), so a short timeline needs no
    read first, and a refusal (_RefusedError) returns the item instead of a GetItem. `base`: the event bytes
    of an item written before the guard existed."""
    duplicates = stored = 0
    unstuck = False
    for start in range(0, len(batch), MAX_EVENTS_PER_UPDATE):
        chunk = batch[start:start + MAX_EVENTS_PER_UPDATE]
        names = {"#u": "updated_at", "#x": "expires_at", "#s": STUCK_AT, "#p": PAGED, "#b": INLINE_BYTES}
        values: dict[str, Any] = {":u": utc_now(), ":x": int(time.time()) + retention_days * 86400,
                                  ":b0": base, ":b": sum(_entry_bytes(ev.event_id, _entry(ev)) for ev in chunk)}
        sets = ["#u = :u", "#x = :x", "#b = if_not_exists(#b, :b0) + :b"]
        for i, ev in enumerate(chunk):
            names[f"#e{i}"] = EVENT_PREFIX + ev.event_id
            values[f":e{i}"] = _entry(ev)
            sets.append(f"#e{i} = if_not_exists(#e{i}, :e{i})")
        # A new event ends a stuck spell (REMOVE #s): the next one alerts again. The condition keeps a
        # concurrent move to pages from being overwritten (the caller's failure brings the batch back).
        condition = "attribute_not_exists(#p)"
        if room is not None:
            names["#m"] = "message_id"
            values[":room"] = room
            condition += " AND (attribute_not_exists(#m) OR #b <= :room)"
        try:
            resp = aws.table(table_name).update_item(
                Key={"app_id": app_id, "message_id": message_id},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE #s",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
                **({"ReturnValuesOnConditionCheckFailure": "ALL_OLD"} if room is not None else {}),
            )
        except ClientError as exc:
            if room is not None and exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                kept: Any = exc.response.get("Item") or {}  # botocore types it `object`: DynamoDB JSON here
                raise _RefusedError(_deserialize(kept)) from exc
            raise
        # An event attribute already in the old item was a duplicate. (ALL_OLD, not UPDATED_OLD: emulators
        # differ on whether an if_not_exists that kept the old value counts as "updated".)
        before = resp.get("Attributes", {})
        unstuck = unstuck or STUCK_AT in before
        old = sum(1 for i in range(len(chunk)) if names[f"#e{i}"] in before)
        duplicates += old
        stored += len(chunk) - old
        base = 0  # the first chunk set it
    return UpsertResult(stored=stored, duplicates=duplicates, unstuck=unstuck)


def _deserialize(item: dict[str, Any]) -> dict[str, Any]:
    """An item in DynamoDB JSON (a ClientError's `Item` is not converted by the resource layer)."""
    des = TypeDeserializer()
    return {k: des.deserialize(v) for k, v in item.items()}


@dataclass
class _Group:
    """The pages sharing one lower bound `lo` (its events' keys are >= lo and below the next group's lo)."""

    lo: str
    pages: list[dict[str, Any]] = field(default_factory=list)

    def entries(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for page in self.pages:
            out.update(_entries(page))
        return out


def _load_groups(table: str, pk: str, keys: list[str]) -> list[tuple[_Group, list[str]]]:
    """The groups covering sorted `keys`, each with its keys, in key order. From the highest key down:
    the greatest lower bound <= it is its group, which also holds every lower key >= that bound — so a
    batch of in-order events costs one Query (and one more when its group has several pages)."""
    found: list[tuple[_Group, list[str]]] = []
    rest = list(keys)
    while rest:
        pages_below = Key("sk").between(PAGE_PREFIX, f"{PAGE_PREFIX}{rest[-1]}#~")  # not the i# claims below p#
        below = aws.table(table).query(KeyConditionExpression=Key("pk").eq(pk) & pages_below,
                                       ScanIndexForward=False, Limit=1, ConsistentRead=True).get("Items", [])
        if not below:
            return []  # no pages yet (the first group, lo "", covers every key once it exists)
        lo = page_lo(below[0]["sk"])
        pages = below if below[0]["sk"].endswith("#00000") else list(aws.items(
            table, KeyConditionExpression=Key("pk").eq(pk) & Key("sk").begins_with(f"{PAGE_PREFIX}{lo}#"),
            ConsistentRead=True))
        cut = next((n for n, k in enumerate(rest) if k >= lo), len(rest))
        found.append((_Group(lo, pages), rest[cut:]))
        rest = rest[:cut]
    return found[::-1]


def _chunks(entries: list[tuple[str, str, dict[str, Any]]], room: int) -> list[list[tuple[str, str, dict[str, Any]]]]:
    """Splits entries into runs of at most `room` bytes each (one page each)."""
    out: list[list[tuple[str, str, dict[str, Any]]]] = [[]]
    used = 0
    for entry in entries:
        size = len(EVENT_PREFIX) + len(entry[1]) + value_size(entry[2])
        if out[-1] and used + size > room:
            out.append([])
            used = 0
        out[-1].append(entry)
        used += size
    return [chunk for chunk in out if chunk]


def _upsert_paged(messages_table: str, events_table: str, summary: dict[str, Any], app_id: str, message_id: str,
                  batch: list[Event], retention_days: int) -> UpsertResult:
    """Pages first, then the summary (one conditional UpdateItem) that commits them.

    Every entry written carries `q`, the commit it belongs to (summary `seq` + 1). A reader shows only
    committed entries (q <= seq); a store that wrote pages and failed before its commit left entries
    with q > seq. Before writing, an attempt adds its pages to the commit's attempt record (`a#<q>`),
    so whichever store makes commit q — a redelivery, or another batch of the message when the failed
    one never comes back — reads every page written for q and counts its entries then. So a retry never
    counts an event twice, and a crash between the two writes never loses one from the count.

    A client's event id (not derived by Mars, so it may come again with another created_at) is claimed
    in a marker `i#<event_id>` holding the created_at it was first stored with; a later version with
    another created_at is a duplicate, wherever its key would fall.
    """
    pk = events_pk(app_id, message_id)
    paged = bool(summary.get(PAGED))
    seq = int(summary.get("seq", 0)) if paged else 0
    attempt = seq + 1
    expires = int(time.time()) + retention_days * 86400
    # (key, event_id, entry, a client's id): on the move to pages, the inline events come along (q 0).
    candidates: dict[str, tuple[str, str, dict[str, Any], bool]] = {}
    if not paged:
        for event_id, value in _entries(summary).items():
            derived = derive_event_id(app_id, message_id, value["event"], value["created_at"], dict(value.get("meta") or {}))
            candidates[event_id] = (event_key(value["created_at"], event_id), event_id, {**value, "q": 0},
                                    event_id != derived)
    for ev in batch:
        candidates.setdefault(ev.event_id, (event_key(ev.created_at, ev.event_id), ev.event_id, _entry(ev, attempt),
                                            not _is_derived(ev)))
    ordered = sorted(candidates.values())
    keys = [c[0] for c in ordered]
    groups = _load_groups(events_table, pk, keys) or [(_Group(FIRST_LO), keys)]
    by_key = {c[0]: c for c in ordered}
    counted = 0  # entries this commit adds to event_count
    added: list[dict[str, Any]] = []  # those entries, for the per-step stats (first time, count)
    seen: list[dict[str, Any]] = []  # the stored version of every candidate, for first/last seen and steps
    planned: list[tuple[_Group, dict[str, dict[str, Any]], list[tuple[str, str, dict[str, Any]]]]] = []
    for group, group_keys in groups:
        present = group.entries()
        if not paged:
            counted += len(present)  # nothing was committed to pages yet: all of it is counted now
            added.extend(present.values())
        new: list[tuple[str, str, dict[str, Any]]] = []
        for key in group_keys:
            _, event_id, entry, client = by_key[key]
            if event_id in present:
                seen.append(present[event_id])
            elif client and not _claim(events_table, pk, event_id, entry["created_at"], expires):
                continue  # stored before with another created_at: the first version stays
            else:
                new.append((key, event_id, entry))
        seen.extend(entry for _, _, entry in new)
        added.extend(entry for _, _, entry in new)
        counted += len(new)
        planned.append((group, present, new))
    puts, appends = _place(pk, planned, expires)
    loaded = {p["sk"]: p for g, _ in groups for p in g.pages}
    mine = [item["sk"] for item in puts] + [page["sk"] for page, _ in appends]
    others: list[dict[str, Any]] = []  # pages other attempts at this commit wrote, outside the groups read
    # The attempt record is written before any page (a crash after it leaves a trace), and read whenever
    # this store commits: new entries, earlier attempts' entries found in the groups read, or the move.
    if mine or not paged or _uncommitted(events_table, pk, seq, list(loaded.values()))[0]:
        for sk in sorted(_announce(events_table, attempts_pk(app_id, message_id), attempt, mine, expires,
                                   read_only=not mine)):
            if sk not in loaded and sk not in mine:
                got = aws.table(events_table).get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item")
                if got:
                    others.append(got)
    late, late_pages = _uncommitted(events_table, pk, seq, [*loaded.values(), *others] if paged else others)
    counted += len(late)
    seen.extend(late)
    added.extend(late)
    touched: list[str] = []
    for item in puts:
        try:
            aws.table(events_table).put_item(Item=item, ConditionExpression="attribute_not_exists(sk)")
        except ClientError as exc:
            raise _conflict(exc, "a page was written concurrently") from exc
        touched.append(item["sk"])
    for page, chunk in appends:
        _append(events_table, page, chunk, expires)
        touched.append(page["sk"])
    touched += [sk for sk in late_pages if sk not in touched]
    stored = max(counted if paged else counted - len(_entries(summary)), 0)
    if paged and not counted:
        return UpsertResult(stored=0, duplicates=len(batch))  # nothing new: no commit, no stream record
    _commit(messages_table, summary, app_id, message_id, attempt, counted, seen, touched, expires, added)
    return UpsertResult(stored=stored, duplicates=max(len(batch) - stored, 0), unstuck=STUCK_AT in summary)


def _place(pk: str, planned: list[tuple[_Group, dict[str, dict[str, Any]], list[tuple[str, str, dict[str, Any]]]]],
           expires: int) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]]]:
    """The new pages and the appends that hold each group's new entries."""
    puts: list[dict[str, Any]] = []
    appends: list[tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]] = []
    for group, present, new in planned:
        if not new:
            continue
        top = max((event_key(v["created_at"], k) for k, v in present.items()), default=None)
        if not group.pages:  # the first pages of the message: sorted runs, each its own group (the first covers all below)
            for n, chunk in enumerate(_chunks(new, PAGE_MAX_BYTES)):
                puts.append(_page(pk, page_sk(FIRST_LO if n == 0 else chunk[0][0], 0), chunk, expires))
            continue
        ahead = [n for n in new if top is not None and n[0] > top]
        behind = [n for n in new if n not in ahead]
        for chunk in _chunks(ahead, PAGE_MAX_BYTES):  # in-order traffic: new groups, which take no key from this one
            puts.append(_page(pk, page_sk(chunk[0][0], 0), chunk, expires))
        if behind:  # keys inside the group: appended to its last page while that stays small, else new pages
            last = group.pages[-1]
            adding = sum(_entry_bytes(b[1], b[2]) for b in behind)
            if item_size(last) + adding <= PAGE_MAX_BYTES:
                appends.append((last, behind))
            else:
                next_seq = int(group.pages[-1]["sk"][-5:]) + 1
                for chunk in _chunks(behind, PAGE_MAX_BYTES):
                    puts.append(_page(pk, page_sk(group.lo, next_seq), chunk, expires))
                    next_seq += 1
    return puts, appends


def _claim(table: str, pk: str, event_id: str, created_at: str, expires: int) -> bool:
    """Claims a client's event id for this created_at; False when it was stored with another one."""
    try:
        aws.table(table).put_item(Item={"pk": pk, "sk": MARKER_PREFIX + event_id, "c": created_at, "expires_at": expires},
                                  ConditionExpression="attribute_not_exists(#k) OR #c = :c",
                                  ExpressionAttributeNames={"#k": "sk", "#c": "c"},
                                  ExpressionAttributeValues={":c": created_at})
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise


def _announce(table: str, record_pk: str, attempt: int, pages: list[str], expires: int, *, read_only: bool) -> set[str]:
    """Adds `pages` to the attempt record of commit `attempt` (before they are written) and returns every
    page any attempt at that commit announced; `read_only` (nothing to write) only reads it."""
    key = {"pk": record_pk, "sk": f"{ATTEMPT_PREFIX}{attempt:010d}"}
    if read_only:
        item = aws.table(table).get_item(Key=key, ConsistentRead=True).get("Item") or {}
    else:
        item = aws.table(table).update_item(
            Key=key, UpdateExpression="ADD #pg :pg SET #x = :x", ExpressionAttributeNames={"#pg": "pages", "#x": "expires_at"},
            ExpressionAttributeValues={":pg": set(pages), ":x": expires}, ReturnValues="ALL_NEW").get("Attributes", {})
    return set(item.get("pages") or ())


def _uncommitted(table: str, pk: str, seq: int, pages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries of earlier attempts that wrote pages and never committed (q > seq), which this commit
    counts, and the pages holding them. Pages written before attempt records existed name their
    attempt's other pages (`sib`): one found leads to all of them."""
    by_sk = {p["sk"]: p for p in pages}
    todo = list(by_sk.values())
    while todo:
        page = todo.pop()
        if not any(int(v.get("q", 0)) > seq for v in _entries(page).values()):
            continue
        for sk in page.get("sib") or ():
            if sk not in by_sk:
                got = aws.table(table).get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item")
                if got:
                    by_sk[sk] = got
                    todo.append(got)
    found = {sk: [v for v in _entries(p).values() if int(v.get("q", 0)) > seq] for sk, p in by_sk.items()}
    return [v for vs in found.values() for v in vs], [sk for sk, vs in found.items() if vs]


def _page(pk: str, sk: str, chunk: list[tuple[str, str, dict[str, Any]]], expires: int) -> dict[str, Any]:
    item: dict[str, Any] = {"pk": pk, "sk": sk, "v": 1, "expires_at": expires}
    for _, event_id, entry in chunk:
        item[EVENT_PREFIX + event_id] = entry
    return item


def _append(table: str, page: dict[str, Any], chunk: list[tuple[str, str, dict[str, Any]]], expires: int) -> None:
    names = {"#v": "v", "#x": "expires_at"}
    values: dict[str, Any] = {":v": page["v"], ":v1": int(page["v"]) + 1, ":x": expires}
    sets = ["#v = :v1", "#x = :x"]
    for i, (_, event_id, entry) in enumerate(chunk):
        names[f"#e{i}"] = EVENT_PREFIX + event_id
        values[f":e{i}"] = entry
        sets.append(f"#e{i} = :e{i}")
    try:  # the version read is the version written over: a concurrent append fails this one (retried)
        aws.table(table).update_item(Key={"pk": page["pk"], "sk": page["sk"]}, UpdateExpression="SET " + ", ".join(sets),
                                     ConditionExpression="#v = :v", ExpressionAttributeNames=names,
                                     ExpressionAttributeValues=values)
    except ClientError as exc:
        raise _conflict(exc, "a page changed while it was written") from exc


class ConcurrentWriteError(Exception):
    """Another store wrote the same message at the same time; the batch comes back (redelivery)."""


def _conflict(exc: ClientError, message: str) -> Exception:
    if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
        return ConcurrentWriteError(message)
    return exc


def _commit(table: str, summary: dict[str, Any], app_id: str, message_id: str, attempt: int, counted: int,
            seen: list[dict[str, Any]], touched: list[str], expires: int, added: list[dict[str, Any]]) -> None:
    """The summary: only the batch's effect (min/max/set union are idempotent; the count and the per-step
    stats, merged from the summary read, are guarded by seq). A summary written before step_stats existed
    keeps none (a partial map would be wrong): its timeline reports unexpected_count null."""
    created = [e["created_at"] for e in seen]
    received = [e["received_at"] for e in seen if e.get("received_at")]
    first = min([*created, *([summary["first_seen"]] if summary.get("first_seen") else [])], default=None)
    last = max([*created, *([summary["last_seen"]] if summary.get("last_seen") else [])], default=None)
    last_received = max([*received, *([summary["last_received"]] if summary.get("last_received") else [])],
                        default=None)
    names = {"#u": "updated_at", "#x": "expires_at", "#p": PAGED, "#q": "seq", "#c": "event_count",
             "#pg": "pages", "#s": STUCK_AT}
    values: dict[str, Any] = {":u": utc_now(), ":x": expires, ":t": True, ":q": attempt, ":pg": touched}
    sets = ["#u = :u", "#x = :x", "#p = :t", "#q = :q", "#pg = :pg"]
    for name, attr, value in (("#f", "first_seen", first), ("#l", "last_seen", last),
                              ("#r", "last_received", last_received)):
        if value is not None:
            names[name] = attr
            values[":" + name[1:]] = value
            sets.append(f"{name} = :{name[1:]}")
    removes = ["#s"]
    adds = []
    stats: dict[str, dict[str, Any]] | None = None
    if not summary.get(PAGED) or STEP_STATS in summary:
        stats = {k: {"t": v["t"], "n": int(v["n"])} for k, v in (summary.get(STEP_STATS) or {}).items()}
        for name, got in step_stats(added).items():
            old = stats.setdefault(name, {"t": got["t"], "n": 0})
            old["t"], old["n"] = min(old["t"], got["t"]), old["n"] + got["n"]
        names["#ss"] = STEP_STATS
        values[":ss"] = stats
        sets.append("#ss = :ss")
    steps = {e["event"] for e in seen}
    if steps:
        names["#st"] = "steps"
        values[":st"] = steps
        adds.append("#st :st")
    if not summary.get(PAGED):
        # The move to pages: the whole item is replaced (an old item may hold ~1,500 event attributes, more
        # than one UpdateExpression may name), unless it changed since it was read.
        item = {"app_id": app_id, "message_id": message_id, "updated_at": values[":u"], "expires_at": expires,
                PAGED: True, "seq": attempt, "event_count": counted, "pages": touched}
        item.update({attr: values[":" + name[1:]] for name, attr in names.items()
                     if attr in ("first_seen", "last_seen", "last_received")})
        if steps:
            item["steps"] = steps
        if stats is not None:
            item[STEP_STATS] = stats
        condition = "attribute_not_exists(#p) AND " + ("#u = :u0" if "updated_at" in summary else "attribute_not_exists(#u)")
        try:
            aws.table(table).put_item(Item=item, ConditionExpression=condition,
                                      ExpressionAttributeNames={"#p": PAGED, "#u": "updated_at"},
                                      **({"ExpressionAttributeValues": {":u0": summary["updated_at"]}}
                                         if "updated_at" in summary else {}))
        except ClientError as exc:
            raise _conflict(exc, "the message changed while it moved to pages") from exc
        return
    values[":c"] = counted
    values[":q0"] = attempt - 1
    adds.append("#c :c")
    expression = "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes) + " ADD " + ", ".join(adds)
    try:
        aws.table(table).update_item(Key={"app_id": app_id, "message_id": message_id}, UpdateExpression=expression,
                                     ConditionExpression="#q = :q0", ExpressionAttributeNames=names,
                                     ExpressionAttributeValues=values)
    except ClientError as exc:
        raise _conflict(exc, "the message's summary changed while its events were stored") from exc


# --- reads ----------------------------------------------------------------------------------------
def item_events(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The inline events of an item, sorted by created_at (ties: received_at, then id, so order is stable)."""
    out = [_public(event_id, value) for event_id, value in _entries(item).items()]
    out.sort(key=lambda e: (e["created_at"], e["received_at"] or "", e["event_id"]))
    return out


def _paged_summary(item: dict[str, Any], lifecycle: Lifecycle | None, now: datetime) -> dict[str, Any]:
    """summarize() from the summary's fields: its per-step stats (or, written before them, its steps) stand
    for the events, the newest receive for the clock."""
    return summarize_steps(item.get(STEP_STATS), lifecycle, item.get("updated_at"), now,
                           first_seen=item.get("first_seen"), last_seen=item.get("last_seen"),
                           last_received=item.get("last_received"), steps=set(item.get("steps") or ()))


def timeline_changed(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether a stream record (images as dicts) changed what a reader of the timeline sees: a new event,
    a long timeline's commit, or the stuck sweep's mark. A duplicate delivery only touches updated_at."""
    return (any(k.startswith(EVENT_PREFIX) and k not in old for k in new)
            or (STUCK_AT in new and STUCK_AT not in old)
            or (is_paged(new) and new.get("seq") != old.get("seq")))


def is_paged(item: dict[str, Any]) -> bool:
    return bool(item.get(PAGED))


def event_count(item: dict[str, Any]) -> int:
    return int(item.get("event_count", 0)) if is_paged(item) else len(_entries(item))


def to_timeline(item: dict[str, Any], lifecycle: Lifecycle | None, *, with_events: bool = True,
                now: datetime | None = None) -> dict[str, Any]:
    """A timeline from a MessagesTable item. A long timeline's item holds no events: `events` is empty
    (read them with read_timeline)."""
    now = now or datetime.now(UTC)
    if is_paged(item):
        events: list[dict[str, Any]] = []
        summary = _paged_summary(item, lifecycle, now)
    else:
        events = item_events(item)
        summary = summarize(events, lifecycle, item.get("updated_at"), now)
    out: dict[str, Any] = {"app_id": item["app_id"], "message_id": item["message_id"]}
    if with_events:
        out["events"] = events
    out.update(summary)
    out["updated_at"] = item.get("updated_at")
    return out


def encode_event_cursor(app_id: str, message_id: str, key: str) -> str:
    raw = json.dumps({"a": app_id, "m": message_id, "k": key}, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_event_cursor(cursor: str, app_id: str, message_id: str) -> str:
    """The event key a page ends at; ValueError on a cursor not made for this app's message."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not valid") from exc
    if (not isinstance(data, dict) or set(data) != {"a", "m", "k"} or not all(isinstance(v, str) for v in data.values())
            or data["a"] != app_id or data["m"] != message_id):
        raise ValueError("cursor is not valid for this message")
    return str(data["k"])


def read_timeline(messages_table: str, events_table: str, app_id: str, message_id: str, lifecycle: Lifecycle | None,
                  *, limit: int | None = None, cursor: str | None = None, item: dict[str, Any] | None = None,
                  now: datetime | None = None) -> dict[str, Any] | None:
    """One app's timeline of a message (None when it has none). A short timeline read without limit or
    cursor has the shape it always had; otherwise `limit` events (default and maximum MAX_PAGE_LIMIT)
    after `cursor` (an event key, from decode_event_cursor), sorted by (created_at, event_id), with
    `event_count` (the total) and `cursor` (the next page's, None at the end)."""
    if item is None or set(item) <= {"app_id", "message_id"}:  # none, or only an index's keys: read it
        item = aws.table(messages_table).get_item(Key={"app_id": app_id, "message_id": message_id}).get("Item")
    if not item:
        return None
    timeline = to_timeline(item, lifecycle, now=now)
    if not is_paged(item) and limit is None and cursor is None:
        return timeline
    size = min(limit or MAX_PAGE_LIMIT, MAX_PAGE_LIMIT)
    if is_paged(item):
        events, next_key = _read_pages(events_table, events_pk(app_id, message_id), int(item.get("seq", 0)),
                                       size, cursor)
    else:
        ordered = sorted(timeline["events"], key=lambda e: event_key(e["created_at"], e["event_id"]))
        after = [e for e in ordered if cursor is None or event_key(e["created_at"], e["event_id"]) > cursor]
        events = after[:size]
        next_key = event_key(events[-1]["created_at"], events[-1]["event_id"]) if len(after) > size else None
    timeline["events"] = events
    timeline["event_count"] = event_count(item)
    timeline["cursor"] = encode_event_cursor(app_id, message_id, next_key) if next_key else None
    return timeline


def _pages(table: str, condition: ConditionBase, wanted: Callable[[], int]) -> Iterator[dict[str, Any]]:
    """The items of a Query, each call asking for `wanted()` of them (DynamoDB's `Limit`)."""
    kwargs: dict[str, Any] = {"KeyConditionExpression": condition, "Limit": wanted()}
    while True:
        resp = aws.table(table).query(**kwargs)
        yield from resp.get("Items", [])
        if "LastEvaluatedKey" not in resp:
            return
        kwargs.update(ExclusiveStartKey=resp["LastEvaluatedKey"], Limit=wanted())


def _read_pages(table: str, pk: str, seq: int, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Committed events after `cursor`, group by group (a group's pages may overlap, so each is sorted whole)."""
    start = f"{PAGE_PREFIX}"
    if cursor is not None:
        below = aws.table(table).query(KeyConditionExpression=Key("pk").eq(pk) & Key("sk").between(PAGE_PREFIX, f"{PAGE_PREFIX}{cursor}#~"),
                                       ScanIndexForward=False, Limit=1).get("Items", [])
        if below:
            start = f"{PAGE_PREFIX}{page_lo(below[0]['sk'])}#"
    out: list[tuple[str, dict[str, Any]]] = []
    group: list[tuple[str, dict[str, Any]]] = []
    current: str | None = None
    more = False

    def flush() -> None:
        group.sort(key=lambda kv: kv[0])
        out.extend(kv for kv in group if cursor is None or kv[0] > cursor)
        group.clear()

    pages_read = events_read = 0

    def pages_wanted() -> int:
        """The next Query's `Limit`: about the pages the rest of the answer needs (1 MB of pages a call,
        ~400 of a long message's, was what every read took however few events it asked for)."""
        per_page = events_read / pages_read if pages_read else GUESS_EVENTS_PER_PAGE
        rest = max(1, limit + 1 - len(out) - len(group))
        return max(2, min(PAGES_PER_READ, math.ceil(rest / max(per_page, 1.0)) + 1))

    for page in _pages(table, Key("pk").eq(pk) & Key("sk").between(start, PAGES_END), pages_wanted):
        lo = page_lo(page["sk"])
        if lo != current:
            flush()
            if len(out) >= limit:
                more = True
                break
            current = lo
        pages_read += 1
        for event_id, value in _entries(page).items():
            events_read += 1
            if int(value.get("q", 0)) <= seq:  # not yet committed (a store in progress, or one that failed): hidden
                group.append((event_key(value["created_at"], event_id), _public(event_id, value)))
    else:
        flush()
    more = more or len(out) > limit
    page_events = out[:limit]
    next_key = page_events[-1][0] if more and page_events else None
    return [e for _, e in page_events], next_key


def last_commit_events(events_table: str, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The events a long timeline's last summary commit added (its `pages`, entries of its `seq`), sorted."""
    seq = int(item.get("seq", 0))
    pk = events_pk(item["app_id"], item["message_id"])
    out: list[tuple[str, dict[str, Any]]] = []
    for sk in item.get("pages") or ():
        page = aws.table(events_table).get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item") or {}
        out.extend((event_key(v["created_at"], k), _public(k, v)) for k, v in _entries(page).items()
                   if int(v.get("q", 0)) == seq)
    return [e for _, e in sorted(out, key=lambda kv: kv[0])]


def get_items(table_name: str, message_id: str, app_id: str | None = None, *,
              apps: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The items of a message id: `app_id`'s; else those of `apps` (a scoped key's); else every
    app's (found through the KEYS_ONLY ByMessage index).

    With `apps`, no other app's item or key is read, so neither the answer nor its timing depends
    on another app having used the id (docs/SECURITY.md: no existence oracle)."""
    table = aws.table(table_name)
    if app_id is not None:
        item = table.get_item(Key={"app_id": app_id, "message_id": message_id}).get("Item")
        return [item] if item else []
    if apps is not None:
        keys = [{"app_id": a, "message_id": message_id} for a in sorted(set(apps))]
    else:
        keys = [{"app_id": i["app_id"], "message_id": i["message_id"]}
                for i in aws.items(table_name, IndexName=BY_MESSAGE_INDEX,
                                   KeyConditionExpression=Key("message_id").eq(message_id))]
    items: list[dict[str, Any]] = []
    for start in range(0, len(keys), 100):
        request = {table_name: {"Keys": keys[start:start + 100], "ConsistentRead": True}}
        while request:
            got = table.meta.client.batch_get_item(RequestItems=request)
            items.extend(got.get("Responses", {}).get(table_name, []))
            request = got.get("UnprocessedKeys") or {}
    items.sort(key=lambda i: i["app_id"])
    return items


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


MESSAGE_CURSOR_FIELDS = frozenset({"app_id", "message_id", "updated_at"})  # a ByAppUpdated key


def decode_cursor(cursor: str, app_id: str, fields: frozenset[str] = MESSAGE_CURSOR_FIELDS) -> dict[str, Any]:
    """Raises ValueError on a cursor that was not made by encode_cursor for this app (a key of `fields`)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not valid") from exc
    if (not isinstance(key, dict) or set(key) != fields
            or key.get("app_id") != app_id or not all(isinstance(v, str) for v in key.values())):
        raise ValueError("cursor is not valid for this app")
    return key


# An index page read for a filtered list holds this many items (fewer reads when filters skip most).
FILTERED_PAGE_ITEMS = 100
# What a keep() predicate sees: the item as read from the index (ALL projection) and its summary.
Keep = Callable[[dict[str, Any], dict[str, Any]], bool]


def list_messages(table_name: str, app_id: str, lifecycle: Lifecycle | None, *, status: str | None,
                  limit: int, cursor: dict[str, Any] | None, max_pages: int = 10, frm: str | None = None,
                  to: str | None = None, keep: Keep | None = None, with_events: bool = False,
                  deadline: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Newest first (by updated_at). `frm`/`to` bound updated_at in the index's key condition (only that
    range is read). A status filter and `keep` (mars_common.search's filters) are applied after the read
    (status depends on time), so up to `max_pages` index pages are read to fill a page — a page may hold
    fewer than `limit` items; the cursor resumes exactly after the last item returned (or the last one
    read). `deadline` (time.monotonic()): a filtered page stops after the item being checked when it is
    reached — a keep() that queries per item (alert=firing) must not outlast the caller's timeout; at least
    one item is checked per call, so following the cursor always ends. `with_events`: inline timelines keep
    their events (a paged one's are [], read with read_timeline)."""
    table = aws.table(table_name)
    out: list[dict[str, Any]] = []
    start = cursor
    now = datetime.now(UTC)
    key: ConditionBase = Key("app_id").eq(app_id)
    if frm is not None and to is not None:
        key = key & Key("updated_at").between(frm, to)
    elif frm is not None:
        key = key & Key("updated_at").gte(frm)
    elif to is not None:
        key = key & Key("updated_at").lte(to)
    page_items = max(limit, FILTERED_PAGE_ITEMS) if (status or keep) else limit
    for _ in range(max_pages):
        kwargs: dict[str, Any] = {"IndexName": BY_APP_INDEX, "KeyConditionExpression": key,
                                  "ScanIndexForward": False, "Limit": page_items}
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = table.query(**kwargs)
        items = resp.get("Items", [])
        for n, item in enumerate(items):
            summary = to_timeline(item, lifecycle, with_events=with_events, now=now)
            if (status is None or summary["status"] == status) and (keep is None or keep(item, summary)):
                out.append(summary)
                if len(out) == limit:
                    return out, _index_key(item)
            if deadline is not None and time.monotonic() >= deadline and (n + 1 < len(items)
                                                                            or resp.get("LastEvaluatedKey")):
                return out, _index_key(item)
        start = resp.get("LastEvaluatedKey")
        if not start:
            return out, None
    return out, start


def _index_key(item: dict[str, Any]) -> dict[str, Any]:
    """A ByAppUpdated item's key: the ExclusiveStartKey that resumes right after it."""
    return {"app_id": item["app_id"], "message_id": item["message_id"], "updated_at": item["updated_at"]}


def get_lifecycle(table_name: str, app_id: str) -> Lifecycle | None:
    item = aws.table(table_name).get_item(Key={"app_id": app_id}).get("Item")
    # an item without `events` holds only other settings of the app (its OTLP mapping): no lifecycle
    return _lifecycle(item) if item and "events" in item else None


def _lifecycle(item: dict[str, Any]) -> Lifecycle:
    retention = item.get("retention_days")
    return Lifecycle(events=tuple(item.get("events", [])), sla_seconds=int(item.get("sla_seconds", 0)),
                     updated_at=item.get("updated_at"), retention_days=int(retention) if retention else None,
                     optional=tuple(item.get("optional") or ()), failure=tuple(item.get("failure") or ()),
                     deadlines=tuple(Deadline(d["step"], d["after"], int(d["within_seconds"]))
                                     for d in item.get("deadlines") or ()))


def put_lifecycle(table_name: str, app_id: str, lifecycle: Lifecycle) -> dict[str, Any]:
    """Replaces the lifecycle's attributes only (an UpdateItem, not a PutItem): the app's item also
    holds its OTLP mapping (mars_common.otlp), which a new lifecycle must not erase."""
    item: dict[str, Any] = {"app_id": app_id, "events": list(lifecycle.events), "sla_seconds": lifecycle.sla_seconds,
                            "updated_at": utc_now()}
    if lifecycle.retention_days:
        item["retention_days"] = lifecycle.retention_days
    rules = lifecycle.rules_dict()
    item.update({k: v for k, v in rules.items() if v})  # a lifecycle without rules: as before
    names = {"#e": "events", "#s": "sla_seconds", "#u": "updated_at", "#r": "retention_days"}
    values: dict[str, Any] = {":e": item["events"], ":s": item["sla_seconds"], ":u": item["updated_at"]}
    sets = ["#e = :e", "#s = :s", "#u = :u"]
    removes = []
    if lifecycle.retention_days:
        values[":r"] = lifecycle.retention_days
        sets.append("#r = :r")
    else:
        removes.append("#r")
    for n, (attr, value) in enumerate(sorted(rules.items())):
        names[f"#k{n}"] = attr
        if value:
            values[f":k{n}"] = value
            sets.append(f"#k{n} = :k{n}")
        else:
            removes.append(f"#k{n}")
    update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
    aws.table(table_name).update_item(Key={"app_id": app_id}, UpdateExpression=update,
                                      ExpressionAttributeNames=names, ExpressionAttributeValues=values)
    return item


def stuck_candidates(table_name: str, app_id: str, lifecycle: Lifecycle, now: datetime,
                     lookback_seconds: int) -> list[dict[str, Any]]:
    """Messages of an app that are stuck now and not yet marked: last written between
    `lookback` before the SLA cut-off and the cut-off (older ones were swept by earlier runs)."""
    if lifecycle.sla_seconds <= 0 or not lifecycle.events:
        return []
    cutoff = now.timestamp() - lifecycle.sla_seconds
    low = format_ts(datetime.fromtimestamp(cutoff - lookback_seconds, UTC))
    high = format_ts(datetime.fromtimestamp(cutoff, UTC))
    written = aws.items(table_name, IndexName=BY_APP_INDEX,
                        KeyConditionExpression=Key("app_id").eq(app_id) & Key("updated_at").between(low, high))
    return [item for item in written if STUCK_AT not in item
            and to_timeline(item, lifecycle, with_events=False, now=now)["status"] == "stuck"]


def mark_stuck(table_name: str, item: dict[str, Any], now: str) -> bool:
    """Marks a message stuck unless it was marked or written since it was read (then False)."""
    try:
        aws.table(table_name).update_item(
            Key={"app_id": item["app_id"], "message_id": item["message_id"]},
            UpdateExpression="SET #s = :now",
            ConditionExpression="attribute_not_exists(#s) AND #u = :u",
            ExpressionAttributeNames={"#s": STUCK_AT, "#u": "updated_at"},
            ExpressionAttributeValues={":now": now, ":u": item["updated_at"]},
        )
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise


def lifecycles(table_name: str) -> dict[str, Lifecycle]:
    """Every app's lifecycle (AppsTable holds one small item per app)."""
    return {item["app_id"]: _lifecycle(item) for item in aws.items(table_name, "scan") if "events" in item}
