"""Search filters and export on the local stack (`mars up`), checked against a ground truth of 200 generated
messages: some lack steps, some carry meta, some fail (a failure step fires an alert). Independent of the
funnel's ground truth (issue 14 part 6)."""

from __future__ import annotations

import csv
import io
import json
import random
import time
import uuid
from typing import Any

import requests

from mars.client import MarsClient

from .conftest import RunningStack

STEPS = ["CREATED", "PAID", "SHIPPED", "DELIVERED"]
N = 200


def _get(stack: RunningStack, params: dict[str, str]) -> dict[str, Any]:
    resp = requests.get(stack.url("/api/messages"), params=params, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()


def _search(stack: RunningStack, app: str, filters: dict[str, str], limit: int = 37) -> list[str]:
    """Every page, following the cursor; each page's size within the limit."""
    out: list[str] = []
    params = {"app_id": app, "limit": str(limit), **filters}
    for _ in range(200):
        body = _get(stack, params)
        assert len(body["items"]) <= limit
        out += [i["message_id"] for i in body["items"]]
        if body["cursor"] is None:
            return out
        params["cursor"] = body["cursor"]
    raise AssertionError("the cursor never ended")


def test_search_and_export_match_the_ground_truth(mars: RunningStack) -> None:
    app = f"search-{uuid.uuid4().hex[:10]}"
    rng = random.Random(20261130)
    resp = requests.put(mars.url(f"/api/apps/{app}/lifecycle"), timeout=30,
                        json={"events": STEPS, "sla_seconds": 86400, "failure": ["FAILED"]})
    assert resp.status_code == 200, resp.text
    truth: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for i in range(N):
        mid = f"order-{i:04d}"
        steps = STEPS[:rng.randint(1, len(STEPS))]
        if rng.random() < 0.15:
            steps = [*steps, "FAILED"]
        carrier = rng.choice(["dhl", "ups", None])
        truth[mid] = {"steps": set(steps), "carrier": carrier, "failed": "FAILED" in steps}
        for n, step in enumerate(steps):
            meta = {"carrier": carrier} if carrier and step == "SHIPPED" else {"n": str(n)}
            events.append({"app_id": app, "message_id": mid, "event": step, "meta": meta,
                           "created_at": f"2026-11-30T10:{i // 60 % 60:02d}:{i % 60:02d}.{n:06d}Z"})
    client = MarsClient.http(mars.api)
    client.send_many(events)
    deadline = time.monotonic() + 300  # a shared, busy machine: the pipeline may take minutes for 200 messages
    progress: list[int] = []
    while time.monotonic() < deadline:  # every event stored (the export counts them) and every alert written
        lines = "".join(client.iter_export(app, events=True)).splitlines()
        firing = set(_search(mars, app, {"alert": "firing"}, limit=100))
        progress.append(len(lines))
        if len(lines) == len(events) and firing == {m for m, t in truth.items() if t["failed"]}:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"stored {len(lines)} of {len(events)} events (progress {progress[::10]}); firing {len(firing)}")

    ids = set(truth)
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({"event": "SHIPPED"}, {m for m in ids if "SHIPPED" in truth[m]["steps"]}),
        ({"missing": "DELIVERED"}, {m for m in ids if "DELIVERED" not in truth[m]["steps"]}),
        ({"meta.carrier": "dhl"}, {m for m in ids if truth[m]["carrier"] == "dhl" and "SHIPPED" in truth[m]["steps"]}),
        ({"alert": "firing"}, {m for m in ids if truth[m]["failed"]}),
        ({"alert": "firing", "missing": "SHIPPED"}, {m for m in ids if truth[m]["failed"]
                                                     and "SHIPPED" not in truth[m]["steps"]}),
        ({"meta.carrier": "ups", "event": "DELIVERED"},
         {m for m in ids if truth[m]["carrier"] == "ups" and "DELIVERED" in truth[m]["steps"]}),
    ]
    for filters, want in cases:
        got = _search(mars, app, filters)
        assert len(got) == len(set(got)), filters  # no message twice across pages
        assert set(got) == want, filters

    # from/to: the last update; everything was written before `now`, nothing after it
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    assert set(_search(mars, app, {"to": now})) == ids
    assert _search(mars, app, {"from": now}) == []

    # export: a line per message with its summary, and the CSV pages concatenate into one file
    rows = [json.loads(line) for line in "".join(client.iter_export(app)).splitlines()]
    assert {r["message_id"] for r in rows} == ids and len(rows) == N
    for r in rows:
        expected_missing = [s for s in STEPS if s not in truth[r["message_id"]]["steps"]]
        assert r["missing"] == expected_missing
        assert r["status"] == ("failed" if truth[r["message_id"]]["failed"] else
                               "complete" if not expected_missing else "in_progress")
    table = list(csv.DictReader(io.StringIO("".join(client.iter_export(app, fmt="csv", events=True)))))
    assert len(table) == len(events)
    assert {(r["message_id"], r["event"]) for r in table} == {(m, s) for m, t in truth.items() for s in t["steps"]}
    shipped = {r["message_id"]: json.loads(r["meta"]).get("carrier") for r in table if r["event"] == "SHIPPED"}
    assert shipped == {m: t["carrier"] for m, t in truth.items() if "SHIPPED" in t["steps"]}
