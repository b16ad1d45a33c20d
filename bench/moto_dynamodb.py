"""moto's DynamoDB, stock 5.2.5 vs the emulator's patches (docs/LOCAL.md, fixes 9, 10 and 11).

    python -m bench.moto_dynamodb [--sizes 0,2000,5000] [--calls 40] [--updates 200] [--queries 40]

1. Transactions: starts a patched and a stock emulator (``start_emulator``, as the stack runs them) and,
   on each, a streamed table filled to each size in turn; then times ``--calls`` two-item transactions
   (an ``ADD`` on a counter and a ``Put`` of a new item, the funnel's shape) over HTTP: median and p90 ms
   per transaction at each size. Stock moto deep-copies every table a transaction names, so its time
   grows with the table.
2. Update expressions: in this process (moto's ``mock_aws``, all patches installed), the CPU time of
   the store's upsert shape — an ``UpdateItem`` of 10 events, 13 SET clauses, a REMOVE and a condition,
   the request's parse included — with the ``dynamodb.update_expressions`` patch and without it,
   alternating rounds of ``--updates`` calls each: median ms of CPU per call.
3. A page Query: in this process, a message's partition of 400 pages of 50 events and 2,000 markers
   (the store's EventsTable shape), and the store's Query for the page below a key (``Limit=1``,
   backwards, ``BETWEEN``), with the ``dynamodb.query_partition`` patch and without it, alternating
   rounds of ``--queries`` calls: median ms of CPU per Query.

Prints the figures, the ratios stock / patched and the machine; asserts nothing about the times (a
Query that answers another page than the one asked for stops it with an error).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.common import client, machine, start_emulator


def _table(ddb: Any) -> str:
    name = f"tx-{uuid.uuid4().hex[:8]}"
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    return name


def measure(patched: bool, sizes: list[int], calls: int) -> dict[int, tuple[float, float]]:
    emulator = start_emulator(patched=patched)
    try:
        ddb = client("dynamodb", emulator.dynamodb_endpoint)
        name, filled, out = _table(ddb), 0, {}
        for size in sizes:
            for n in range(filled, size):  # ~200-byte items, like a funnel marker
                ddb.put_item(TableName=name, Item={"pk": {"S": f"m{n}"}, "t": {"M": {"PAID": {"S": "x" * 150}}}})
            filled = max(filled, size)
            times = []
            for n in range(calls):
                start = time.perf_counter()
                ddb.transact_write_items(TransactItems=[
                    {"Update": {"TableName": name, "Key": {"pk": {"S": f"counter{n % 4}"}},
                                "UpdateExpression": "ADD r :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}},
                    {"Put": {"TableName": name, "Item": {"pk": {"S": f"new-{size}-{n}"}}}}])
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            out[size] = (times[len(times) // 2], times[int(len(times) * 0.9)])
            filled += calls + 4
        return out
    finally:
        emulator.stop()


def _store_update(backend: Any, table: str, message_id: str) -> float:
    """One UpdateItem shaped as mars_common.store's upsert of 10 events; CPU seconds it took."""
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]

    names = {"#u": "updated_at", "#x": "expires_at", "#s": "stuck_at", "#p": "paged", "#b": "inline_bytes"}
    values: dict[str, Any] = {":u": {"S": "2026-11-30T00:00:00Z"}, ":x": {"N": "1"}, ":b0": {"N": "0"}, ":b": {"N": "10"}}
    sets = ["#u = :u", "#x = :x", "#b = if_not_exists(#b, :b0) + :b"]
    for i in range(10):
        names[f"#e{i}"] = f"e#{uuid.uuid4().hex}"
        values[f":e{i}"] = {"M": {"event": {"S": "PAID"}, "created_at": {"S": "2026-11-30T00:00:00Z"}}}
        sets.append(f"#e{i} = if_not_exists(#e{i}, :e{i})")
    expression = "SET " + ", ".join(sets) + " REMOVE #s"
    start = time.process_time()
    UpdateExpressionParser.make(expression)  # the request's own parse (moto's responses.py) before the backend's
    backend.update_item(table, {"app_id": {"S": "a"}, "message_id": {"S": message_id}}, expression, names, values,
                        condition_expression="attribute_not_exists(#p)")
    return time.process_time() - start


