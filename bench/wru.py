"""`python -m bench.wru`: DynamoDB write units per event of Mars's data models, from item sizes.

The store's own code runs against template.yaml's tables in moto (in process); every DynamoDB call it
makes is metered the way DynamoDB bills it (docs: "Capacity unit consumption"):
- PutItem / UpdateItem / DeleteItem: 1 WRU per 1 KB (rounded up) of the larger of the item before and
  after; a write whose condition fails still costs the existing item's size (at least 1 WRU);
  TransactWriteItems: twice that.
- the ByAppUpdated index (projection ALL) of MessagesTable: a write that changes updated_at deletes the
  old index entry and puts the new one (each by its size), reported apart ("+GSI").
- GetItem: 1 RRU per 4 KB (half when eventually consistent); Query: the items read, summed, per 4 KB.

Models: "old" is one item per message holding every event (the store with no EventsTable: what Mars
did before issue 13); "new" is the summary + EventsTable pages. Scenarios (events with ~150-byte meta):
(i) 5-event messages, one batch each; (ii) 5-event messages, one event per batch; (iii) one 10,000-event
message arriving 10 events per batch. The old model cannot store (iii): its item passes 400 KB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

MAX_ITEM_BYTES = 400 * 1024
WRITES = {"PutItem", "UpdateItem", "DeleteItem"}


@dataclass
class Meter:
    """Capacity of every DynamoDB call made through the store's clients."""

    raw: Any  # an unmetered client, to read an item's size before and after a write
    gsi_tables: set[str]
    wru: float = 0.0
    gsi_wru: float = 0.0
    rru: float = 0.0
    writes: int = 0
    _before: dict[int, int] = field(default_factory=dict)

    def size(self, table: str, key: dict[str, Any]) -> int:
        from boto3.dynamodb.types import TypeDeserializer
        from mars_common.store import item_size

        item = self.raw.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        if not item:
            return 0
        des = TypeDeserializer()
        return item_size({k: des.deserialize(v) for k, v in item.items()})

    def _key(self, params: dict[str, Any]) -> dict[str, Any]:
        if "Key" in params:
            return dict(params["Key"])
        schema = self.raw.describe_table(TableName=params["TableName"])["Table"]["KeySchema"]
        return {k["AttributeName"]: params["Item"][k["AttributeName"]] for k in schema}

    def before(self, params: dict[str, Any], context: dict[str, Any], event_name: str, **_: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        if op in WRITES:
            context["mars_meter"] = (op, params["TableName"], self._key(params),
                                     self.size(params["TableName"], self._key(params)))

    def after(self, http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any],
              **_: Any) -> None:
        from mars_common.store import item_size, write_units

        op = model.name
        if op in ("GetItem", "Query"):
            # boto3's resource layer has already turned the response into Python values
            items = [parsed["Item"]] if op == "GetItem" and parsed.get("Item") else parsed.get("Items", [])
            size = sum(item_size(i) for i in items)
            consistent = context.get("mars_consistent", False)
            self.rru += max(1, math.ceil(size / 4096)) * (1 if consistent else 0.5)
            return
        if op not in WRITES or "mars_meter" not in context:
            return
        _, table, key, old = context.pop("mars_meter")
        failed = parsed.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
        new = old if failed else self.size(table, key)
        self.writes += 1
        self.wru += write_units(max(old, new))
        if table in self.gsi_tables and not failed:
            self.gsi_wru += (write_units(old) if old else 0) + write_units(new)

    def mark_consistency(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["mars_consistent"] = bool(params.get("ConsistentRead"))

    def attach(self, client: Any) -> None:
        events = client.meta.events
        # after boto3's own before-parameter-build handler: the parameters are DynamoDB JSON by then
        events.register("before-parameter-build.dynamodb", self.before)
        events.register("before-parameter-build.dynamodb.GetItem", self.mark_consistency)
        events.register("before-parameter-build.dynamodb.Query", self.mark_consistency)
        events.register("after-call.dynamodb", self.after)


@dataclass
class Row:
    scenario: str
    model: str
    events: int
    writes: int
    wru: float
    gsi_wru: float
    rru: float
    note: str = ""
    batch_ms: list[float] = field(default_factory=list)  # wall time of each store call, in order

    @property
    def per_event(self) -> float:
        return self.wru / self.events if self.events else math.nan

    def growth(self) -> tuple[float, float, float]:
        """Mean store call time over the first and the last tenth of the batches, and their ratio: a
        long message's writes must not slow down as it grows (moto reads a Query's whole partition,
        so anything piling up in the pages' partition shows here)."""
        tenth = max(len(self.batch_ms) // 10, 1)
        first = sum(self.batch_ms[:tenth]) / tenth
        last = sum(self.batch_ms[-tenth:]) / tenth
        return first, last, last / first if first else math.nan


def events_for(message_id: str, count: int, meta_bytes: int, start: int = 0) -> list[Any]:
    from mars_common.events import parse_event

    base = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    names = ("MESSAGE_CREATED", "MESSAGE_QUEUED", "MESSAGE_SENT", "MESSAGE_DELIVERED", "MESSAGE_ACKED")
    meta = {"detail": "x" * meta_bytes} if meta_bytes else None
    return [parse_event({"app_id": "bench", "message_id": message_id, "event": names[i % 5],
                         "created_at": (base + timedelta(milliseconds=i)).isoformat(),
                         **({"meta": meta} if meta else {})})
            for i in range(start, start + count)]


@contextmanager
def stack(stock_moto: bool = False) -> Iterator[tuple[str, str, Callable[[], Any]]]:
    """template.yaml's tables in moto, the way the unit tests build them, with the local stack's moto
    patches (samlocal.emulator.patches) unless `stock_moto`: the store call times are then the local
    stack's. Billing (WRU/RRU) is the same either way."""
    import boto3
    from moto import mock_aws

    from samlocal.emulator import patches as moto_patches

    if stock_moto:
        moto_patches.revert()
    else:
        moto_patches.apply()

    from samlocal.resources import provision
    from samlocal.template import Stack, load

    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1"}.items():
        os.environ[key] = value
    os.environ.pop("AWS_ENDPOINT_URL", None)
    with mock_aws():
        spec = Stack(load(ROOT / "template.yaml"), root=ROOT, name="wru")
        provision(spec, lambda service: boto3.client(service, region_name="us-east-1"))  # type: ignore[call-overload]
        yield spec.ref("MessagesTable"), spec.ref("EventsTable"), lambda: boto3.client("dynamodb", region_name="us-east-1")


def run_scenario(name: str, model: str, batches: list[list[Any]], messages: str, events_table: str,
                 raw: Any, events: int) -> Row:
    from mars_common import aws
    from mars_common.store import item_size, upsert_message

    aws.table.cache_clear()
    meter = Meter(raw, {messages})
    meter.attach(aws.table(messages).meta.client)
    if events_table:
        meter.attach(aws.table(events_table).meta.client)
    stored = 0
    note = ""
    batch_ms: list[float] = []
    inline: dict[str, int] = {}  # the old model's item size, to stop where DynamoDB would refuse it
    for batch in batches:
        first = batch[0]
        if not events_table:
            grown = inline.get(first.message_id, 0) + sum(
                item_size({"e:" + e.event_id: {"event": e.event, "created_at": e.created_at,
                                               "received_at": e.received_at, **({"meta": e.meta} if e.meta else {})}})
                for e in batch)
            if grown + 100 > MAX_ITEM_BYTES:
                note = f"fails at event {stored + 1:,}: the item passes 400 KB"
                break
            inline[first.message_id] = grown
        started = time.perf_counter()
        upsert_message(messages, first.app_id, first.message_id, batch, 30, events_table)
        batch_ms.append((time.perf_counter() - started) * 1000)
        stored += len(batch)
    return Row(name, model, stored, meter.writes, meter.wru, meter.gsi_wru, meter.rru, note, batch_ms)


def measure(meta_bytes: int, messages_count: int, long_events: int, stock_moto: bool = False) -> list[Row]:
    rows: list[Row] = []
    for model in ("old", "new"):
        with stack(stock_moto) as (messages, events_table, raw_client):
            raw = raw_client()
            table = events_table if model == "new" else ""
            one_batch = [events_for(f"i-{m}", 5, meta_bytes) for m in range(messages_count)]
            rows.append(run_scenario("(i) 5-event messages, one batch", model, one_batch, messages, table, raw,
                                     5 * messages_count))
            singles = [[e] for m in range(messages_count) for e in events_for(f"ii-{m}", 5, meta_bytes)]
            rows.append(run_scenario("(ii) 5-event messages, 1 event a batch", model, singles, messages, table, raw,
                                     5 * messages_count))
            long = events_for("iii", long_events, meta_bytes)
            batches = [long[i:i + 10] for i in range(0, long_events, 10)]
            rows.append(run_scenario(f"(iii) one {long_events:,}-event message, 10 a batch", model, batches, messages,
                                     table, raw, long_events))
    return rows


def render(rows: list[Row], meta_bytes: int, stock_moto: bool = False) -> str:
    lines = [f"events with {meta_bytes}-byte meta; WRU as DynamoDB bills item writes (1 KB units, max of before/after)",
             "",
             f"{'scenario':44} {'model':5} {'events':>7} {'writes':>7} {'WRU':>9} {'WRU/event':>9} "
             f"{'+GSI/event':>10} {'RRU/event':>9}  note"]
    for r in rows:
        lines.append(f"{r.scenario:44} {r.model:5} {r.events:7,} {r.writes:7,} {r.wru:9,.0f} {r.per_event:9.2f} "
                     f"{r.gsi_wru / r.events:10.2f} {r.rru / r.events:9.2f}  {r.note}")
    for model in ("old", "new"):
        (i,) = [r for r in rows if r.model == model and r.scenario.startswith("(i) ")]
        (iii,) = [r for r in rows if r.model == model and r.scenario.startswith("(iii)")]
        tail = f" (only the first {iii.events:,} events: then it fails)" if iii.note else ""
        lines.append(f"{model}: (iii)/(i) = {iii.per_event / i.per_event:.2f} WRU per event{tail}")
    (long,) = [r for r in rows if r.model == "new" and r.scenario.startswith("(iii)")]
    first, last, ratio = long.growth()
    lines.append(f"new: (iii) store call, first tenth {first:.1f} ms, last tenth {last:.1f} ms: last/first = {ratio:.2f} "
                 "(in-process moto" + (", stock" if stock_moto else " with the local stack's patches")
                 + ", metering included; goal about 1: a write costs the same however long the message)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wru", description=__doc__.splitlines()[0])
    parser.add_argument("--meta-bytes", type=int, default=150, help="size of each event's meta value (default 150)")
    parser.add_argument("--messages", type=int, default=200, help="messages in (i) and (ii) (default 200)")
    parser.add_argument("--long-events", type=int, default=10_000, help="events of the message in (iii)")
    parser.add_argument("--stock-moto", action="store_true",
                        help="without the local stack's moto patches (the store call times of stock moto)")
    parser.add_argument("--json", action="store_true", help="the rows as JSON")
    args = parser.parse_args()
    rows = measure(args.meta_bytes, args.messages, args.long_events, args.stock_moto)
    if args.json:
        print(json.dumps([{**{k: v for k, v in r.__dict__.items() if k != "batch_ms"}, "wru_per_event": r.per_event,
                           "store_ms_first_last_ratio": r.growth()} for r in rows], indent=2))
    else:
        print(render(rows, args.meta_bytes, args.stock_moto))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
