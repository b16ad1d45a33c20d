"""DynamoDB TransactWriteItems on a growing table: stock moto 5.2.5 vs the emulator's patch.

    python -m bench.transactions [--sizes 0,2000,5000] [--calls 40]

Starts a patched and a stock emulator (``start_emulator``, as the stack runs them) and, on each, a
streamed table filled to each size in turn; then times ``--calls`` two-item transactions (an ``ADD`` on a
counter and a ``Put`` of a new item, the funnel's shape) over HTTP. Prints the median and p90 ms per
transaction at each size, the ratio stock / patched, and the machine. Stock moto deep-copies every table a
transaction names (docs/LOCAL.md, fix 10), so its time grows with the table; prints, never asserts.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,2000,5000")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    patched, stock = measure(True, sizes, args.calls), measure(False, sizes, args.calls)
    if args.json:
        print(json.dumps({"machine": machine(), "patched": patched, "stock": stock}))
        return 0
    print(f"TransactWriteItems of 2 items, {args.calls} calls per size, ms (median / p90)")
    print(f"{'items in the table':>20} {'stock':>16} {'patched':>16} {'stock ÷ patched':>16}")
    for size in sizes:
        (sm, s9), (pm, p9) = stock[size], patched[size]
        print(f"{size:>20,} {sm:>7.1f} / {s9:>6.1f} {pm:>7.1f} / {p9:>6.1f} {sm / pm:>16.1f}")
    m = machine()
    print(f"machine: {m['cores']} cores, {m['cpu']}, {m['platform']}, Python {m['python']}, moto {m['moto']}, "
          f"load {m['loadavg']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