def _alternating(patch: Any, rounds: int, timed: Callable[[str, int], list[float]]) -> dict[str, list[float]]:
    """Rounds of ``timed(label, round)`` (CPU seconds per call) with ``patch`` installed and with moto's own
    code in its place, alternating: the median ms of each round, per label."""
    from samlocal.emulator import patches

    out: dict[str, list[float]] = {"patched": [], "stock": []}
    for n in range(rounds):
        for label in ("patched", "stock"):
            with patches.installed(patch, stock=label == "stock"):
                times = sorted(timed(label, n))
            out[label].append(times[len(times) // 2] * 1000)
    return out


def measure_updates(calls: int, rounds: int = 3) -> dict[str, list[float]]:
    import boto3
    from moto import mock_aws
    from moto.dynamodb.models import dynamodb_backends

    from samlocal.emulator import patches
    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    patches.apply()
    with mock_aws():
        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName="messages", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("app_id", "message_id")],
            KeySchema=[{"AttributeName": "app_id", "KeyType": "HASH"}, {"AttributeName": "message_id", "KeyType": "RANGE"}])
        backend = dynamodb_backends["123456789012"]["us-east-1"]
        # 4 updates per message: items of 40 events (~4 KB), the store's inline limit
        return _alternating(dynamodb_patches.UPDATE_EXPRESSIONS, rounds, lambda label, n: [
            _store_update(backend, "messages", f"{label}-{n}-{i // 4}") for i in range(calls)])


def measure_queries(calls: int, rounds: int = 3) -> dict[str, list[float]]:
    import boto3
    from moto import mock_aws

    from samlocal.emulator import patches
    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    patches.apply()
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName="events", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk")],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
        page = {"M": {f"e{i}": {"M": {"c": {"S": "2026-11-30T10:00:00.000000Z"}, "e": {"S": "SHIPPED"}, "q": {"N": str(i)}}}
                      for i in range(50)}}
        for n in range(400):
            ddb.put_item(TableName="events", Item={"pk": {"S": "shop#m"}, "sk": {"S": f"p#{n:05d}"}, "ev": page})
        for n in range(2000):
            ddb.put_item(TableName="events", Item={"pk": {"S": "shop#m"}, "sk": {"S": f"i#{n:05d}"}, "c": {"S": "x"}})
        query = {"TableName": "events", "KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b",
                 "ScanIndexForward": False, "Limit": 1,
                 "ExpressionAttributeValues": {":p": {"S": "shop#m"}, ":a": {"S": "p#"}, ":b": {"S": "p#00200#~"}}}

        def timed(label: str, _: int) -> list[float]:
            times = []
            for _ in range(calls):
                start = time.process_time()
                got = ddb.query(**query)["Items"]
                times.append(time.process_time() - start)
                if [i["sk"]["S"] for i in got] != ["p#00200"]:  # both must answer the same page
                    raise RuntimeError(f"{label} moto answered {got!r}, not the page p#00200")
            return times

        return _alternating(dynamodb_patches.QUERY_PARTITION, rounds, timed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,2000,5000")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    patched, stock = measure(True, sizes, args.calls), measure(False, sizes, args.calls)
    updates = measure_updates(args.updates)
    queries = measure_queries(args.queries)
    if args.json:
        print(json.dumps({"machine": machine(), "patched": patched, "stock": stock, "updates": updates,
                          "queries": queries}))
        return 0
    print(f"TransactWriteItems of 2 items, {args.calls} calls per size, ms (median / p90)")
    print(f"{'items in the table':>20} {'stock':>16} {'patched':>16} {'stock ÷ patched':>16}")
    for size in sizes:
        (sm, s9), (pm, p9) = stock[size], patched[size]
        print(f"{size:>20,} {sm:>7.1f} / {s9:>6.1f} {pm:>7.1f} / {p9:>6.1f} {sm / pm:>16.1f}")
    print(f"\nCPU per UpdateItem shaped as the store's upsert of 10 events, ms (median of {args.updates}, per round)")
    for label in ("stock", "patched"):
        print(f"{label:>20} " + "  ".join(f"{x:6.2f}" for x in updates[label]))
    ratios = [s_ / p_ for s_, p_ in zip(updates["stock"], updates["patched"])]
    print(f"{'stock ÷ patched':>20} " + "  ".join(f"{x:6.2f}" for x in ratios))
    print(f"\nCPU per Query for the page below a key (400 pages, 2,000 markers), ms (median of {args.queries}, per round)")
    for label in ("stock", "patched"):
        print(f"{label:>20} " + "  ".join(f"{x:6.2f}" for x in queries[label]))
    ratios = [s_ / p_ for s_, p_ in zip(queries["stock"], queries["patched"])]
    print(f"{'stock ÷ patched':>20} " + "  ".join(f"{x:6.2f}" for x in ratios))
    m = machine()
    print(f"machine: {m['cores']} cores, {m['cpu']}, {m['platform']}, Python {m['python']}, moto {m['moto']}, "
          f"load {m['loadavg']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
