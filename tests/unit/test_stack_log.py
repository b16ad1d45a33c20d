"""The local runtime's stack log (every function's stdout and stderr, line by line, as CloudWatch Logs
keeps them) and the CloudWatch resources it does not create (alarms, dashboards, log groups)."""

from __future__ import annotations

import functools
import io
import logging
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

from samlocal.logs import copy_lines
from samlocal.resources import provision
from samlocal.template import Stack
from samlocal.worker import LogCopy


def test_a_function_s_output_reaches_the_terminal_and_whole_lines_reach_the_log(tmp_path: Path) -> None:
    log = tmp_path / "stack.log"
    terminal = io.StringIO()
    out = LogCopy(terminal, str(log))
    for piece in ("{\"a\":", " 1}\n{\"b\"", ": 2}\npartial"):
        out.write(piece)
    assert terminal.getvalue() == '{"a": 1}\n{"b": 2}\npartial'
    assert log.read_text() == '{"a": 1}\n{"b": 2}\n'  # the unfinished line waits for its end
    out.write(" line\n")
    assert log.read_text().splitlines()[-1] == "partial line"
    assert out.getvalue() == terminal.getvalue()  # anything else is the stream's


def test_lines_of_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "stack.log"
    writers = [LogCopy(io.StringIO(), str(log)) for _ in range(4)]  # as four environments would

    def write(n: int) -> None:
        for i in range(300):
            writers[n].write(f"writer-{n}-line-{i}-" + "x" * 500 + "\n")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = log.read_text().splitlines()
    assert len(lines) == 1200
    assert all(line.startswith("writer-") and line.endswith("x" * 500) and line.count("writer-") == 1 for line in lines)


def test_a_child_process_output_is_copied_to_the_terminal_and_the_log(tmp_path: Path,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "stack.log"
    log.write_text("before\n")
    child = subprocess.Popen([sys.executable, "-c", "print('one'); print('two', end='')"], stdout=subprocess.PIPE)
    assert child.stdout is not None
    copy_lines(child.stdout, log)
    child.wait()
    assert log.read_text() == "before\none\ntwo\n"  # appended; a last line without its newline gets one
    assert capfd.readouterr().out == "one\ntwo"


TEMPLATE = {
    "Parameters": {"Email": {"Type": "String", "Default": ""}},
    "Conditions": {"HasEmail": {"Fn::Not": [{"Fn::Equals": [{"Ref": "Email"}, ""]}]}},
    "Resources": {
        "Work": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "Ops": {"Type": "AWS::SNS::Topic", "Properties": {}},
        "WorkAgeAlarm": {"Type": "AWS::CloudWatch::Alarm", "Properties": {
            "Namespace": "AWS/SQS", "MetricName": "ApproximateAgeOfOldestMessage",
            "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["Work", "QueueName"]}}],
            "AlarmActions": [{"Ref": "Ops"}]}},
        "Board": {"Type": "AWS::CloudWatch::Dashboard", "Properties": {"DashboardBody": "{}"}},
        "Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": 30}},
        "Mail": {"Type": "AWS::SNS::Subscription", "Condition": "HasEmail",
                 "Properties": {"TopicArn": {"Ref": "Ops"}, "Protocol": "email", "Endpoint": {"Ref": "Email"}}},
        "Odd": {"Type": "AWS::Something::Unknown", "Properties": {}},
    },
}


def test_cloudwatch_resources_are_not_created_and_one_info_line_says_why(aws_credentials: None,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    from moto import mock_aws

    with mock_aws(), caplog.at_level(logging.INFO, logger="samlocal.resources"):
        stack = Stack(TEMPLATE, root=Path("."), name="obs")
        skipped = provision(stack, functools.cache(lambda service: boto3.client(service, region_name="us-east-1")))
        assert boto3.client("cloudwatch", region_name="us-east-1").describe_alarms()["MetricAlarms"] == []
    assert sorted(skipped) == ["Board", "Logs", "Odd", "WorkAgeAlarm"]  # Mail's condition is false: no resource
    info = {r.type: r.logical_ids for r in caplog.records if r.getMessage() == "not created locally"}  # type: ignore[attr-defined]
    assert info == {"AWS::CloudWatch::Alarm": ["WorkAgeAlarm"], "AWS::CloudWatch::Dashboard": ["Board"],
                    "AWS::Logs::LogGroup": ["Logs"]}
    warned = [r.logical_id for r in caplog.records if r.levelno == logging.WARNING]  # type: ignore[attr-defined]
    assert warned == ["Odd"]  # a type the runtime does not know is still a warning


def test_an_sns_subscription_is_created_and_a_queue_subscriber_receives(aws_credentials: None,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    from moto import mock_aws

    template = {"Parameters": {"Email": {"Type": "String", "Default": "ops@example.com"}},
                "Resources": {
                    "Topic": {"Type": "AWS::SNS::Topic", "Properties": {}},
                    "Inbox": {"Type": "AWS::SQS::Queue", "Properties": {}},
                    "ToInbox": {"Type": "AWS::SNS::Subscription", "Properties": {
                        "TopicArn": {"Ref": "Topic"}, "Protocol": "sqs", "Endpoint": {"Fn::GetAtt": ["Inbox", "Arn"]},
                        "RawMessageDelivery": True}},
                    "ToMail": {"Type": "AWS::SNS::Subscription", "Properties": {
                        "TopicArn": {"Ref": "Topic"}, "Protocol": "email", "Endpoint": {"Ref": "Email"}}}}}
    with mock_aws(), caplog.at_level(logging.INFO, logger="samlocal.resources"):
        stack = Stack(template, root=Path("."), name="subs")
        assert provision(stack, functools.cache(lambda service: boto3.client(service, region_name="us-east-1"))) == []
        sns, sqs = boto3.client("sns", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        subs = sns.list_subscriptions_by_topic(TopicArn=stack.ref("Topic"))["Subscriptions"]
        assert sorted(s["Protocol"] for s in subs) == ["email", "sqs"]
        sns.publish(TopicArn=stack.ref("Topic"), Message="hello")
        got = sqs.receive_message(QueueUrl=stack.ref("Inbox"), WaitTimeSeconds=1)["Messages"]
        assert [m["Body"] for m in got] == ["hello"]  # raw delivery, as the template asked
    said = [r for r in caplog.records if r.getMessage() == "subscription not delivered locally"]
    assert [r.logical_id for r in said] == ["ToMail"]  # type: ignore[attr-defined]
