"""Correctness of samlocal.emulator.patches and of the emulator's AWS/SQS metrics thread.

A patched moto server runs in this process (``samlocal.emulator.serve``); a stock one
(``python -m samlocal.emulator --no-patches``) runs in a subprocess to show the
FIFO redelivery bug the patch fixes.  Timing is not tested here (see
``bench/sqs_depth.py``).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from moto.sqs.models import Queue, SQSBackend, sqs_backends

from samlocal.emulator import faults, metrics, patches, ttl
from samlocal.emulator import server as emulator_mod
from samlocal.emulator.patches import dynamodbstreams
from samlocal.emulator.patches import sqs as sqs_patches

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"


def _client(service: str, url: str, region: str = REGION) -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def server() -> Iterator[emulator_mod.Emulator]:
    emu = emulator_mod.serve("127.0.0.1", 0, patched=True, metrics_interval=0.2)
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def sqs(server: emulator_mod.Emulator) -> Any:
    return _client("sqs", server.endpoint_url)


@pytest.fixture(scope="module")
def unpatched_url() -> Iterator[str]:
    """Stock moto in a subprocess, started through the launcher's CLI."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "samlocal.emulator", "--port", "0", "--no-patches", "--metrics-interval", "0"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = json.loads(proc.stderr.readline())
    assert line["level"] == "INFO" and line["msg"] == "emulator listening"
    assert line["host"] == "127.0.0.1" and line["patched"] is False
    yield f"http://127.0.0.1:{line['port']}"
    proc.terminate()
    assert proc.wait(timeout=10) == 0  # clean exit on SIGTERM
    proc.stderr.close()


def _name(prefix: str, fifo: bool = False) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}" + (".fifo" if fifo else "")


def _fifo(sqs: Any, **attributes: str) -> str:
    attrs = {"FifoQueue": "true", **attributes}
    return sqs.create_queue(QueueName=_name("t", fifo=True), Attributes=attrs)["QueueUrl"]


def _standard(sqs: Any, **attributes: str) -> str:
    return sqs.create_queue(QueueName=_name("t"), Attributes=attributes)["QueueUrl"]


def _model(queue_url: str, region: str = REGION) -> Queue:
    return sqs_backends[ACCOUNT][region].queues[queue_url.rsplit("/", 1)[1]]


def _counts(sqs: Any, url: str) -> tuple[int, int, int]:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return tuple(int(attrs[n]) for n in names)  # type: ignore[return-value]


def _receive(sqs: Any, url: str, n: int = 10, **kwargs: Any) -> list[dict[str, Any]]:
    return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=n, **kwargs).get("Messages", [])


def _bodies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["Body"] for m in messages]


def _send_group(sqs: Any, url: str, group: str, bodies: list[str]) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=uuid.uuid4().hex)


def _wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# --------------------------------------------------------------------------
# apply()
# --------------------------------------------------------------------------


def test_apply_is_idempotent(server: emulator_mod.Emulator) -> None:
    assert patches.is_applied()
    receive, originals = SQSBackend.receive_message, dict(patches.ORIGINALS)
    patches.apply()
    patches.apply()
    assert SQSBackend.receive_message is receive
    assert patches.ORIGINALS == originals
    assert originals["SQSBackend.receive_message"] is not receive  # moto's own is kept


# --------------------------------------------------------------------------
# (a, b) FIFO deduplication
# --------------------------------------------------------------------------


def test_fifo_duplicate_within_window_is_accepted_but_not_enqueued(sqs: Any) -> None:
    url = _fifo(sqs)
    first = sqs.send_message(QueueUrl=url, MessageBody="a", MessageGroupId="g", MessageDeduplicationId="d1")
    dup = sqs.send_message(QueueUrl=url, MessageBody="b", MessageGroupId="g", MessageDeduplicationId="d1")
    assert first["MessageId"] and dup["MessageId"]  # both calls succeed
    sqs.send_message(QueueUrl=url, MessageBody="c", MessageGroupId="g", MessageDeduplicationId="d2")
    assert _counts(sqs, url)[0] == 2
    assert _bodies(_receive(sqs, url)) == ["a", "c"]


def test_fifo_duplicate_of_deleted_message_is_not_enqueued(sqs: Any) -> None:
    url = _fifo(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="a", MessageGroupId="g", MessageDeduplicationId="d1")
    (msg,) = _receive(sqs, url)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
    assert _counts(sqs, url) == (0, 0, 0)
    # Stock moto only compares against messages still in the queue and enqueues this.
    sqs.send_message(QueueUrl=url, MessageBody="a-again", MessageGroupId="g", MessageDeduplicationId="d1")
    assert _counts(sqs, url) == (0, 0, 0)
    assert _receive(sqs, url) == []
    sqs.send_message(QueueUrl=url, MessageBody="new", MessageGroupId="g", MessageDeduplicationId="d2")
    assert _bodies(_receive(sqs, url)) == ["new"]


def test_fifo_dedup_window_expires(sqs: Any) -> None:
    url = _fifo(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="a", MessageGroupId="g", MessageDeduplicationId="old")
    index = sqs_patches._state(_model(url)).dedup_first_sent
    index["old"] -= sqs_patches.dedup_window_ms() + 1  # pretend it was sent 5 min ago
    sqs.send_message(QueueUrl=url, MessageBody="b", MessageGroupId="g", MessageDeduplicationId="new")
    assert "old" not in index  # expired entries are dropped lazily
    sqs.send_message(QueueUrl=url, MessageBody="a2", MessageGroupId="g", MessageDeduplicationId="old")
    assert _bodies(_receive(sqs, url)) == ["a", "b", "a2"]


def test_fifo_content_based_dedup(sqs: Any) -> None:
    url = _fifo(sqs, ContentBasedDeduplication="true")
    for body in ["x", "x", "y", "x"]:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g")
    # An explicit id overrides the content hash.
    sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g", MessageDeduplicationId="explicit")
    assert _bodies(_receive(sqs, url)) == ["x", "y", "x"]


def test_every_fifo_message_gets_an_increasing_sequence_number(sqs: Any) -> None:
    """SQS numbers every FIFO message, increasing in the order the queue took them (Lambda's records
    carry it); moto numbered only messages sent with an explicit deduplication id, at random."""
    url = _fifo(sqs, ContentBasedDeduplication="true")
    sent = [sqs.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g")["SequenceNumber"] for i in range(3)]
    sent.append(sqs.send_message(QueueUrl=url, MessageBody="e", MessageGroupId="g",
                                 MessageDeduplicationId="explicit")["SequenceNumber"])
    got = _receive(sqs, url, MessageSystemAttributeNames=["All"])
    numbers = [m["Attributes"]["SequenceNumber"] for m in got]
    assert numbers == sent and all(len(n) == 20 and n.isdigit() for n in numbers)
    assert [int(n) for n in numbers] == sorted(int(n) for n in numbers) and len(set(numbers)) == 4
    assert all(m["Attributes"]["MessageGroupId"] == "g" and m["Attributes"]["MessageDeduplicationId"] for m in got)


def test_fifo_dedup_scope_message_group(sqs: Any) -> None:
    url = _fifo(sqs, DeduplicationScope="messageGroup", FifoThroughputLimit="perMessageGroupId")
    for group, body in [("g1", "a"), ("g2", "b"), ("g1", "dup")]:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId="same")
    assert sorted(_bodies(_receive(sqs, url))) == ["a", "b"]


def test_fifo_send_validation_unchanged(sqs: Any) -> None:
    url = _fifo(sqs)
    with pytest.raises(ClientError) as err:
        sqs.send_message(QueueUrl=url, MessageBody="a", MessageGroupId="g")
    assert err.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:
        sqs.send_message(QueueUrl=url, MessageBody="a", MessageDeduplicationId="d")
    assert err.value.response["Error"]["Code"] == "MissingParameter"


# --------------------------------------------------------------------------
# (d) FIFO redelivery after a visibility timeout
# --------------------------------------------------------------------------


def _timed_out_group_redelivery(sqs: Any) -> list[str]:
    url = _fifo(sqs)
    _send_group(sqs, url, "g", ["m1", "m2", "m3"])
    assert _bodies(_receive(sqs, url, VisibilityTimeout=1)) == ["m1", "m2", "m3"]
    assert _receive(sqs, url) == []  # the group is in flight
    time.sleep(1.2)
    return _bodies(_receive(sqs, url, VisibilityTimeout=30))


def test_timed_out_fifo_group_is_redelivered_in_order(sqs: Any) -> None:
    assert _timed_out_group_redelivery(sqs) == ["m1", "m2", "m3"]


def test_stock_moto_redelivers_timed_out_group_out_of_order(unpatched_url: str) -> None:
    # The bug the patch fixes: stock moto hands out the group's LAST message first.
    assert _timed_out_group_redelivery(_client("sqs", unpatched_url)) == ["m3"]


def test_in_flight_group_is_blocked_other_groups_are_not(sqs: Any) -> None:
    url = _fifo(sqs)
    _send_group(sqs, url, "g1", ["a1", "a2"])
    _send_group(sqs, url, "g2", ["b1", "b2"])
    first = _receive(sqs, url, n=1)
    assert _bodies(first) == ["a1"]
    assert _bodies(_receive(sqs, url)) == ["b1", "b2"]  # nothing more from g1
    assert _receive(sqs, url) == []  # both groups in flight
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
    assert _bodies(_receive(sqs, url)) == ["a2"]


