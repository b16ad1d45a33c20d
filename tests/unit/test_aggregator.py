"""AggregatorFunction with events/aggregator_sqs_batch.json; the store is invoked in-process through a
fake `lambda` client, so the synchronous handoff (and each of its failure modes) is exercised end to end."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from mars_common import aws
from mars_common.config import settings
from mars_common.events import Event
from mars_common.sharding import dedup_id, message_key
from mars_common.store import item_events

from tests.conftest import event_file, load_function


class FakeLambda:
    """`client("lambda")` whose invoke runs StoreFunction's handler here, shaped like boto3's answer."""

    def __init__(self, store: Any, context: Any) -> None:
        self.store, self.context = store, context
        self.calls: list[dict[str, Any]] = []
        self.mode = "ok"

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        payload = json.loads(Payload)
        self.calls.append({"FunctionName": FunctionName, "InvocationType": InvocationType, "payload": payload})
        if self.mode == "raise":
            raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}, "Invoke")
        if self.mode == "unhandled":
            body = {"errorMessage": "Task timed out after 15.00 seconds", "errorType": "Sandbox.Timedout"}
            return {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "$LATEST",
                    "Payload": io.BytesIO(json.dumps(body).encode())}
        if self.mode == "garbage":
            return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": io.BytesIO(b'{"results": []}')}
        result = self.store.lambda_handler(payload, self.context)
        return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": io.BytesIO(json.dumps(result).encode())}


@pytest.fixture
def pipeline(mocked_stack: Any, lambda_context: Any) -> Iterator[tuple[Any, Any, FakeLambda]]:
    aggregator = load_function("aggregator")
    store = load_function("store")
    fake = FakeLambda(store, lambda_context)
    real_client = aws.client
    with pytest.MonkeyPatch.context() as mp:  # undone before mocked_stack clears aws.client's cache
        mp.setattr(aws, "client", lambda service: fake if service == "lambda" else real_client(service))
        yield aggregator, store, fake


@pytest.fixture
def batch() -> dict[str, Any]:
    return event_file("aggregator_sqs_batch.json")


def group_of(record: dict[str, Any]) -> str:
    return record["attributes"]["MessageGroupId"]


def body_of(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(record["body"])


def failures(result: dict[str, Any]) -> set[str]:
    assert set(result) == {"batchItemFailures"}
    ids = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    assert len(ids) == len(set(ids))
    return set(ids)


def stored(app_id: str, message_id: str) -> list[str]:
    item = aws.table(settings().messages_table).get_item(
        Key={"app_id": app_id, "message_id": message_id}, ConsistentRead=True).get("Item")
    return [] if item is None else [e["event_id"] for e in item_events(item)]


def poison(template: dict[str, Any], body: str, n: int) -> dict[str, Any]:
    record = copy.deepcopy(template)
    record["messageId"] = f"00000000-0000-4000-8000-00000000000{n}"
    record["body"] = body
    record["md5OfBody"] = hashlib.md5(body.encode()).hexdigest()
    record["attributes"]["MessageDeduplicationId"] = hashlib.sha256(body.encode()).hexdigest()
    return record


# --- the event file is what Lambda delivers -----------------------------------------------------

def test_batch_file_is_a_real_sqs_fifo_batch(batch: dict[str, Any]) -> None:
    records = batch["Records"]
    assert 2 <= len(records) <= 10
    assert len({group_of(r) for r in records}) >= 2
    assert len({r["eventSourceARN"] for r in records}) == 1  # one mapping, one queue
    assert records[0]["eventSourceARN"].endswith(".fifo")
    for r in records:
        assert r["eventSource"] == "aws:sqs" and r["awsRegion"] == "us-east-1"
        assert {"messageId", "receiptHandle", "body", "attributes", "messageAttributes", "md5OfBody"} <= set(r)
        assert {"MessageGroupId", "MessageDeduplicationId", "SequenceNumber", "ApproximateReceiveCount",
                "SentTimestamp"} <= set(r["attributes"])
        assert r["md5OfBody"] == hashlib.md5(r["body"].encode()).hexdigest()
        ev = Event.from_json(r["body"])
        assert json.loads(ev.to_json()) == body_of(r)  # exactly what the API enqueues
        assert group_of(r) == message_key(ev.app_id, ev.message_id)
        assert r["attributes"]["MessageDeduplicationId"] == dedup_id(ev.app_id, ev.message_id, ev.event_id)
    sequence = [int(r["attributes"]["SequenceNumber"]) for r in records]
    assert sequence == sorted(sequence)


# --- the handoff --------------------------------------------------------------------------------

def test_a_stored_batch_has_no_failures(pipeline: Any, batch: dict[str, Any], lambda_context: Any) -> None:
    aggregator, _, fake = pipeline
    assert aggregator.lambda_handler(batch, lambda_context) == {"batchItemFailures": []}
    assert len(fake.calls) == 1  # one store call per batch
    call = fake.calls[0]
    assert call["FunctionName"] == settings().store_function and call["InvocationType"] == "RequestResponse"
    assert call["payload"] == event_file("store_messages.json")  # grouped by message, in delivery order
    for r in batch["Records"]:
        ev = body_of(r)
        assert ev["event_id"] in stored(ev["app_id"], ev["message_id"])
    counts = {(m["app_id"], m["message_id"]): len(m["events"]) for m in call["payload"]["messages"]}
    assert all(len(stored(a, m)) == n for (a, m), n in counts.items())


def test_a_redelivered_batch_doubles_nothing(pipeline: Any, batch: dict[str, Any], lambda_context: Any) -> None:
    aggregator, _, _ = pipeline
    aggregator.lambda_handler(batch, lambda_context)
    again = copy.deepcopy(batch)
    for r in again["Records"]:
        r["attributes"]["ApproximateReceiveCount"] = "2"
    assert aggregator.lambda_handler(again, lambda_context) == {"batchItemFailures": []}
    ids: dict[tuple[str, str], list[str]] = {}
    for r in batch["Records"]:
        ev = body_of(r)
        ids.setdefault((ev["app_id"], ev["message_id"]), []).append(ev["event_id"])
    for (app_id, message_id), want in ids.items():
        assert sorted(stored(app_id, message_id)) == sorted(want)


def test_one_failed_message_fails_exactly_its_group(pipeline: Any, batch: dict[str, Any], lambda_context: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    aggregator, store, _ = pipeline
    victim = body_of(batch["Records"][1])  # checkout/order-1016
    real = store.upsert_message

    def flaky(table: str, app_id: str, message_id: str, events: Any, days: int, *more: Any) -> Any:
        if (app_id, message_id) == (victim["app_id"], victim["message_id"]):
            raise RuntimeError("throttled")
        return real(table, app_id, message_id, events, days, *more)

    monkeypatch.setattr(store, "upsert_message", flaky)
    result = aggregator.lambda_handler(batch, lambda_context)
    victim_group = message_key(victim["app_id"], victim["message_id"])
    assert failures(result) == {r["messageId"] for r in batch["Records"] if group_of(r) == victim_group}
    assert stored(victim["app_id"], victim["message_id"]) == []
    for r in batch["Records"]:
        if group_of(r) != victim_group:
            assert body_of(r)["event_id"] in stored(body_of(r)["app_id"], body_of(r)["message_id"])


@pytest.mark.parametrize("mode", ["unhandled", "raise", "garbage"])
def test_a_failed_store_call_fails_every_record(pipeline: Any, batch: dict[str, Any], lambda_context: Any,
                                                mode: str) -> None:
    aggregator, _, fake = pipeline
    fake.mode = mode
    result = aggregator.lambda_handler(batch, lambda_context)
    assert failures(result) == {r["messageId"] for r in batch["Records"]}
    assert len(fake.calls) == 1


# --- poison records (skip_group_on_error) -------------------------------------------------------

@pytest.mark.parametrize("body", [
    "{not json",
    '{"app_id": "checkout", "message_id": "order-1001", "created_at": "2023-11-28T09:15:42Z"}',  # no event
    '{"app_id": "checkout", "message_id": "order-1001", "event": "X", "created_at": "soon"}',
    '["a", "list"]',
    "null",
])
def test_a_poison_record_fails_with_the_rest_of_its_group(pipeline: Any, batch: dict[str, Any],
                                                          lambda_context: Any, body: str) -> None:
    aggregator, _, fake = pipeline
    records = batch["Records"]
    group = group_of(records[0])  # checkout/order-1001: records 0, 2 and 4
    bad = poison(records[0], body, 1)
    records.insert(2, bad)  # after the group's first record, before its second
    result = aggregator.lambda_handler(batch, lambda_context)
    later = {r["messageId"] for r in records[3:] if group_of(r) == group}
    assert len(later) == 2
    assert failures(result) == {bad["messageId"]} | later
    # the group's earlier record and every other group are stored
    first = body_of(records[0])
    assert first["event_id"] in stored(first["app_id"], first["message_id"])
    for r in records:
        if group_of(r) != group:
            assert body_of(r)["event_id"] in stored(body_of(r)["app_id"], body_of(r)["message_id"])
    assert len(fake.calls) == 1


def test_poison_in_two_groups(pipeline: Any, batch: dict[str, Any], lambda_context: Any) -> None:
    aggregator, _, _ = pipeline
    records = batch["Records"]
    billing = group_of(records[3])
    bad_first = poison(records[1], "{", 1)  # order-1016's group, before all its records
    bad_last = poison(records[6], "{", 2)  # invoice-21's group, after all its records
    records.insert(0, bad_first)
    records.append(bad_last)
    result = aggregator.lambda_handler(batch, lambda_context)
    order_1016 = {r["messageId"] for r in records if group_of(r) == group_of(bad_first)}
    assert failures(result) == order_1016 | {bad_last["messageId"]}
    invoice = [body_of(r) for r in records if group_of(r) == billing and r is not bad_last]
    assert sorted(stored("billing", "invoice-21")) == sorted(e["event_id"] for e in invoice)


def test_an_all_poison_batch_never_calls_the_store(pipeline: Any, batch: dict[str, Any],
                                                   lambda_context: Any) -> None:
    aggregator, _, fake = pipeline
    bad = [poison(r, "not json", i) for i, r in enumerate(batch["Records"][:3])]
    result = aggregator.lambda_handler({"Records": bad}, lambda_context)
    assert failures(result) == {r["messageId"] for r in bad}
    assert fake.calls == []


def test_an_empty_batch(pipeline: Any, lambda_context: Any) -> None:
    aggregator, _, fake = pipeline
    assert aggregator.lambda_handler({"Records": []}, lambda_context) == {"batchItemFailures": []}
    assert fake.calls == []
