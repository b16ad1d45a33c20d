"""`mars redrive` under moto: template.yaml's queues (mocked_stack), the deployed path (--stack-outputs)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from mars_common.events import parse_event
from mars_common.sharding import message_key, shard

from mars import redrive, stacks


@pytest.fixture
def stack(mocked_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The stack's outputs, also written where --stack-outputs reads them; receives do not long-poll."""
    monkeypatch.setattr(redrive, "RECEIVE_WAIT_SECONDS", 0)
    outputs = mocked_stack.output_values()
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return {"outputs": outputs, "file": str(path), "sqs": boto3.client("sqs", region_name="us-east-1")}


def run(stack: dict[str, Any], capsys: pytest.CaptureFixture[str], *args: str, outputs: str | None = None) -> tuple[int, Any, str]:
    code = redrive.main(["--stack-outputs", outputs or stack["file"], "--json", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def event(app: str, mid: str, name: str, second: int, **extra: Any) -> str:
    return parse_event({"app_id": app, "message_id": mid, "event": name,
                        "created_at": f"2026-11-26T10:00:{second:02d}Z", **extra}).to_json()


def dead_letter(stack: dict[str, Any], body: str, group: str) -> None:
    stack["sqs"].send_message(QueueUrl=stack["outputs"]["DeadLetterQueueUrl"], MessageBody=body, MessageGroupId=group,
                              MessageDeduplicationId=uuid.uuid4().hex)


def drain(stack: dict[str, Any], url: str) -> list[dict[str, Any]]:
    """Every message of a queue, in receive order (deleted as they are read)."""
    sqs, out = stack["sqs"], []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                  MessageSystemAttributeNames=["All"]).get("Messages", [])
        if not got:
            return out
        out += got
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def queue_urls(stack: dict[str, Any]) -> list[str]:
    return stack["outputs"]["EventsQueueUrls"].split(",")


def mids_in_shard(count: int, index: int, queues: int = 10) -> list[str]:
    out, n = [], 0
    while len(out) < count:
        if shard("shop", f"m-{n}", queues) == index:
            out.append(f"m-{n}")
        n += 1
    return out


GROUPS = {"m-a": 8, "m-b": 7, "m-c": 4}  # message → its events (20 with the garbage: two receives)


def fill_events_dlq(stack: dict[str, Any]) -> dict[str, list[str]]:
    """Events of three messages, interleaved, plus one body that is not an event; returns each message's bodies."""
    bodies = {mid: [event("shop", mid, f"STEP_{i}", i) for i in range(n)] for mid, n in GROUPS.items()}
    cursors = dict.fromkeys(GROUPS, 0)
    sent = 0
    while any(cursors[m] < n for m, n in GROUPS.items()):
        for mid, n in GROUPS.items():
            if cursors[mid] < n:
                dead_letter(stack, bodies[mid][cursors[mid]], message_key("shop", mid))
                cursors[mid] += 1
                sent += 1
                if sent == 5:
                    dead_letter(stack, '{"app_id": "shop", "colour": "red"}', "poison-group")
    return bodies


def test_events_go_back_to_their_shard_in_group_order_and_garbage_stays(stack: dict[str, Any],
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    bodies = fill_events_dlq(stack)
    code, report, err = run(stack, capsys, "--queue", "events")
    assert code == 0, err
    urls = queue_urls(stack)
    expected: dict[str, int] = {}
    for mid, n in GROUPS.items():
        name = redrive.queue_name(urls[shard("shop", mid, 10)])
        expected[name] = expected.get(name, 0) + n
    assert report["moved"] == expected
    assert report["kept"]["events"]["invalid"]["count"] == 1
    assert "colour" in report["kept"]["events"]["invalid"]["sample"]
    assert report["received"] == {"events": 20} and report["remaining"] == {"events": 1} and report["dry_run"] is False

    for mid in GROUPS:
        got = [m for m in drain(stack, urls[shard("shop", mid, 10)])
               if m["Attributes"]["MessageGroupId"] == message_key("shop", mid)]
        assert [m["Body"] for m in got] == bodies[mid], "every event once, in its group's order"
        assert all(m["MessageAttributes"][redrive.RUN_ATTRIBUTE]["StringValue"] for m in got)
    left = drain(stack, stack["outputs"]["DeadLetterQueueUrl"])
    assert [m["Body"] for m in left] == ['{"app_id": "shop", "colour": "red"}'], "the garbage is still in the DLQ"


def test_redriven_events_get_a_new_deduplication_id(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    body = event("shop", "m-dedup", "CREATED", 1)
    original = "original-dedup-id"
    stack["sqs"].send_message(QueueUrl=stack["outputs"]["DeadLetterQueueUrl"], MessageBody=body,
                              MessageGroupId=message_key("shop", "m-dedup"), MessageDeduplicationId=original)
    assert run(stack, capsys)[0] == 0
    [moved] = drain(stack, queue_urls(stack)[shard("shop", "m-dedup", 10)])
    assert moved["Body"] == body
    assert moved["Attributes"]["MessageDeduplicationId"] not in ("", original)


def test_dry_run_changes_nothing_and_leaves_the_messages_visible(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bodies = fill_events_dlq(stack)
    code, report, err = run(stack, capsys, "--dry-run")
    assert code == 0 and report["dry_run"] is True
    # One receive (10) sees the heads of the 4 groups; SQS hides the rest of a group while its head is
    # held, and a dry run holds all it has seen: the other 10 are reported as not inspected.
    assert report["received"]["events"] == 10 and report["kept"]["events"]["invalid"]["count"] == 1
    assert sum(report["moved"].values()) == 9 and set(report["moved"]) == {
        redrive.queue_name(queue_urls(stack)[shard("shop", mid, 10)]) for mid in GROUPS}
    assert report["remaining"]["events"] == 20 and report["unreceived"]["events"] == 10
    assert "not inspected" in err
    for url in queue_urls(stack):
        assert drain(stack, url) == [], "nothing was sent"
    left = drain(stack, stack["outputs"]["DeadLetterQueueUrl"])  # visible again at once: no wait for a timeout
    assert len(left) == 20
    for mid in GROUPS:
        assert [m["Body"] for m in left if m["Attributes"]["MessageGroupId"] == message_key("shop", mid)] == bodies[mid]


def test_dry_run_sees_a_whole_queue_of_many_groups(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(25):
        dead_letter(stack, event("shop", f"m-{i}", "CREATED", 1), message_key("shop", f"m-{i}"))
    code, report, _ = run(stack, capsys, "--dry-run")
    assert code == 0 and sum(report["moved"].values()) == 25 and report["unreceived"]["events"] == 0
    assert len(drain(stack, stack["outputs"]["DeadLetterQueueUrl"])) == 25


def test_dry_run_then_redrive_still_keeps_the_order(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bodies = fill_events_dlq(stack)
    assert run(stack, capsys, "--dry-run")[0] == 0
    assert run(stack, capsys)[0] == 0
    for mid in GROUPS:
        got = drain(stack, queue_urls(stack)[shard("shop", mid, 10)])
        assert [m["Body"] for m in got if m["Attributes"]["MessageGroupId"] == message_key("shop", mid)] == bodies[mid]


def test_a_failed_send_deletes_nothing_of_its_group_and_exits_1(stack: dict[str, Any], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    broken_mid, fine_mid = mids_in_shard(1, 4)[0], mids_in_shard(1, 7)[0]
    for i in range(3):
        dead_letter(stack, event("shop", broken_mid, f"S{i}", i), message_key("shop", broken_mid))
        dead_letter(stack, event("shop", fine_mid, f"S{i}", i), message_key("shop", fine_mid))
    outputs = dict(stack["outputs"])
    urls = queue_urls(stack)
    urls[4] = urls[4].replace("EventsQueue4", "NoSuchQueue")
    outputs["EventsQueueUrls"] = ",".join(urls)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(outputs))

    code, report, err = run(stack, capsys, outputs=str(path))
    assert code == 1
    assert report["moved"] == {redrive.queue_name(urls[7]): 3}
    kept = report["kept"]["events"]
    assert kept["send_failed"]["count"] == 1 and "NoSuchQueue" in kept["send_failed"]["sample"]
    assert kept["blocked"]["count"] == 2, "the group's later messages are not sent past the failed one"
    assert "send" in err and "again" in err  # what to do next
    left = drain(stack, stack["outputs"]["DeadLetterQueueUrl"])
    assert [json.loads(m["Body"])["event"] for m in left] == ["S0", "S1", "S2"], "all of that group, in order"
    assert len(drain(stack, urls[7])) == 3


def test_limit_moves_the_first_n(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bodies = [event("shop", "m-limit", f"S{i}", i) for i in range(15)]
    for body in bodies:
        dead_letter(stack, body, message_key("shop", "m-limit"))
    code, report, err = run(stack, capsys, "--limit", "4")
    assert code == 0 and sum(report["moved"].values()) == 4
    assert report["remaining"]["events"] == 11 and report["unreceived"]["events"] == 11
    assert "--limit" in err
    assert [m["Body"] for m in drain(stack, queue_urls(stack)[shard("shop", "m-limit", 10)])] == bodies[:4]
    assert [m["Body"] for m in drain(stack, stack["outputs"]["DeadLetterQueueUrl"])] == bodies[4:]


def test_ingest_invalid_is_kept_and_failed_deliveries_go_back(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    sqs, dlq, ingest = stack["sqs"], stack["outputs"]["IngestDeadLetterQueueUrl"], stack["outputs"]["IngestQueueUrl"]
    # as RouterFunction's _dead_letter writes an invalid producer message
    sqs.send_message(QueueUrl=dlq, MessageBody='{"app_id": "shop"}', MessageAttributes={
        "ErrorMessage": {"DataType": "String", "StringValue": '[{"field": "message_id", "message": "is required"}]'},
        "Source": {"DataType": "String", "StringValue": "sqs"}})
    # as Lambda's async DLQ writes a failed SNS delivery: the invocation event, the error in attributes
    sns_message = json.dumps({"app_id": "shop", "message_id": "m-sns", "event": "CREATED"})
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"Records": [{"EventSource": "aws:sns", "Sns": {
        "Type": "Notification", "Message": sns_message, "Timestamp": "2026-11-26T09:00:00.000Z"}}]}), MessageAttributes={
        "RequestID": {"DataType": "String", "StringValue": "req-1"},
        "ErrorCode": {"DataType": "Number", "StringValue": "200"},
        "ErrorMessage": {"DataType": "String", "StringValue": "EnqueueFailedError"}})
    # as IngestQueue's redrive policy moves a message the router failed on (no created_at: the send time stands in)
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"events": [{"app_id": "shop", "message_id": "m-sqs", "event": "A"}]}),
                     MessageAttributes={"producer": {"DataType": "String", "StringValue": "billing"}})
    complete = json.dumps({"app_id": "shop", "message_id": "m-sqs", "event": "B", "created_at": "2026-11-26T09:00:05Z"})
    sqs.send_message(QueueUrl=dlq, MessageBody=complete)

    code, report, _ = run(stack, capsys, "--queue", "ingest")
    assert code == 0
    assert report["moved"] == {redrive.queue_name(ingest): 3}
    assert report["kept"] == {"ingest": {"invalid": {"count": 1, "sample": 'refused by the router: [{"field": "message_id", '
                                                                           '"message": "is required"}]'}}}
    got = {json.loads(m["Body"]).get("message_id", "bulk"): m for m in drain(stack, ingest)}
    sns = json.loads(got["m-sns"]["Body"])
    assert sns == {**json.loads(sns_message), "created_at": "2026-11-26T09:00:00.000000Z"}, "the SNS Timestamp stands in"
    assert "RequestID" not in got["m-sns"]["MessageAttributes"]
    bulk = got["bulk"]
    assert json.loads(bulk["Body"])["events"][0]["created_at"].startswith("20"), "the original SentTimestamp stands in"
    assert bulk["MessageAttributes"]["producer"]["StringValue"] == "billing"
    assert got["m-sqs"]["Body"] == complete, "a complete body is sent unchanged"
    left = drain(stack, dlq)
    assert [m["Body"] for m in left] == ['{"app_id": "shop"}']
    assert left[0]["MessageAttributes"]["Source"]["StringValue"] == "sqs", "kept as it was"


def test_include_invalid_resends_without_the_routers_marks(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    sqs, dlq, ingest = stack["sqs"], stack["outputs"]["IngestDeadLetterQueueUrl"], stack["outputs"]["IngestQueueUrl"]
    sqs.send_message(QueueUrl=dlq, MessageBody='{"app_id": "shop", "message_id": "m", "event": "E", "tenant": "x"}',
                     MessageAttributes={"ErrorMessage": {"DataType": "String", "StringValue": "tenant: not a known field"},
                                        "Source": {"DataType": "String", "StringValue": "sns"}})
    code, report, _ = run(stack, capsys, "--queue", "ingest", "--include-invalid")
    assert code == 0 and report["moved"] == {redrive.queue_name(ingest): 1} and report["kept"] == {}
    [resent] = drain(stack, ingest)
    assert set(resent["MessageAttributes"]) == {redrive.RUN_ATTRIBUTE}


def test_an_unknown_lambda_record_is_kept_and_exits_1(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    stack["sqs"].send_message(QueueUrl=stack["outputs"]["IngestDeadLetterQueueUrl"], MessageBody='{"some": "event"}',
                              MessageAttributes={"RequestID": {"DataType": "String", "StringValue": "r"},
                                                 "ErrorCode": {"DataType": "Number", "StringValue": "200"}})
    code, report, err = run(stack, capsys, "--queue", "ingest")
    assert code == 1 and report["kept"]["ingest"]["unrecognised"]["count"] == 1 and report["moved"] == {}
    assert "receive-message" in err  # how to look at it
    assert len(drain(stack, stack["outputs"]["IngestDeadLetterQueueUrl"])) == 1


def test_a_message_back_in_the_same_run_is_not_sent_round_again(stack: dict[str, Any]) -> None:
    queues = redrive.queues_from_outputs(stack["outputs"], redrive.DLQS)
    run_ = redrive.Redrive(stack["sqs"], queues)
    stack["sqs"].send_message(QueueUrl=queues.events_dlq, MessageBody=event("shop", "m-back", "X", 1),
                              MessageGroupId=message_key("shop", "m-back"), MessageDeduplicationId="d",
                              MessageAttributes={redrive.RUN_ATTRIBUTE: {"DataType": "String", "StringValue": run_.run_id}})
    report = run_.run(["events"])
    assert report.moved == {} and report.kept["events"]["returned"].count == 1 and report.exit_code() == 1


def test_empty_queues_print_a_table_and_exit_0(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert redrive.main(["--stack-outputs", stack["file"]]) == 0
    out = capsys.readouterr().out
    assert "Redrove 0 of 0 dead letters received." in out and "events 0, ingest 0" in out


def test_table_lists_targets_and_kept_reasons(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    fill_events_dlq(stack)
    assert redrive.main(["--stack-outputs", stack["file"], "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Dry run: 9 of 10 dead letters received would be redriven; nothing was changed."
    assert out[-1] == "In the dead-letter queues now: events 20 (10 not inspected), ingest 0, delivery 0"
    assert out[2].split() == ["TARGET", "QUEUE", "WOULD", "MOVE"]
    kept = next(i for i, line in enumerate(out) if line.startswith("KEPT IN"))
    assert out[kept + 1].split()[:3] == ["events", "invalid", "1"]


def test_json_shape(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    dead_letter(stack, "not json", "g")
    code, report, _ = run(stack, capsys)
    assert code == 0
    assert set(report) == {"moved", "kept", "dry_run", "received", "remaining", "unreceived", "errors"}
    assert report["kept"]["events"]["invalid"]["sample"].startswith("not a valid event")
    assert report["moved"] == {} and report["errors"] == [] and report["received"] == {"events": 1, "ingest": 0, "delivery": 0}


def test_no_running_stack_and_bad_usage_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert redrive.main(["--state-dir", str(tmp_path), "--stack-name", "nope"]) == 2
    assert "make up" in capsys.readouterr().err
    for bad in (["--limit", "0"], ["--queue", "dlq"], ["--limit", "x"]):
        with pytest.raises(SystemExit) as exc:
            redrive.main(bad)
        assert exc.value.code == 2
    (tmp_path / "junk.json").write_text("{")
    assert redrive.main(["--stack-outputs", str(tmp_path / "junk.json")]) == 2
    (tmp_path / "other.json").write_text(json.dumps({"ApiUrl": "x"}))
    assert redrive.main(["--stack-outputs", str(tmp_path / "other.json")]) == 2
    assert "DeadLetterQueueUrl" in capsys.readouterr().err


def test_unreachable_queue_exits_2(stack: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = {**stack["outputs"], "DeadLetterQueueUrl": stack["outputs"]["DeadLetterQueueUrl"] + "-gone"}
    (tmp_path / "gone.json").write_text(json.dumps(outputs))
    assert redrive.main(["--stack-outputs", str(tmp_path / "gone.json"), "--queue", "events"]) == 2
    assert "cannot read the events dead-letter queue" in capsys.readouterr().err


@pytest.mark.parametrize("shape", ["flat", "describe-stacks", "outputs-list"])
def test_stack_outputs_file_formats(tmp_path: Path, shape: str) -> None:
    flat = {"DeadLetterQueueUrl": "https://sqs.eu-west-1.amazonaws.com/1/dlq.fifo", "EventsQueueUrls": "a,b"}
    listed = [{"OutputKey": k, "OutputValue": v} for k, v in flat.items()]
    data = {"flat": flat, "describe-stacks": {"Stacks": [{"StackName": "mars", "Outputs": listed}]}, "outputs-list": listed}[shape]
    (tmp_path / "o.json").write_text(json.dumps(data))
    assert stacks.read_outputs_file(tmp_path / "o.json") == flat
    assert redrive._region_of(flat["DeadLetterQueueUrl"]) == "eu-west-1"


@pytest.mark.parametrize(("attributes", "body", "expected"), [
    ({"RequestID": "r", "ErrorCode": "200", "ErrorMessage": "boom"},
     json.dumps({"Records": [{"Sns": {"Message": '{"a": 1}', "Timestamp": "x"}}]}), ("send", '{"a": 1}')),
    ({"ErrorMessage": "bad", "Source": "sns"}, "{}", ("kept", "invalid")),
    ({"ErrorMessage": "a producer's own attribute"}, '{"a": 1}', ("send", '{"a": 1}')),
    ({"Source": "sqs"}, '{"a": 1}', ("send", '{"a": 1}')),
    ({}, "not json", ("send", "not json")),
    ({"RequestID": "r", "ErrorCode": "200"}, '{"Records": []}', ("kept", "unrecognised")),
])
def test_ingest_classification(attributes: dict[str, str], body: str, expected: tuple[str, str]) -> None:
    message = {"MessageId": "1", "Body": body, "Attributes": {},
               "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}}
    plan = redrive.plan_ingest(message, "https://ingest", "run", include_invalid=False)
    assert (("kept", plan.kept) if plan.kept else ("send", plan.sends[0]["MessageBody"])) == expected


def test_created_at_is_filled_only_where_missing() -> None:
    assert redrive.with_created_at('{"a": 1}', None) == '{"a": 1}'
    assert redrive.with_created_at('{"created_at": "t0"}', "t1") == '{"created_at": "t0"}'
    assert json.loads(redrive.with_created_at('{"created_at": ""}', "t1")) == {"created_at": "t1"}
    bulk = json.loads(redrive.with_created_at('{"events": [{"created_at": "t0"}, {}, 3]}', "t1"))
    assert bulk == {"events": [{"created_at": "t0"}, {"created_at": "t1"}, 3]}
    assert redrive.with_created_at("[1]", "t1") == "[1]" and redrive.with_created_at("nope", "t1") == "nope"


class FailingDeletes:
    """The real (moto) client, except that deletes from the DLQ fail."""

    def __init__(self, sqs: Any) -> None:
        self.sqs = sqs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sqs, name)

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        return {"Successful": [], "Failed": [{"Id": e["Id"], "Code": "InternalError", "Message": "try later",
                                              "SenderFault": False} for e in Entries]}


def test_a_failed_delete_is_reported_and_the_message_stays(stack: dict[str, Any]) -> None:
    body = event("shop", "m-del", "X", 1)
    dead_letter(stack, body, message_key("shop", "m-del"))
    queues = redrive.queues_from_outputs(stack["outputs"], redrive.DLQS)
    report = redrive.Redrive(FailingDeletes(stack["sqs"]), queues).run(["events"])
    assert sum(report.moved.values()) == 1 and report.exit_code() == 1
    assert "sent but not deleted" in report.errors[0] and "harmless" in report.errors[0]
    assert [m["Body"] for m in drain(stack, queue_urls(stack)[shard("shop", "m-del", 10)])] == [body]
    assert report.remaining["events"] == 1


def test_long_runs_show_progress_on_stderr(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    url = stack["outputs"]["IngestDeadLetterQueueUrl"]
    for k in range(0, 230, 10):
        stack["sqs"].send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"app_id": "shop", "message_id": f"m-{k + i}", "event": "E"})}
            for i in range(10)])
    code, report, err = run(stack, capsys, "--queue", "ingest")
    assert code == 0 and report["moved"] == {redrive.queue_name(stack["outputs"]["IngestQueueUrl"]): 230}
    lines = [line for line in err.splitlines() if line.startswith("redrive ingest:")]
    assert lines == ["redrive ingest: 100 received, 100 moved, 0 kept", "redrive ingest: 200 received, 200 moved, 0 kept"]


def test_dead_lettered_alert_deliveries_go_back_with_a_fresh_window(stack: dict[str, Any],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import time

    outputs, sqs = stack["outputs"], stack["sqs"]
    body = {"v": 1, "app_id": "shop", "destination_id": "dst_0123456789abcdef", "webhook_id": "msg_1",
            "first_attempt_at": 5.0, "alert": {"alert_id": "a1", "app_id": "shop", "state": "firing"}}
    sqs.send_message(QueueUrl=outputs["AlertDeliveryDeadLetterQueueUrl"], MessageBody=json.dumps(body),
                     MessageAttributes={"ErrorMessage": {"DataType": "String", "StringValue": "HTTP 500: no"}})
    sqs.send_message(QueueUrl=outputs["AlertDeliveryDeadLetterQueueUrl"], MessageBody="junk")
    before = time.time()
    code, report, _ = run(stack, capsys, "--queue", "delivery")
    assert code == 0 and report["moved"] == {redrive.queue_name(outputs["AlertDeliveryQueueUrl"]): 1}
    assert report["kept"]["delivery"]["invalid"]["count"] == 1
    (back,) = drain(stack, outputs["AlertDeliveryQueueUrl"])
    resent = json.loads(back["Body"])
    assert resent["first_attempt_at"] >= before and {**resent, "first_attempt_at": 5.0} == body
    assert "ErrorMessage" not in back.get("MessageAttributes", {})
    # `all` (the default) includes it; a stack made before the delivery queue existed is skipped, not refused
    assert run(stack, capsys)[1]["received"]["delivery"] == 1  # the junk one, kept
    old = {k: v for k, v in outputs.items() if not k.startswith("AlertDelivery")}
    (Path(stack["file"]).parent / "old.json").write_text(json.dumps(old))
    code, report, _ = run(stack, capsys, outputs=str(Path(stack["file"]).parent / "old.json"))
    assert code == 0 and set(report["received"]) == {"events", "ingest"}
    assert redrive.main(["--stack-outputs", str(Path(stack["file"]).parent / "old.json"), "--queue", "delivery"]) == 2