def _receives_beside_a_long_blocked_group(sqs: Any) -> list[list[str]]:
    """A group of 60 messages, one in flight, with 4 other groups' messages sent between its own; then
    receives of 1, 3 and 10 messages and deletes of what they got, until the queue answers nothing."""
    url = _fifo(sqs)
    entries = [(f"long-{n}", "long") if n % 4 else (f"g{n % 3}-{n}", f"g{n % 3}") for n in range(80)]
    entries.insert(0, ("long-head", "long"))
    for start in range(0, len(entries), 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "MessageBody": body, "MessageGroupId": group, "MessageDeduplicationId": body}
            for n, (body, group) in enumerate(entries[start:start + 10])])
    head = _receive(sqs, url, n=1)
    got = [_bodies(head)]
    for n in [1, 3, 10, 10, 2, 10, 10]:
        batch = _receive(sqs, url, n=n)
        got.append(_bodies(batch))
        for m in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=head[0]["ReceiptHandle"])  # the long group's turn
    got += [_bodies(_receive(sqs, url, n=10)) for _ in range(2)]
    return got


def test_a_receive_beside_a_long_blocked_group_answers_as_stock_moto(sqs: Any, unpatched_url: str) -> None:
    """The receive merges the unblocked groups by send order when blocked groups hold most of the queue
    (it walked every blocked message before): the same messages, in the same order, as stock moto."""
    got = _receives_beside_a_long_blocked_group(sqs)
    assert got == _receives_beside_a_long_blocked_group(_client("sqs", unpatched_url))
    assert got[0] == ["long-head"] and got[1] == ["g0-0"] and got[-2][:2] == ["long-1", "long-2"]


@given(st.lists(st.tuples(st.sampled_from(["add", "drop"]), st.integers(0, 40), st.sampled_from(["a", "b", "c", None])),
                max_size=120),
       st.sets(st.sampled_from(["a", "b", "c", "z"])), st.booleans())
@hsettings(max_examples=300, deadline=None)
def test_a_stores_messages_outside_some_groups_are_its_messages_in_send_order_without_them(
        ops: list[tuple[str, int, str | None]], blocked: set[str], ungrouped: bool) -> None:
    """`_MessageStore.live_outside` (the merge by send order, or the walk when it would not pay) is
    exactly `live()` without the blocked groups' messages, after any appends and discards."""
    class Msg:
        def __init__(self, group: str | None) -> None:
            self.group_id, self.all_receipt_handles = group, []

    store = sqs_patches._MessageStore()
    made: dict[int, Any] = {}
    for op, n, group in ops:
        if op == "add":
            made.setdefault(n, Msg(group if ungrouped or group is not None else "a"))
            store.append(made[n])
        elif n in made:
            store.discard(made[n])
    want = [m for m in store.live() if m.group_id not in blocked]
    assert [m for m in store.live_outside(blocked) if m.group_id not in blocked] == want


def test_partially_timed_out_group_stays_blocked(sqs: Any) -> None:
    url = _fifo(sqs)
    _send_group(sqs, url, "g", ["m1", "m2", "m3"])
    msgs = _receive(sqs, url, VisibilityTimeout=30)
    # m2 becomes visible again while m1 and m3 are still in flight.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=msgs[1]["ReceiptHandle"], VisibilityTimeout=0)
    assert _counts(sqs, url)[:2] == (1, 2)
    assert _receive(sqs, url) == []
    # Once every in-flight message of the group is visible again: in order.
    for m in (msgs[0], msgs[2]):
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    assert _bodies(_receive(sqs, url)) == ["m1", "m2", "m3"]


def test_fifo_dead_letter_queue(sqs: Any) -> None:
    dlq_url = _fifo(sqs)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    url = _fifo(sqs, RedrivePolicy=policy)
    _send_group(sqs, url, "g", ["m1", "m2"])
    _send_group(sqs, url, "h", ["n1"])
    # VisibilityTimeout=0: each receive counts, messages stay receivable.
    assert _bodies(_receive(sqs, url, VisibilityTimeout=0)) == ["m1", "m2", "n1"]
    assert _bodies(_receive(sqs, url, VisibilityTimeout=0)) == ["m1", "m2", "n1"]
    assert _receive(sqs, url, VisibilityTimeout=0) == []  # third attempt: all moved
    assert _counts(sqs, url) == (0, 0, 0)
    moved = _receive(sqs, dlq_url, AttributeNames=["All"])
    assert _bodies(moved) == ["m1", "m2", "n1"]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in moved] == ["3", "3", "3"]
    for m in moved:
        sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=m["ReceiptHandle"])
    assert _counts(sqs, dlq_url) == (0, 0, 0)


def test_long_poll_wakes_when_blocking_message_is_deleted(sqs: Any) -> None:
    url = _fifo(sqs)
    _send_group(sqs, url, "g", ["m1", "m2"])
    (m1,) = _receive(sqs, url, n=1)
    got: list[list[str]] = []
    waiter = threading.Thread(target=lambda: got.append(_bodies(_receive(sqs, url, WaitTimeSeconds=5))))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.3)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m1["ReceiptHandle"])
    waiter.join(timeout=10)
    assert got == [["m2"]]
    assert time.monotonic() - started < 2.0


def test_a_wake_ends_a_waiting_long_poll_empty_and_a_message_sent_after_it_stays(
        sqs: Any, server: emulator_mod.Emulator, caplog: pytest.LogCaptureFixture) -> None:
    """The local runtime's pollers wait 20 s; pausing one wakes its poll through the emulator's
    /_local/sqs/wake (LongPoll.wake, the runtime's own caller), which must end it at once and empty."""
    from samlocal.triggers.sqs import LongPoll

    url = _standard(sqs)
    got: list[list[str]] = []
    waiter = threading.Thread(target=lambda: got.append(_bodies(_receive(sqs, url, WaitTimeSeconds=20))))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.3)
    caplog.set_level("WARNING")
    LongPoll.wakeable(server.endpoint_url, REGION).wake(url)
    waiter.join(timeout=5)
    assert got == [[]] and time.monotonic() - started < 2.0
    assert not caplog.records  # the wake was answered 200
    sqs.send_message(QueueUrl=url, MessageBody="after")
    assert _counts(sqs, url) == (1, 0, 0)  # nothing took it
    # a poll that starts after the wake waits as usual and gets what arrives
    later = threading.Thread(target=lambda: got.append(_bodies(_receive(sqs, url, WaitTimeSeconds=20))))
    _receive(sqs, url)  # empty the queue first (and delete nothing: it comes back after its timeout)
    later.start()
    time.sleep(0.3)
    sqs.send_message(QueueUrl=url, MessageBody="second")
    later.join(timeout=5)
    assert got[1] == ["second"]


def test_the_wake_route_refuses_what_it_cannot_do(server: emulator_mod.Emulator, unpatched_url: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import requests

    from samlocal.triggers.sqs import LongPoll

    wake = server.endpoint_url + "/_local/sqs/wake"
    queue_url = f"{server.endpoint_url}/{ACCOUNT}/no-such-queue"
    missing = requests.post(wake, json={"queue_url": queue_url, "region": REGION}, timeout=5)
    assert missing.status_code == 404 and "no-such-queue" in missing.json()["message"]
    assert requests.post(wake, data=b"{", timeout=5).status_code == 400
    assert requests.post(wake, json={"queue_url": queue_url}, timeout=5).status_code == 400  # no region
    assert requests.post(wake, json={"queue_url": "http://x/a/b/c", "region": REGION}, timeout=5).status_code == 400
    assert requests.get(wake, timeout=5).status_code == 405
    assert requests.post(wake, json={"queue_url": queue_url, "region": REGION}, timeout=5,
                         headers={"Origin": "http://evil.example"}).status_code == 403  # LocalOnly guards it too
    assert requests.post(unpatched_url + "/_local/sqs/wake", timeout=5,
                         json={"queue_url": queue_url, "region": REGION}).status_code == 501
    # the runtime's caller says so when a wake fails (the poll then ends at its own timeout)
    caplog.set_level("WARNING")
    LongPoll.wakeable(server.endpoint_url, REGION).wake(queue_url)
    LongPoll.wakeable("http://127.0.0.1:9", REGION).wake(queue_url)
    failed = [r for r in caplog.records if "did not end the long poll" in r.getMessage()]
    assert len(failed) == 2 and "404" in failed[0].__dict__["error"], [r.__dict__.get("error") for r in failed]


def _shard_id(url: str, arn: str) -> str:
    (shard,) = _client("dynamodbstreams", url).describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    return str(shard["ShardId"])


def test_the_stream_wait_answers_at_the_next_record_or_its_timeout(server: emulator_mod.Emulator) -> None:
    """/_local/dynamodbstreams/wait (the runtime's idle stream readers): null answers the shard's count at
    once, a stale count at once, the current count when a record is added (not before) or when its
    seconds are up."""
    import requests

    table, arn = _streamed_table(server.endpoint_url, "waited", "NEW_IMAGE")
    shard = _shard_id(server.endpoint_url, arn)
    wait = server.endpoint_url + "/_local/dynamodbstreams/wait"

    def ask(known: int | None, seconds: float) -> tuple[int, float]:
        started = time.monotonic()
        got = requests.post(wait, json={"stream_arn": arn, "shard_id": shard, "known": known, "seconds": seconds},
                            timeout=30)
        assert got.status_code == 200, got.text
        return got.json()["records"], time.monotonic() - started

    assert ask(None, 20)[0] == 0
    count, took = ask(0, 0.5)
    assert count == 0 and 0.45 <= took < 3  # nothing added: its timeout
    ddb = _client("dynamodb", server.endpoint_url)
    answered: list[tuple[int, float]] = []
    waiter = threading.Thread(target=lambda: answered.append(ask(0, 20)))
    waiter.start()
    time.sleep(0.5)
    assert not answered  # still waiting
    ddb.put_item(TableName=table, Item={"pk": {"S": "a"}})
    waiter.join(timeout=5)
    assert answered and answered[0][0] == 1 and answered[0][1] < 3
    ddb.update_item(TableName=table, Key={"pk": {"S": "a"}}, UpdateExpression="SET v = :v",
                    ExpressionAttributeValues={":v": {"N": "1"}})
    count, took = ask(1, 20)
    assert count == 2 and took < 1  # a record added since the count it knew: at once


def test_the_stream_wait_refuses_what_it_cannot_do(server: emulator_mod.Emulator, unpatched_url: str) -> None:
    import requests

    table, arn = _streamed_table(server.endpoint_url, "refused", "KEYS_ONLY")
    shard = _shard_id(server.endpoint_url, arn)
    wait = server.endpoint_url + "/_local/dynamodbstreams/wait"
    good = {"stream_arn": arn, "shard_id": shard, "known": None, "seconds": 1}
    assert requests.post(wait, json=good, timeout=5).status_code == 200
    missing = requests.post(wait, json={**good, "stream_arn": arn.replace(table, "no-such-table")}, timeout=5)
    assert missing.status_code == 404 and "no-such-table" in missing.json()["message"]
    assert requests.post(wait, json={**good, "shard_id": "shardId-000"}, timeout=5).status_code == 404
    for bad in ({**good, "seconds": 21}, {**good, "seconds": -1}, {**good, "known": "3"}, {**good, "known": True},
                {**good, "stream_arn": "arn:aws:sqs:us-east-1:123456789012:q"}, {"stream_arn": arn}, [good]):
        got = requests.post(wait, json=bad, timeout=5)
        assert got.status_code == 400 and got.json()["message"], bad
    assert requests.post(wait, data=b"{", timeout=5).status_code == 400
    assert requests.get(wait, timeout=5).status_code == 405
    assert requests.post(wait, json=good, timeout=5, headers={"Origin": "http://evil.example"}).status_code == 403
    assert requests.post(unpatched_url + "/_local/dynamodbstreams/wait", json=good, timeout=5).status_code == 501


def test_concurrent_fifo_consumers_get_each_message_once_in_group_order(sqs: Any) -> None:
    url = _fifo(sqs)
    groups = [f"g{i}" for i in range(8)]
    for seq in range(10):
        entries = [
            {
                "Id": g,
                "MessageBody": f"{g}:{seq}",
                "MessageGroupId": g,
                "MessageDeduplicationId": f"{g}-{seq}",
            }
            for g in groups
        ]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        client = _client("sqs", sqs.meta.endpoint_url)
        idle = 0
        while idle < 3:
            msgs = _receive(client, url, VisibilityTimeout=30)
            if not msgs:
                idle += 1
                continue
            idle = 0
            with lock:
                seen.extend(_bodies(msgs))
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
            client.delete_message_batch(QueueUrl=url, Entries=entries)

    workers = [threading.Thread(target=consume) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert sorted(seen) == sorted(f"{g}:{s}" for g in groups for s in range(10))
    for g in groups:
        assert [int(b.split(":")[1]) for b in seen if b.startswith(g + ":")] == list(range(10))


# --------------------------------------------------------------------------
# (c) delete, counts, visibility
# --------------------------------------------------------------------------


def test_delete_and_counts(sqs: Any) -> None:
    url = _fifo(sqs)
    _send_group(sqs, url, "g1", ["a", "b"])
    _send_group(sqs, url, "g2", ["c"])
    assert _counts(sqs, url) == (3, 0, 0)
    msgs = _receive(sqs, url, n=2)
    assert _counts(sqs, url) == (1, 2, 0)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])
    assert _counts(sqs, url) == (1, 1, 0)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])  # again: fine
    with pytest.raises(ClientError) as err:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
    assert err.value.response["Error"]["Code"] == "ReceiptHandleIsInvalid"
    result = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "ok", "ReceiptHandle": msgs[1]["ReceiptHandle"]},
            {"Id": "bad", "ReceiptHandle": "unknown"},
        ],
    )
    assert [s["Id"] for s in result["Successful"]] == ["ok"]
    assert [(f["Id"], f["Code"]) for f in result["Failed"]] == [("bad", "ReceiptHandleIsInvalid")]
    assert _counts(sqs, url) == (1, 0, 0)
    all_attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert all_attrs["ApproximateNumberOfMessages"] == "1"
    assert all_attrs["FifoQueue"] == "true" and all_attrs["ContentBasedDeduplication"] == "false"


def test_old_receipt_handle_still_deletes_and_is_indexed(sqs: Any) -> None:
    url = _standard(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    first = _receive(sqs, url, VisibilityTimeout=0)[0]["ReceiptHandle"]
    second = _receive(sqs, url, VisibilityTimeout=30)[0]["ReceiptHandle"]
    assert first != second
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first)  # moto accepts any handle it issued
    assert _counts(sqs, url) == (0, 0, 0)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second)  # already deleted: fine
    assert len(_model(url)._messages) == 0
    assert sqs_patches._store(_model(url))._by_handle == {}  # index cleaned up


def test_change_visibility(sqs: Any) -> None:
    url = _standard(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    (msg,) = _receive(sqs, url, VisibilityTimeout=30)
    assert _counts(sqs, url) == (0, 1, 0)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0)
    assert _counts(sqs, url) == (1, 0, 0)
    result = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[{"Id": "bad", "ReceiptHandle": "nope", "VisibilityTimeout": 5}],
    )
    assert result["Failed"][0]["Code"] == "ReceiptHandleIsInvalid"
    with pytest.raises(ClientError) as err:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle="nope", VisibilityTimeout=5)
    assert err.value.response["Error"]["Code"] == "ReceiptHandleIsInvalid"


# --------------------------------------------------------------------------
# Standard queues, delays, retention, purge
# --------------------------------------------------------------------------


def test_standard_queue_send_receive_delete(sqs: Any) -> None:
    url = _standard(sqs)
    attrs = {"k": {"DataType": "String", "StringValue": "v"}}
    sent = sqs.send_message(QueueUrl=url, MessageBody="one", MessageAttributes=attrs)
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"b{i}"} for i in range(3)])
    sqs.send_message(QueueUrl=url, MessageBody="one")  # no dedup on standard queues
    assert _counts(sqs, url) == (5, 0, 0)
    msgs = _receive(sqs, url, MessageAttributeNames=["All"])
    assert _bodies(msgs) == ["one", "b0", "b1", "b2", "one"]
    assert msgs[0]["MessageAttributes"] == attrs
    assert msgs[0]["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert msgs[0]["MD5OfBody"] == sent["MD5OfMessageBody"]
    result = sqs.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
    )
    assert len(result["Successful"]) == 5
    assert _counts(sqs, url) == (0, 0, 0)


def test_delay_and_retention(sqs: Any) -> None:
    url = _standard(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    sqs.send_message(QueueUrl=url, MessageBody="now")
    assert _counts(sqs, url) == (1, 0, 1)
    assert _bodies(_receive(sqs, url)) == ["now"]
    time.sleep(1.1)
    assert _bodies(_receive(sqs, url)) == ["later"]

    short = _standard(sqs, MessageRetentionPeriod="1")
    sqs.send_message(QueueUrl=short, MessageBody="expires")
    time.sleep(1.1)
    sqs.send_message(QueueUrl=short, MessageBody="fresh")
    assert _bodies(_receive(sqs, short)) == ["fresh"]  # the expired one is gone
    assert len(_model(short)._messages) == 1


def test_purge(sqs: Any) -> None:
    url = _fifo(sqs)
    _send_group(sqs, url, "g", ["a", "b"])
    (msg,) = _receive(sqs, url, n=1)
    sqs.purge_queue(QueueUrl=url)
    assert _counts(sqs, url) == (0, 0, 0)
    with pytest.raises(ClientError):
        sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
    _send_group(sqs, url, "g", ["c"])
    assert _bodies(_receive(sqs, url)) == ["c"]  # the group is not blocked any more


def test_message_instances_are_tracked_weakly(sqs: Any) -> None:
    from moto.sqs.models import Message

    url = _standard(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    tracked = Message.instances_tracked  # type: ignore[attr-defined]
    assert isinstance(tracked, sqs_patches._WeakInstances)
    assert any(m.body == "x" for m in list(tracked))


# --------------------------------------------------------------------------
# DynamoDB streams: one INSERT per item-creating UpdateItem
# --------------------------------------------------------------------------


def _streamed_table(url: str, prefix: str, view: str) -> tuple[str, str]:
    """A new table with a stream of that view type: (table name, stream ARN)."""
    table = _name(prefix)
    arn = _client("dynamodb", url).create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
    )["TableDescription"]["LatestStreamArn"]
    return table, arn


def _stream_records_after_updates(url: str) -> list[dict[str, Any]]:
    """Creates an item with UpdateItem, updates it again, and returns the table's stream records."""
    ddb = _client("dynamodb", url)
    table, arn = _streamed_table(url, "streamed", "NEW_AND_OLD_IMAGES")
    for value in ("one", "two"):
        ddb.update_item(
            TableName=table,
            Key={"pk": {"S": "k"}},
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"S": value}},
        )
    streams = _client("dynamodbstreams", url)
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
    return streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]


def test_update_item_creating_an_item_emits_one_insert(server: emulator_mod.Emulator) -> None:
    records = _stream_records_after_updates(server.endpoint_url)
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY"]
    insert, modify = (r["dynamodb"] for r in records)
    assert insert["NewImage"] == {"pk": {"S": "k"}, "v": {"S": "one"}} and "OldImage" not in insert
    assert modify["OldImage"] == {"pk": {"S": "k"}, "v": {"S": "one"}}
    assert modify["NewImage"] == {"pk": {"S": "k"}, "v": {"S": "two"}}
    assert int(modify["SequenceNumber"]) == int(insert["SequenceNumber"]) + 1  # no gap where the interim one was


def test_stock_moto_emits_a_keys_only_insert_first(unpatched_url: str) -> None:
    # The bug the patch fixes: a keys-only INSERT, then the real one.
    records = _stream_records_after_updates(unpatched_url)
    assert [r["eventName"] for r in records] == ["INSERT", "INSERT", "MODIFY"]
    assert records[0]["dynamodb"]["NewImage"] == {"pk": {"S": "k"}}


def _paged_table(url: str) -> tuple[Any, str]:
    """Three partitions of 40 items each (range keys in scrambled insertion order) and a GSI."""
    ddb = _client("dynamodb", url)
    name = _name("pages")
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "app", "at")],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                     GlobalSecondaryIndexes=[{"IndexName": "ByApp", "Projection": {"ProjectionType": "ALL"},
                                              "KeySchema": [{"AttributeName": "app", "KeyType": "HASH"},
                                                            {"AttributeName": "at", "KeyType": "RANGE"}]}])
    for n in sorted(range(120), key=lambda n: (n * 37) % 120):
        ddb.put_item(TableName=name, Item={"pk": {"S": f"m{n % 3}"}, "sk": {"S": f"p#{n:04d}"}, "app": {"S": "a"},
                                           "at": {"S": f"t{n % 7}"}})
    return ddb, name


QUERIES: list[dict[str, Any]] = [
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "m1"}}},
    {"KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b", "ScanIndexForward": False, "Limit": 1,
     "ExpressionAttributeValues": {":p": {"S": "m2"}, ":a": {"S": "p#"}, ":b": {"S": "p#0050#~"}}},
    {"KeyConditionExpression": "pk = :p AND begins_with(sk, :s)", "Limit": 7,
     "ExpressionAttributeValues": {":p": {"S": "m0"}, ":s": {"S": "p#00"}}},
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "nobody"}}},
    {"KeyConditionExpression": "pk = :p AND sk < :a", "Limit": 4,
     "ExpressionAttributeValues": {":p": {"S": "m1"}, ":a": {"S": "p#0060"}}},
    {"KeyConditionExpression": "pk = :p AND sk >= :a", "ScanIndexForward": False, "Limit": 6,
     "ExpressionAttributeValues": {":p": {"S": "m0"}, ":a": {"S": "p#0090"}}},
    {"KeyConditionExpression": "#k = :p AND #s = :a", "ExpressionAttributeNames": {"#k": "pk", "#s": "sk"},
     "ExpressionAttributeValues": {":p": {"S": "m1"}, ":a": {"S": "p#0001"}}},
    {"KeyConditionExpression": "pk = :p AND sk > :a", "FilterExpression": "#t = :t", "Limit": 5,
     "ExpressionAttributeNames": {"#t": "at"},
     "ExpressionAttributeValues": {":p": {"S": "m2"}, ":a": {"S": "p#0010"}, ":t": {"S": "t3"}}},
    {"KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b",
     "ExpressionAttributeValues": {":p": {"S": "m0"}, ":a": {"S": "p#0200"}, ":b": {"S": "p#0300"}}},
    {"IndexName": "ByApp", "KeyConditionExpression": "app = :a", "ScanIndexForward": False, "Limit": 25,
     "ExpressionAttributeValues": {":a": {"S": "a"}}},
]


def _all_pages(ddb: Any, name: str, query: dict[str, Any]) -> list[list[dict[str, Any]]]:
    pages, start = [], None
    while True:
        resp = ddb.query(TableName=name, **query, **({"ExclusiveStartKey": start} if start else {}))
        pages.append(resp["Items"])
        start = resp.get("LastEvaluatedKey")
        if not start or len(pages) > 50:
            return pages


def test_queries_answer_as_stock_moto_reading_only_their_partition(server: emulator_mod.Emulator,
                                                                   unpatched_url: str) -> None:
    """dynamodb.query_partition: every query (table and index, both directions, limits, key ranges,
    paging) answers exactly what stock moto answers; a table query's candidates are its partition only,
    not the whole table sorted (which made a long message's store calls grow with the table)."""
    patched, name = _paged_table(server.endpoint_url)
    stock, stock_name = _paged_table(unpatched_url)
    for query in QUERIES:
        assert _all_pages(patched, name, query) == _all_pages(stock, stock_name, query), query
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType

    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    table = dynamodb_backends[ACCOUNT][REGION].get_table(name)
    assert len(table.all_items()) == 120  # outside a query: moto's own
    dynamodb_patches._query_local.scope = (table, DynamoType({"S": "m1"}), None, None)
    try:
        assert {i.hash_key.value for i in table.all_items()} == {"m1"} and len(table.all_items()) == 40
    finally:
        dynamodb_patches._query_local.scope = None
    # with a sort key condition, only the partition's items in that key range (moto's own comparison)
    in_range = dynamodb_patches._key_range(table, {"range_comparison": "BETWEEN",
                                                  "range_objs": [DynamoType({"S": "p#0010"}), DynamoType({"S": "p#0039"})]})
    dynamodb_patches._query_local.scope = (table, DynamoType({"S": "m1"}), in_range, None)
    try:
        # the range, and the nearest item beyond it on each side (p#0007 and p#0040)
        assert [i.range_key.value for i in table.all_items()] == [f"p#{n:04d}" for n in range(7, 41) if n % 3 == 1]
    finally:
        dynamodb_patches._query_local.scope = None
    assert dynamodb_patches._key_range(table, {"range_comparison": "BETWEEN", "range_objs": [], "index_name": "ByApp"}) is None


def _outcome(ddb: Any, name: str, query: dict[str, Any]) -> Any:
    try:
        return _all_pages(ddb, name, query)
    except ClientError as exc:
        return exc.response["Error"]["Code"], exc.response["Error"]["Message"]


def _range_queries(kind: str, values: list[Any]) -> list[dict[str, Any]]:
    """Every key condition a Query takes, at, between, below and above the keys, both directions,
    with and without Limit."""
    out: list[dict[str, Any]] = [{"KeyConditionExpression": "pk = :p", "ScanIndexForward": forward, "Limit": limit,
                                  "ExpressionAttributeValues": {":p": {"S": "m"}}}
                                 for forward in (True, False) for limit in (1, 2, 100)]
    for n, v in enumerate(values):
        for op in ("=", "<", "<=", ">", ">="):
            out.append({"KeyConditionExpression": f"pk = :p AND sk {op} :a", "ScanIndexForward": n % 2 == 0,
                        **({"Limit": 2} if n % 3 == 0 else {}),
                        "ExpressionAttributeValues": {":p": {"S": "m"}, ":a": {kind: v}}})
        for w in {v, values[(n + 2) % len(values)], values[n - 1]}:  # a run, one key, and (mostly) a reversed pair
            out.append({"KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b", "Limit": 3,
                        "ExpressionAttributeValues": {":p": {"S": "m"}, ":a": {kind: v}, ":b": {kind: w}}})
        if kind == "S":
            out.append({"KeyConditionExpression": "pk = :p AND begins_with(sk, :a)", "Limit": 2,
                        "ExpressionAttributeValues": {":p": {"S": "m"}, ":a": {kind: v}}})
    return out


@pytest.mark.parametrize("kind, keys, probes", [
    ("S", ["b", "b#1", "b#10", "b#2", "c", "ä", "a~"], ["", "a", "b", "b#", "b#1", "b#15", "c", "d", "ä"]),
    ("N", ["-2", "1", "1.5", "2", "10", "100"], ["-3", "-2", "0", "1", "1.50", "3", "10", "1000"]),
])
def test_a_partitions_kept_key_order_answers_as_stock_moto_after_every_kind_of_write(
        server: emulator_mod.Emulator, unpatched_url: str, kind: str, keys: list[str], probes: list[str]) -> None:
    """dynamodb.query_partition: a partition's sort order is kept between Queries and bisected for the key
    range; every key condition (=, <, <=, >, >=, BETWEEN in both orders, begins_with) at, between, below
    and above the keys answers what stock moto answers — after a put of a new key, an item written over,
    a delete, an UpdateItem that creates its item, a transaction and a batch write."""
    from moto.dynamodb.models import dynamodb_backends

    clients = []
    for url in (server.endpoint_url, unpatched_url):
        ddb, name = _client("dynamodb", url), _name("order")
        ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": kind}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
        for k in keys:
            ddb.put_item(TableName=name, Item={"pk": {"S": "m"}, "sk": {kind: k}, "v": {"S": "first"}})
        clients.append((ddb, name))
    (patched, name), _ = clients
    queries = _range_queries(kind, probes)
    middle = probes[len(probes) // 2]
    writes: list[Callable[[Any, str], Any]] = [
        lambda ddb, t: ddb.put_item(TableName=t, Item={"pk": {"S": "m"}, "sk": {kind: middle}, "v": {"S": "new"}}),
        lambda ddb, t: ddb.put_item(TableName=t, Item={"pk": {"S": "m"}, "sk": {kind: keys[1]}, "v": {"S": "over"}}),
        lambda ddb, t: ddb.delete_item(TableName=t, Key={"pk": {"S": "m"}, "sk": {kind: keys[0]}}),
        lambda ddb, t: ddb.update_item(TableName=t, Key={"pk": {"S": "m"}, "sk": {kind: probes[0]}},
                                       UpdateExpression="SET v = :v", ExpressionAttributeValues={":v": {"S": "upd"}}),
        lambda ddb, t: ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": t, "Item": {"pk": {"S": "m"}, "sk": {kind: probes[-1]}}}},
            {"Delete": {"TableName": t, "Key": {"pk": {"S": "m"}, "sk": {kind: keys[-1]}}}}]),
        lambda ddb, t: ddb.batch_write_item(RequestItems={t: [
            {"DeleteRequest": {"Key": {"pk": {"S": "m"}, "sk": {kind: middle}}}},
            {"PutRequest": {"Item": {"pk": {"S": "m"}, "sk": {kind: probes[1]}}}}]}),
    ]
    rows = dynamodb_backends[ACCOUNT][REGION].get_table(name).items
    for step, write in enumerate([None, *writes]):
        if write is not None:
            for ddb, t in clients:
                write(ddb, t)
            (partition,) = rows.values()
            # moto's puts and deletes moved the keys into and out of the kept order (no sort at the next Query)
            assert partition.order is not None and partition.order[0] == sorted(partition, key=lambda k: k.cast_value)
            assert partition.order[1] == [k.cast_value for k in partition.order[0]], step
        for query in queries if step in (0, len(writes)) else queries[step::3]:  # between writes: a third
            assert _outcome(patched, name, query) == _outcome(*clients[1], query), (step, query)
        (partition,) = rows.values()
        assert partition.order is not None, step
        if step == 1:  # an item written over keeps its key: the order stays
            cached = partition.order
            writes[1](patched, name)
            assert partition.order is cached
    clone = copy.deepcopy(partition)
    assert clone == partition and clone is not partition and clone.order is None


def test_a_key_range_that_bisection_cannot_answer_falls_back_to_motos_test() -> None:
    from moto.dynamodb.comparisons import get_comparison_func

    from samlocal.emulator.patches.dynamodb import _KeyRange

    # the conditions that select one run of the order are bisected (not walked), to the same run moto's test selects
    keys = ["b", "b#1", "b#10", "b#2", "c"]
    for name in ("=", "<", "<=", ">", ">=", "BEGINS_WITH"):
        for probe in ("", "a", "b", "b#", "b#1", "b#15", "c", "d"):
            key_range = _KeyRange(name, get_comparison_func(name), [probe])
            inside = [n for n, key in enumerate(keys) if key_range.test(key)]
            span = key_range.span(keys)
            assert span is not None and list(range(*span)) == inside, (name, probe, span)
    values = ["a", "b", "c"]
    assert _KeyRange("BETWEEN", lambda v, a, b: a <= v <= b, ["a", "b"]).span(values) == (0, 2)
    assert _KeyRange("BETWEEN", lambda v, a, b: a <= v <= b, ["c", "a"]).span(values) == (2, 2)  # empty
    assert _KeyRange("<", lambda v, a: v < a, [3]).span(values) is None  # another type than the keys
    assert _KeyRange("CONTAINS", lambda v, a: a in v, ["b"]).span(values) is None  # not one run of the order
    # a test that disagrees with the bisection at an edge (here: a function not the operator's) is not trusted
    assert _KeyRange("<", lambda v, a: v <= a, ["b"]).span(values) is None


def test_dynamo_values_compare_as_moto_compares_them(server: emulator_mod.Emulator) -> None:
    """The direct comparison of strings and binaries answers what moto's own (cast_value) does, for
    every pair of types a key or a condition can hold (mixed types fall through to moto's)."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    eq, lt = patches.ORIGINALS["DynamoType.__eq__"], patches.ORIGINALS["DynamoType.__lt__"]
    values = [{"S": ""}, {"S": "a"}, {"S": "p#2026#e1"}, {"S": "p#2026#e10"}, {"S": "ä"}, {"B": "YQ=="}, {"B": "Yg=="},
              {"N": "1"}, {"N": "1.0"}, {"N": "-2"}, {"N": "10"}, {"SS": ["a", "b"]}, {"NULL": True}]
    for a in values:
        for b in values:
            x, y = DynamoType(a), DynamoType(b)
            assert (x == y) == eq(x, y), (a, b)
            try:
                expected: Any = lt(x, y)
            except TypeError as exc:
                expected = type(exc)
            try:
                got: Any = x < y
            except TypeError as exc:
                got = type(exc)
            assert got == expected, (a, b)


def _records(streams: Any, iterator: str) -> tuple[list[tuple[str, str]], str]:
    resp = streams.get_records(ShardIterator=iterator)
    return [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in resp["Records"]], resp["NextShardIterator"]


def _cancelled_transaction(url: str) -> dict[str, Any]:
    """A streamed table with items a and d and a consumer reading its stream; a transaction that puts b,
    updates a and deletes d is cancelled by its condition check on x; then c is put, and a transaction
    that puts e and updates a succeeds. What the open iterator read after each step, the items, the
    cancellation's error."""
    ddb, streams = _client("dynamodb", url), _client("dynamodbstreams", url)
    table, arn = _streamed_table(url, "tx", "NEW_AND_OLD_IMAGES")
    for key in ("a", "d"):
        ddb.put_item(TableName=table, Item={"pk": {"S": key}, "v": {"N": "1"}})
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    before, iterator = _records(streams, iterator)
    with pytest.raises(ClientError) as cancelled:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": table, "Item": {"pk": {"S": "b"}}}},
            {"Update": {"TableName": table, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET v = :v",
                        "ExpressionAttributeValues": {":v": {"N": "2"}}}},
            {"Delete": {"TableName": table, "Key": {"pk": {"S": "d"}}}},
            {"ConditionCheck": {"TableName": table, "Key": {"pk": {"S": "x"}}, "ConditionExpression": "attribute_exists(pk)"}},
        ])
    items_after_cancel = sorted((i["pk"]["S"], i.get("v", {}).get("N")) for i in ddb.scan(TableName=table)["Items"])
    ddb.put_item(TableName=table, Item={"pk": {"S": "c"}})
    after_cancel, iterator = _records(streams, iterator)
    ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": table, "Item": {"pk": {"S": "e"}}}},
        {"Update": {"TableName": table, "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"N": "3"}}}},
    ])
    after_commit, _ = _records(streams, iterator)
    return {"before": before, "error": cancelled.value.response["Error"]["Code"],
            "reasons": [r["Code"] for r in cancelled.value.response.get("CancellationReasons", [])],
            "items_after_cancel": items_after_cancel, "after_cancel": after_cancel, "after_commit": after_commit,
            "items": sorted((i["pk"]["S"], i.get("v", {}).get("N")) for i in ddb.scan(TableName=table)["Items"])}


def test_a_cancelled_transaction_leaves_the_table_and_its_open_stream_iterators_as_they_were(
        server: emulator_mod.Emulator, unpatched_url: str) -> None:
    """dynamodb.transactions: the cancelled transaction's writes are undone and no consumer ever sees
    them; the writes after it reach the consumer that was already reading; answers as stock moto's."""
    got, stock = _cancelled_transaction(server.endpoint_url), _cancelled_transaction(unpatched_url)
    assert got["before"] == [("INSERT", "a"), ("INSERT", "d")]
    assert got["error"] == stock["error"] == "TransactionCanceledException"
    assert got["reasons"] == stock["reasons"] == ["None", "None", "None", "ConditionalCheckFailed"]
    assert got["items_after_cancel"] == stock["items_after_cancel"] == [("a", "1"), ("d", "1")]
    assert got["after_cancel"] == [("INSERT", "c")]
    assert got["after_commit"] == [("INSERT", "e"), ("MODIFY", "a")]
    assert got["items"] == stock["items"] == [("a", "3"), ("c", None), ("d", "1"), ("e", None)]


def test_stock_moto_shows_a_cancelled_transaction_to_open_iterators_and_then_stalls_them(unpatched_url: str) -> None:
    # The fault the patch fixes: the consumer reads writes that never happened, then nothing more.
    stock = _cancelled_transaction(unpatched_url)
    assert stock["after_cancel"] == [("INSERT", "b"), ("MODIFY", "a"), ("REMOVE", "d")]
    assert stock["after_commit"] == []


def test_a_transaction_copies_the_items_it_names_not_the_tables(server: emulator_mod.Emulator,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """moto deep-copied each named table per transaction (O(table)); the patch copies the named items.
    A backup still copies the whole table (Table.__deepcopy__ outside a transaction)."""
    from moto.dynamodb.models.dynamo_type import Item

    ddb = _client("dynamodb", server.endpoint_url)
    table, _ = _streamed_table(server.endpoint_url, "txcopy", "NEW_IMAGE")
    for n in range(300):
        ddb.put_item(TableName=table, Item={"pk": {"S": f"k{n}"}, "v": {"N": "0"}})
    copies = []
    original = Item.__deepcopy__

    def counting(self: Item, memo: dict[int, Any]) -> Item:
        copies.append(self.hash_key.value)
        return original(self, memo)

    monkeypatch.setattr(Item, "__deepcopy__", counting)
    ddb.transact_write_items(TransactItems=[
        {"Update": {"TableName": table, "Key": {"pk": {"S": "k1"}}, "UpdateExpression": "ADD v :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"Put": {"TableName": table, "Item": {"pk": {"S": "new"}}}},
    ])
    assert set(copies) <= {"k1", "new"} and len(copies) <= 4, copies
    backup = ddb.create_backup(TableName=table, BackupName="before-delete")["BackupDetails"]["BackupArn"]
    assert len(copies) >= 301  # the backup copied every item
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k2"}})
    restored = f"{table}-restored"
    ddb.restore_table_from_backup(TargetTableName=restored, BackupArn=backup)
    assert ddb.get_item(TableName=restored, Key={"pk": {"S": "k2"}})["Item"] == {"pk": {"S": "k2"}, "v": {"N": "0"}}
    assert ddb.get_item(TableName=restored, Key={"pk": {"S": "k1"}})["Item"]["v"] == {"N": "1"}
    assert "Item" not in ddb.get_item(TableName=table, Key={"pk": {"S": "k2"}})


# (UpdateExpression, names, values) — valid ones, and each kind of error moto's parser and validators raise.
UPDATES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("SET #a = if_not_exists(#a, :z) + :one, #l = list_append(if_not_exists(#l, :empty), :l) REMOVE #r",
     {"#a": "n", "#l": "log", "#r": "gone"}, {":z": {"N": "0"}, ":one": {"N": "1"}, ":empty": {"L": []}, ":l": {"L": [{"S": "x"}]}}),
    ("ADD #s :s SET #m.#k = :v", {"#s": "tags", "#m": "m", "#k": "k"}, {":s": {"SS": ["a"]}, ":v": {"S": "v"}}),
    ("SET #a = :one SET #b = :one", {"#a": "a", "#b": "b"}, {":one": {"N": "1"}}),          # two SET clauses
    ("SET #a = :one, #a = :one", {"#a": "a"}, {":one": {"N": "1"}}),                          # overlapping paths
    ("SET #k = :one", {"#k": "pk"}, {":one": {"S": "other"}}),                                # the key attribute
    ("SET #a = :missing, #b = :one", {"#a": "a", "#b": "b"}, {":one": {"N": "1"}}),         # an undefined value
    ("SET #a = #b + :one", {"#a": "a", "#b": "nothing"}, {":one": {"N": "1"}}),              # a path not in the item
    ("SET #a = :one,", {"#a": "a"}, {":one": {"N": "1"}}),                                   # a syntax error
    ("ADD #t :one", {"#t": "tags"}, {":one": {"N": "1"}}),                                     # ADD a number to a set
]


def _apply_updates(url: str) -> list[Any]:
    """Each update of UPDATES three times on one item (the 2nd and 3rd: the parsed tree is reused), then
    the same text with other names; what each answered, and the item at the end."""
    ddb = _client("dynamodb", url)
    table, _ = _streamed_table(url, "updates", "NEW_AND_OLD_IMAGES")
    ddb.put_item(TableName=table, Item={"pk": {"S": "k"}, "gone": {"S": "x"}, "n": {"N": "5"}, "m": {"M": {}},
                                        "m2": {"M": {}}})
    out: list[Any] = []
    for expression, names, values in UPDATES:
        for names_now in (names, names, names, {k: v + "2" if v != "pk" else v for k, v in names.items()}):
            try:
                ddb.update_item(TableName=table, Key={"pk": {"S": "k"}}, UpdateExpression=expression,
                                ExpressionAttributeNames=names_now, ExpressionAttributeValues=values)
                out.append("ok")
            except ClientError as exc:
                out.append((exc.response["Error"]["Code"], exc.response["Error"]["Message"]))
    out.append(ddb.get_item(TableName=table, Key={"pk": {"S": "k"}})["Item"])
    return out


def test_update_expressions_answer_as_stock_moto_parsed_once(server: emulator_mod.Emulator, unpatched_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """dynamodb.update_expressions: every update (and every error: two SET clauses, overlapping paths,
    a key attribute, undefined values, a syntax error, a type mismatch) answers exactly as stock moto,
    the first time and when its parsed tree is reused; a text is parsed once, not twice per request."""
    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    parses: list[str] = []
    original_parse = patches.ORIGINALS["UpdateExpressionParser.make"].__func__

    def counting(cls: type, text: str) -> Any:
        parses.append(text)
        return original_parse(cls, text)

    monkeypatch.setattr(dynamodb_patches.UpdateExpressionParser, "make",
                        dynamodb_patches._make_parse(classmethod(counting)))
    dynamodb_patches.forget_parsed_expressions()  # so that each text's first parse happens here
    got = _apply_updates(server.endpoint_url)
    assert got == _apply_updates(unpatched_url)
    firsts = [got[4 * n] for n in range(len(UPDATES))]
    assert firsts[:2] == ["ok", "ok"] and all(f[0] == "ValidationException" for f in firsts[2:]), firsts
    assert [f[1].split(":")[-1].strip() if f != "ok" else f for f in firsts][2:4] == [
        "The \"SET\" section can only be used once in an update expression;", "[a]"]
    valid = {text for text, _, _ in UPDATES if text != "SET #a = :one,"}
    assert sorted(parses) == sorted([*valid, *["SET #a = :one,"] * 4])  # a text that does not parse: each time


def _same_tree(a: Any, b: Any, parents: dict[int, Any]) -> bool:
    """Same classes, types and leaves; b's nodes are new and each b parent is the copy of a's parent."""
    from moto.dynamodb.parsing.ast_nodes import Node

    if not isinstance(a, Node):
        return type(a) is type(b) and a == b
    if type(a) is not type(b) or a is b or a.type != b.type or parents.get(id(a.parent)) is not b.parent:
        return False
    parents[id(a)] = b
    if a.children is None or b.children is None:
        return a.children is b.children
    return len(a.children) == len(b.children) and all(_same_tree(x, y, parents) for x, y in zip(a.children, b.children))


def _stock_parse() -> Any:
    """moto's own UpdateExpressionParser.make (its function), whether or not the patches are applied."""
    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    return patches.ORIGINALS["UpdateExpressionParser.make"].__func__ if patches.is_applied() else \
        dynamodb_patches.UpdateExpressionParser.make.__func__


def _tree_texts() -> list[str]:
    """Every valid UPDATES text, and two that nest paths, indexes, arithmetic and repeated clauses."""
    return [text for text, _, _ in UPDATES if text != "SET #a = :one,"] + [
        "SET a.b[1].c = :v, d = :w - :x REMOVE e[3], e[1] SET f = g", "DELETE #s :ss ADD #n :one"]


def test_a_cached_tree_is_cloned_as_deepcopy_would_copy_it() -> None:
    """The validator's copy of a cached tree (dynamodb.update_expressions) is deepcopy's copy, built
    node by node; a tree whose parents are not its containers is not cloned but deep-copied."""
    import copy

    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    parse = _stock_parse()
    texts = _tree_texts()
    for text in texts:
        tree = parse(dynamodb_patches.UpdateExpressionParser, text)
        assert dynamodb_patches._is_clonable(tree), text
        clone = dynamodb_patches._clone_tree(tree)
        assert _same_tree(tree, clone, {id(None): None}), text
        assert _same_tree(tree, copy.deepcopy(tree), {id(None): None}), text  # what deepcopy gives, too
    tree = parse(dynamodb_patches.UpdateExpressionParser, texts[0])
    tree.children[0].parent = tree.children[0]  # a node that is not its own container's child
    assert not dynamodb_patches._is_clonable(tree)


def test_a_traversal_finds_each_nodes_processor_by_type_as_moto_does() -> None:
    """dynamodb.update_expressions' traverse (a node's processor found by its type, in a map per traverser
    class) visits, processes and replaces exactly what moto's own recursion does: the first type of the
    map that matches, a node outside a narrowed nodes_to_be_processed left alone, the pre-child hook
    before each child."""
    from moto.dynamodb.parsing import ast_nodes as nodes

    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    parse = _stock_parse()
    traverse = dynamodb_patches._make_traverse(None)

    class Recorder(nodes.DepthFirstTraverser):  # type: ignore[misc]
        def __init__(self, narrow: bool) -> None:
            self.narrow, self.seen = narrow, []

        def _processing_map(self) -> dict[type, Any]:
            return {nodes.UpdateExpressionSetAction: self.mark("set"), nodes.UpdateExpressionAction: self.mark("action"),
                    nodes.ExpressionAttributeValue: self.mark("value"), nodes.ExpressionPathDescender: self.mark("dot")}

        def nodes_to_be_processed(self) -> tuple[type, ...]:
            keys = tuple(self._processing_map())
            return tuple(k for k in keys if k is not nodes.ExpressionPathDescender) if self.narrow else keys

        def mark(self, label: str) -> Any:
            def processor(node: Any) -> Any:
                self.seen.append((label, type(node).__name__))
                replaced = object.__new__(type(node))
                replaced.__dict__.update(node.__dict__, replaced_by=label)  # a new node takes the old one's place
                return replaced
            return processor

        def pre_processing_of_child(self, parent: Any, child_id: int) -> None:
            self.seen.append(("pre", type(parent).__name__, child_id))

    def shape(node: Any) -> Any:
        if not isinstance(node, nodes.Node):
            return node
        return (type(node).__name__, node.__dict__.get("replaced_by"),
                None if node.children is None else [shape(c) for c in node.children])

    texts = _tree_texts()
    for narrow in (False, True):
        for text in texts:
            theirs, ours = Recorder(narrow), Recorder(narrow)
            want = shape(nodes.DepthFirstTraverser.traverse_node_recursively(theirs, parse(dynamodb_patches.UpdateExpressionParser, text)))
            got = shape(traverse(ours, parse(dynamodb_patches.UpdateExpressionParser, text)))
            assert (got, ours.seen) == (want, theirs.seen), text
            assert any(label == "set" for label, *_ in theirs.seen) or "SET" not in text


def test_the_parse_cache_is_bounded(server: emulator_mod.Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from samlocal.emulator.patches import dynamodb as dynamodb_patches

    monkeypatch.setattr(dynamodb_patches, "PARSE_CACHE_SIZE", 5)
    ddb = _client("dynamodb", server.endpoint_url)
    table, _ = _streamed_table(server.endpoint_url, "bounded", "KEYS_ONLY")
    for n in range(12):
        ddb.update_item(TableName=table, Key={"pk": {"S": "k"}}, UpdateExpression=f"SET #a{n} = :v ADD #c :one",
                        ExpressionAttributeNames={f"#a{n}": f"a{n}", "#c": "c"},
                        ExpressionAttributeValues={":v": {"N": str(n)}, ":one": {"N": "1"}})
        assert len(dynamodb_patches._parsed) <= 5 and len(dynamodb_patches._parsed_ids) == len(dynamodb_patches._parsed)
    item = ddb.get_item(TableName=table, Key={"pk": {"S": "k"}})["Item"]
    assert item["c"] == {"N": "12"} and all(item[f"a{n}"] == {"N": str(n)} for n in range(12))


def test_concurrent_item_creating_updates_get_distinct_sequence_numbers(server: emulator_mod.Emulator) -> None:
    table, arn = _streamed_table(server.endpoint_url, "streamed", "NEW_IMAGE")

    def write(n: int) -> None:
        client = _client("dynamodb", server.endpoint_url)
        for i in range(10):
            client.update_item(TableName=table, Key={"pk": {"S": f"{n}-{i}"}}, UpdateExpression="SET v = :v",
                               ExpressionAttributeValues={":v": {"N": str(i)}})

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=30)
    streams = _client("dynamodbstreams", server.endpoint_url)
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    assert len(records) == 40 and {r["eventName"] for r in records} == {"INSERT"}
    assert all("v" in r["dynamodb"]["NewImage"] for r in records)
    assert len({r["dynamodb"]["SequenceNumber"] for r in records}) == 40


def test_concurrent_updates_and_queries_of_a_large_item_never_fail(server: emulator_mod.Emulator) -> None:
    # Stock moto: UpdateItem grows the item's attribute dict while a Query deep-copies it → 500
    # "dictionary changed size during iteration". The patch serialises requests per backend.
    table = _name("raced")
    ddb = _client("dynamodb", server.endpoint_url)
    ddb.create_table(TableName=table, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=table, Item={"pk": {"S": "k"}, **{f"a{i}": {"S": "x"} for i in range(500)}})
    errors: list[str] = []
    once = Config(retries={"total_max_attempts": 1})  # a 500 is not hidden by the SDK's retries

    def update(n: int) -> None:
        client = boto3.client("dynamodb", endpoint_url=server.endpoint_url, region_name=REGION,
                              aws_access_key_id="t", aws_secret_access_key="t", config=once)
        for i in range(40):
            try:
                client.update_item(TableName=table, Key={"pk": {"S": "k"}}, UpdateExpression=f"SET b{n}_{i} = :v",
                                   ExpressionAttributeValues={":v": {"S": "y"}})
            except ClientError as exc:
                errors.append(str(exc))

    def query() -> None:
        client = boto3.client("dynamodb", endpoint_url=server.endpoint_url, region_name=REGION,
                              aws_access_key_id="t", aws_secret_access_key="t", config=once)
        for _ in range(40):
            try:
                client.query(TableName=table, KeyConditionExpression="pk = :k",
                             ExpressionAttributeValues={":k": {"S": "k"}})
            except ClientError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=update, args=(n,)) for n in range(2)] + [threading.Thread(target=query) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    item = ddb.get_item(TableName=table, Key={"pk": {"S": "k"}})["Item"]
    assert len(item) == 1 + 500 + 80


def test_ttl_deletes_expired_items_within_seconds_with_a_service_remove_record(server: emulator_mod.Emulator) -> None:
    # moto stored the TTL setting and never deleted anything; the patched emulator sweeps every
    # DEFAULT_TTL_INTERVAL seconds, and the REMOVE record says DynamoDB itself deleted the item.
    ddb = _client("dynamodb", server.endpoint_url)
    table, arn = _streamed_table(server.endpoint_url, "ttl", "NEW_AND_OLD_IMAGES")
    ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})
    now = int(time.time())
    items = {"past": {"N": str(now - 10)}, "future": {"N": str(now + 3600)}, "text": {"S": str(now - 10)},
             "ancient": {"N": str(now - 6 * 365 * 24 * 3600)}}  # > 5 years past: DynamoDB leaves it
    for pk, expires in items.items():
        ddb.put_item(TableName=table, Item={"pk": {"S": pk}, "expires": expires})
    ddb.put_item(TableName=table, Item={"pk": {"S": "none"}})
    deadline = time.monotonic() + 4 * ttl.DEFAULT_TTL_INTERVAL + 5
    while ddb.get_item(TableName=table, Key={"pk": {"S": "past"}}).get("Item") and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {i["pk"]["S"] for i in ddb.scan(TableName=table)["Items"]}
    assert left == {"future", "text", "ancient", "none"}
    streams = _client("dynamodbstreams", server.endpoint_url)
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    (remove,) = [r for r in records if r["eventName"] == "REMOVE"]
    assert remove["userIdentity"] == {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}
    assert remove["dynamodb"]["Keys"] == {"pk": {"S": "past"}}
    assert remove["dynamodb"]["OldImage"]["expires"] == items["past"]
    assert all("userIdentity" not in r for r in records if r["eventName"] == "INSERT")


def test_shard_iterators_expire_after_15_minutes_instead_of_piling_up(server: emulator_mod.Emulator,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _table, arn = _streamed_table(server.endpoint_url, "iterated", "NEW_IMAGE")
    streams = _client("dynamodbstreams", server.endpoint_url)
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    first = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="LATEST")["ShardIterator"]
    iterator = first
    for _ in range(5):  # what a poller does: every GetRecords mints the next iterator
        iterator = streams.get_records(ShardIterator=iterator)["NextShardIterator"]
    assert streams.get_records(ShardIterator=first)["Records"] == []  # still young: reusable, as in AWS
    clock = [time.monotonic()]
    monkeypatch.setattr(dynamodbstreams.time, "monotonic", lambda: clock[0])
    clock[0] += dynamodbstreams.ITERATOR_TTL_SECONDS + 1
    iterator = streams.get_records(ShardIterator=iterator)["NextShardIterator"]  # prunes the old ones
    with pytest.raises(ClientError) as expired:
        streams.get_records(ShardIterator=first)
    assert expired.value.response["Error"]["Code"] == "ExpiredIteratorException"
    assert streams.get_records(ShardIterator=iterator)["Records"] == []  # the new one works


def test_the_emulator_injects_aws_errors_into_a_fraction_of_one_apis_calls() -> None:
    em = emulator_mod.serve(port=0, metrics_interval=None, server="waitress", patched=True,
                            faults=["DynamoDB_20120810.PutItem=0.5:ProvisionedThroughputExceededException"], fault_seed=3)
    try:
        ddb = boto3.client("dynamodb", endpoint_url=em.endpoint_url, region_name="us-east-1", aws_access_key_id="t",
                           aws_secret_access_key="t", config=Config(retries={"total_max_attempts": 1}))
        table = _name("throttled")
        ddb.create_table(TableName=table, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
        outcomes = []
        for i in range(40):
            try:
                ddb.put_item(TableName=table, Item={"pk": {"S": str(i)}})
                outcomes.append("ok")
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
        assert set(outcomes) == {"ok", "ProvisionedThroughputExceededException"}
        stored = ddb.scan(TableName=table)["Count"]  # other calls are untouched, and a refused put stored nothing
        assert stored == outcomes.count("ok")
        import requests

        counts = requests.get(em.endpoint_url + "/_local/faults", timeout=5).json()
        assert counts == {"DynamoDB_20120810.PutItem": {"calls": 40, "injected": 40 - stored}}
    finally:
        em.stop()
    with pytest.raises(ValueError):
        faults.ErrorInjection(None, ["nonsense"])


_STOP_UNDER_LOAD = """
import http.client, json, logging, sys, threading, time
from samlocal.emulator import server as emulator_mod

crashed, errors = [], []
threading.excepthook = lambda args: crashed.append(f"{args.thread.name if args.thread else '?'}: {args.exc_value!r}")
class Errors(logging.Handler):
    def emit(self, record):
        errors.append(record.getMessage()[:300])
logging.getLogger().addHandler(Errors(logging.ERROR))

def client(port, stop, answered):
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            for _ in range(50):
                conn.request("GET", "/moto-api/data.json")
                conn.getresponse().read()
                answered[0] += 1
        except (OSError, http.client.HTTPException):
            time.sleep(0.001)  # the emulator is stopping: refused, reset or cut short

alive = []
for _ in range(int(sys.argv[1])):
    em = emulator_mod.serve(port=0, metrics_interval=None, ttl_interval=None, patched=False)
    answered, stop = [0], threading.Event()
    clients = [threading.Thread(target=client, args=(em.port, stop, answered), daemon=True) for _ in range(12)]
    for t in clients:
        t.start()
    deadline = time.monotonic() + 10
    while answered[0] < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    em.stop()
    stop.set()
    for t in clients:
        t.join(5)
    alive.append(em._thread.is_alive())
print(json.dumps({"crashed": crashed[:5], "errors": errors[:5], "loops_alive": sum(alive)}))
"""


def test_an_emulator_stopped_under_load_closes_its_sockets_without_a_traceback() -> None:
    """A stop closes the listener and the kept-alive connections in the serving loop's thread: closed
    from the stopping thread, a socket the loop was about to select() on ended it with EBADF (5 of 30
    such stops, a traceback in the stack log that test_startup caught), and a request finishing after
    the loop's trigger was closed logged "Exception when servicing". 8 stops under 12 clients' load, in a
    process of their own (moto's state and other tests' servers are the process's)."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _STOP_UNDER_LOAD, "8"], capture_output=True, text=True, timeout=120,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"crashed": [], "errors": [], "loops_alive": 0}, got


# --------------------------------------------------------------------------
# AWS/SQS CloudWatch metrics
# --------------------------------------------------------------------------


def _metric(cw: Any, name: str, queue: str, stat: str = "Maximum", since: dt.datetime | None = None) -> list[float]:
    now = dt.datetime.now(dt.UTC)
    result = cw.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/SQS",
                        "MetricName": name,
                        "Dimensions": [{"Name": "QueueName", "Value": queue}],
                    },
                    "Period": 60,
                    "Stat": stat,
                },
            }
        ],
        StartTime=since or now - dt.timedelta(minutes=2),
        EndTime=now + dt.timedelta(minutes=1),
    )
    return result["MetricDataResults"][0]["Values"]


def test_sqs_metrics_in_cloudwatch(server: emulator_mod.Emulator, sqs: Any) -> None:
    cw = _client("cloudwatch", server.endpoint_url)
    url = _standard(sqs)
    name = url.rsplit("/", 1)[1]
    empty_url = _standard(sqs)
    empty = empty_url.rsplit("/", 1)[1]
    sqs.send_message(QueueUrl=url, MessageBody="old")
    sqs.send_message(QueueUrl=url, MessageBody="new")
    _receive(sqs, url, n=1)  # "old" in flight: still the oldest message in the queue
    for message in _model(url)._messages:
        if message.body == "old":
            message.sent_timestamp -= 600_000  # sent ten minutes ago
    # Only samples taken from now on (the server truncates StartTime to the second).
    since = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert _wait_until(lambda: _metric(cw, "ApproximateAgeOfOldestMessage", name, since=since))
    for stat in ("Minimum", "Maximum"):
        (age,) = _metric(cw, "ApproximateAgeOfOldestMessage", name, stat, since)
        assert 600 <= age < 630
        assert _metric(cw, "ApproximateNumberOfMessagesVisible", name, stat, since) == [1]
        assert _metric(cw, "ApproximateNumberOfMessagesNotVisible", name, stat, since) == [1]
    assert set(_wait_until(lambda: _metric(cw, "ApproximateAgeOfOldestMessage", empty))) == {0.0}
    listed = cw.list_metrics(Namespace="AWS/SQS", Dimensions=[{"Name": "QueueName", "Value": name}])
    assert {m["MetricName"] for m in listed["Metrics"]} >= {
        "ApproximateNumberOfMessagesVisible",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateAgeOfOldestMessage",
    }


def test_sqs_metrics_other_region_and_queue_churn(server: emulator_mod.Emulator) -> None:
    sqs_west = _client("sqs", server.endpoint_url, region="eu-west-1")
    cw_west = _client("cloudwatch", server.endpoint_url, region="eu-west-1")
    url = _standard(sqs_west)
    name = url.rsplit("/", 1)[1]
    sqs_west.send_message(QueueUrl=url, MessageBody="x")
    # Create and delete queues (with messages) while the publisher is running.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        churn = _standard(sqs_west)
        sqs_west.send_message(QueueUrl=churn, MessageBody="y")
        sqs_west.delete_queue(QueueUrl=churn)
    assert _wait_until(lambda: _metric(cw_west, "ApproximateNumberOfMessagesVisible", name))
    publisher = server._publisher
    assert publisher is not None and publisher.is_alive()
    assert _metric(_client("cloudwatch", server.endpoint_url), "ApproximateNumberOfMessagesVisible", name) == []


def test_metric_store_expires_old_samples() -> None:
    store = metrics._SqsMetricStore()
    store.retention_seconds = 60
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    dims = [metrics.Dimension("QueueName", "q")]
    old = metrics._datum("X", 1, "Count", dims, now - dt.timedelta(seconds=120))
    new = metrics._datum("X", 2, "Count", dims, now)
    store.add("a", "r", "q", [old, new])
    store.expire(now)
    assert store.get("a", "r") == [new]
    store.expire(now + dt.timedelta(seconds=120))
    assert store.get("a", "r") == []


def test_json_log_line() -> None:
    import logging

    record = logging.LogRecord("samlocal.emulator", logging.INFO, __file__, 1, "emulator listening", None, None)
    record.host, record.port, record.patched = "127.0.0.1", 4566, True
    line = emulator_mod.JsonFormatter().format(record)
    assert json.loads(line) == {
        "level": "INFO",
        "msg": "emulator listening",
        "host": "127.0.0.1",
        "port": 4566,
        "patched": True,
    }


# --------------------------------------------------------------------------
# dynamodb.attribute_values: items serialised in one pass
# --------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.text(max_size=8).map(lambda s: {"S": s}),
    st.integers(-10**6, 10**6).map(lambda n: {"N": str(n)}),
    st.binary(max_size=8).map(lambda b: {"B": b}),
    st.binary(max_size=8).map(lambda b: {"B": base64.b64encode(b).decode()}),  # moto keeps what the request held
    st.lists(st.text(max_size=4), min_size=1, max_size=3, unique=True).map(lambda v: {"SS": v}),
    st.lists(st.integers(0, 99).map(str), min_size=1, max_size=3, unique=True).map(lambda v: {"NS": v}),
    st.lists(st.binary(max_size=4), min_size=1, max_size=3, unique=True).map(lambda v: {"BS": v}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    st.sampled_from([{"S": ""}, {"M": {}}, {"L": []}, {"BOOL": False}, {"S": 5}, {"X": "?"}, {"M": {"": {"S": "e"}}},
                     {"S": "a", "N": "1"}, {"SS": "notalist"}, "not a dict", {"S": None}]),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.dictionaries(st.text(max_size=5), inner, max_size=4).map(lambda m: {"M": m}),
    st.lists(inner, max_size=4).map(lambda v: {"L": v})), max_leaves=20)


def _serialize_get_item(item: dict[str, Any], structure: Any) -> dict[str, Any]:
    """GetItem's answer for `item` through moto's JSON serializer, its AttributeValue writer `structure`."""
    from moto.core.serialize import BaseJSONSerializer, XFormedAttributePicker, get_serializer_class
    from moto.core.utils import get_service_model

    model = get_service_model("dynamodb")
    serializer = get_serializer_class("dynamodb", model.protocol)(
        operation_model=model.operation_model("GetItem"), pretty_print=False, value_picker=XFormedAttributePicker())
    current = BaseJSONSerializer._serialize_type_structure
    BaseJSONSerializer._serialize_type_structure = structure  # type: ignore[method-assign]
    try:
        return dict(json.loads(serializer.serialize({"Item": item})["body"]))
    finally:
        BaseJSONSerializer._serialize_type_structure = current  # type: ignore[method-assign]


@given(st.dictionaries(st.text(min_size=1, max_size=6), _VALUES, max_size=6))
@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_items_serialise_exactly_as_moto_serialises_them(server: emulator_mod.Emulator, item: dict[str, Any]) -> None:
    """dynamodb.attribute_values: any item (nested maps and lists, binaries as bytes or as base64 text,
    sets, empty strings, maps and lists, and values moto's own path must take: not dicts, unknown or
    several members, empty map keys) is written exactly as moto's serializer writes it."""
    from moto.core.serialize import BaseJSONSerializer

    stock = patches.ORIGINALS["BaseJSONSerializer._serialize_type_structure"]
    assert stock is not None and BaseJSONSerializer._serialize_type_structure is not stock
    try:
        expected: Any = _serialize_get_item(item, stock)
    except Exception as exc:  # noqa: BLE001 - whatever moto raises, the patched path raises too
        with pytest.raises(type(exc)):
            _serialize_get_item(item, BaseJSONSerializer._serialize_type_structure)
        return
    assert _serialize_get_item(item, BaseJSONSerializer._serialize_type_structure) == expected


def _sized(size: Callable[[Any], int], value: Any) -> Any:
    try:
        return size(value)
    except Exception as exc:  # noqa: BLE001 - whatever moto raises, the patched size raises too
        return type(exc)


@given(st.one_of(_VALUES, st.sampled_from([{"N": 12345}, {"NS": [1, 22]}, {"M": {"n": {"N": -7}}}])),  # numbers moto built itself
       st.sampled_from(["as built", "a raw list element", "a raw map value", "a map value's raw list"]))
@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_values_measure_exactly_as_moto_measures_them(server: emulator_mod.Emulator, value: Any, shape: str) -> None:
    """dynamodb.attribute_values: DynamoType.size answers moto's number (or raises moto's error) for any
    value — nested maps, lists and sets, binaries, booleans, malformed values — and for values whose
    nested parts were changed after they were built (an update writes into them), where moto's method
    measures a list's elements as they are but re-wraps a map's values."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    stock = patches.ORIGINALS["DynamoType.size"]
    assert stock is not None and DynamoType.size is not stock
    try:
        built = DynamoType(value)
    except Exception:  # noqa: BLE001 - not a value moto can hold
        return
    if shape == "a raw list element":
        built = DynamoType({"L": [value]})
        built.value.append({"S": "raw"})
    elif shape == "a raw map value":
        built = DynamoType({"M": {"k": value}})
        built.value["raw"] = {"L": [{"S": "x"}, {"N": "12"}]}
    elif shape == "a map value's raw list":
        built = DynamoType({"M": {"k": {"L": [value]}}})
        built.value["k"].value.append({"M": {"a": {"BOOL": True}}})
    assert _sized(DynamoType.size, built) == _sized(stock, built)


def test_a_page_of_events_serialises_several_times_faster_than_stock(server: emulator_mod.Emulator) -> None:
    """A long timeline's page (10 events with a meta) is what the store reads every batch: moto's
    serializer took ~1-2 ms per page (docs/BENCHMARKS.md, "A long message's batches")."""
    from moto.core.serialize import BaseJSONSerializer

    entry = {"M": {"event": {"S": "STEP_1"}, "created_at": {"S": "2026-11-26T10:00:00.001Z"},
                   "received_at": {"S": "2026-11-26T10:00:01.000Z"}, "q": {"N": "12"},
                   "meta": {"M": {"payload": {"S": "m" * 150}}}}}
    page = {"pk": {"S": "chatty#long"}, "sk": {"S": "p#2026#e1#00000"}, "v": {"N": "1"},
            **{f"e:{n:032x}": entry for n in range(10)}}
    stock = patches.ORIGINALS["BaseJSONSerializer._serialize_type_structure"]

    def best(structure: Any) -> float:
        times = []
        for _ in range(30):
            start = time.perf_counter()
            _serialize_get_item(page, structure)
            times.append(time.perf_counter() - start)
        return min(times)

    assert best(stock) > 3 * best(BaseJSONSerializer._serialize_type_structure)
