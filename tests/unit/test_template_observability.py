"""template.yaml operates Mars like an AWS service: tracing on, an alarm for every dead-letter queue,
events queue, function, stream consumer and the REST API, each notifying OperatorTopic; a log group
with the retention parameter per function; a dashboard. Everything is derived from the template, so a
new function, queue or stream consumer without its alarms fails here."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from samlocal.template import load
from tests.conftest import ROOT

T = load(ROOT / "template.yaml")
RES: dict[str, dict[str, Any]] = T["Resources"]
FUNCTIONS = sorted(lid for lid, r in RES.items() if r["Type"] == "AWS::Serverless::Function")
QUEUES = {lid: r.get("Properties", {}) for lid, r in RES.items() if r["Type"] == "AWS::SQS::Queue"}


def _ref(value: Any) -> str | None:
    """The logical id a Ref / GetAtt / the first ${X} of a Sub names."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else target.split(".")[0])
        if "Fn::Sub" in value:
            found = re.search(r"\$\{([A-Za-z0-9]+)", str(value["Fn::Sub"]))
            return found.group(1) if found else None
    return None


def _dead_letter_queues() -> set[str]:
    """Every queue a RedrivePolicy, a function's DeadLetterQueue or an on-failure destination names."""
    found = {_ref(p["RedrivePolicy"]["deadLetterTargetArn"]) for p in QUEUES.values() if "RedrivePolicy" in p}
    for lid in FUNCTIONS:
        props = RES[lid]["Properties"]
        if "DeadLetterQueue" in props:
            found.add(_ref(props["DeadLetterQueue"]["TargetArn"]))
        for event in props.get("Events", {}).values():
            failure = event.get("Properties", {}).get("DestinationConfig", {}).get("OnFailure", {})
            if failure.get("Type") == "SQS":
                found.add(_ref(failure["Destination"]))
    return {q for q in found if q is not None}


def _stream_consumers() -> set[str]:
    return {lid for lid in FUNCTIONS
            for e in RES[lid]["Properties"].get("Events", {}).values() if e["Type"] in ("DynamoDB", "Kinesis")}


def _alarms(metric: str) -> dict[str, set[str]]:
    """Alarms on `metric`, by the logical id their first dimension names."""
    out: dict[str, set[str]] = {}
    for lid, r in RES.items():
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"]["MetricName"] == metric:
            target = _ref(r["Properties"]["Dimensions"][0]["Value"])
            out.setdefault(str(target), set()).add(lid)
    return out


def test_the_template_has_what_the_checks_below_derive_from() -> None:
    assert len(FUNCTIONS) >= 8
    assert {"DeadLetterQueue", "IngestDeadLetterQueue", "BroadcastFailureQueue"} <= _dead_letter_queues()
    assert "BroadcastFunction" in _stream_consumers()


def test_every_alarm_notifies_the_operator_topic() -> None:
    alarms = {lid: r for lid, r in RES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert len(alarms) >= 3 + 11 + 2 * len(FUNCTIONS) + 1 + 1
    for lid, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": "OperatorTopic"}], lid
        assert props["OKActions"] == [{"Ref": "OperatorTopic"}], lid
        assert props["TreatMissingData"] == "notBreaching", lid
    assert RES["OperatorTopic"]["Type"] == "AWS::SNS::Topic"
    assert T["Outputs"]["OperatorTopicArn"]["Value"] == {"Ref": "OperatorTopic"}


def test_the_operator_email_subscription_is_optional() -> None:
    sub = RES["OperatorEmailSubscription"]
    assert sub["Condition"] == "HasOperatorEmail"
    assert sub["Properties"]["Protocol"] == "email"
    assert sub["Properties"]["Endpoint"] == {"Ref": "OperatorEmail"}
    assert T["Parameters"]["OperatorEmail"]["Default"] == ""


def test_every_dead_letter_queue_alarms_when_a_message_is_visible() -> None:
    alarms = _alarms("ApproximateNumberOfMessagesVisible")
    for queue in _dead_letter_queues():
        assert queue in alarms, f"{queue} has no dead-letter alarm"
        for lid in alarms[queue]:
            props = RES[lid]["Properties"]
            assert (props["Namespace"], props["Threshold"], props["ComparisonOperator"]) == \
                ("AWS/SQS", 0, "GreaterThanThreshold")


def test_every_queue_that_feeds_a_function_alarms_on_its_oldest_message() -> None:
    dead = _dead_letter_queues()
    fed = {q for q in QUEUES if q not in dead}
    assert len([q for q in fed if str(QUEUES[q].get("FifoQueue")).lower() == "true"]) == 10
    assert "IngestQueue" in fed
    alarms = _alarms("ApproximateAgeOfOldestMessage")
    missing = sorted(q for q in fed if q not in alarms)
    assert not missing, f"queues without an oldest-age alarm: {missing}"
    for q in fed:
        for lid in alarms[q]:
            assert RES[lid]["Properties"]["Threshold"] == {"Ref": "QueueAgeAlarmSeconds"}


@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_every_function_alarms_on_errors_and_throttles(metric: str) -> None:
    alarms = _alarms(metric)
    missing = [f for f in FUNCTIONS if f not in alarms]
    assert not missing, f"functions without a {metric} alarm: {missing}"
    for f in FUNCTIONS:
        for lid in alarms[f]:
            assert RES[lid]["Properties"]["Namespace"] == "AWS/Lambda"
            assert RES[lid]["Properties"]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": f}}]


def test_every_stream_consumer_alarms_on_its_iterator_age() -> None:
    alarms = _alarms("IteratorAge")
    missing = sorted(f for f in _stream_consumers() if f not in alarms)
    assert not missing, f"stream consumers without an IteratorAge alarm: {missing}"


def test_the_rest_api_alarms_on_5xx_by_its_name_and_stage() -> None:
    alarms = [r["Properties"] for r in RES.values()
              if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"]["MetricName"] == "5XXError"]
    assert len(alarms) == 1
    dims = {d["Name"]: d["Value"] for d in alarms[0]["Dimensions"]}
    assert dims == {"ApiName": RES["MarsApi"]["Properties"]["Name"], "Stage": {"Ref": "Stage"}}


def test_tracing_is_active_on_every_function_and_the_rest_api() -> None:
    assert T["Globals"]["Function"]["Tracing"] == "Active"
    for f in FUNCTIONS:
        assert RES[f]["Properties"].get("Tracing", "Active") == "Active", f
    apis = [r for r in RES.values() if r["Type"] == "AWS::Serverless::Api"]
    assert apis and all(r["Properties"]["TracingEnabled"] is True for r in apis)


def test_every_function_logs_to_its_own_group_with_the_retention_parameter() -> None:
    assert T["Parameters"]["LogRetentionDays"]["Default"] == 30
    for f in FUNCTIONS:
        group = RES[f]["Properties"].get("LoggingConfig", {}).get("LogGroup")
        assert group is not None, f"{f} has no LoggingConfig.LogGroup"
        lid = _ref(group)
        assert RES[str(lid)]["Type"] == "AWS::Logs::LogGroup"
        assert RES[str(lid)]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_dashboard_shows_the_mars_metrics_and_every_queue() -> None:
    from mars_common import metrics as m

    dashboards = [r for r in RES.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    assert len(dashboards) == 1
    body = dashboards[0]["Properties"]["DashboardBody"]["Fn::Sub"]
    # the body is JSON once ${...} are substituted: parse it with placeholders
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "X", body))["widgets"]
    assert len(widgets) >= 8
    for name in (m.EVENTS_ACCEPTED, m.EVENTS_STORED, m.DUPLICATES_DROPPED, m.INGEST_REJECTED, m.STORE_LATENCY,
                 m.BATCH_SIZE, m.ALERTS_FIRED, m.WEBSOCKET_PUSHES, m.GONE_CONNECTIONS):
        assert re.search(rf'\b{name}\b', body), name
    # a conditional resource (TraceExport*: only with OtlpExportEndpoint) cannot be named in the body's
    # Fn::Sub: a stack without it would fail to deploy; its alarms carry its condition instead (below)
    for queue in QUEUES:
        assert (f"${{{queue}.QueueName}}" in body) != ("Condition" in RES[queue]), queue
    for f in FUNCTIONS:
        assert (f"${{{f}}}" in body) != ("Condition" in RES[f]), f


def test_a_conditional_resources_alarms_and_log_group_share_its_condition() -> None:
    conditional = {lid: r["Condition"] for lid, r in RES.items() if "Condition" in r
                   and r["Type"] in ("AWS::Serverless::Function", "AWS::SQS::Queue")}
    assert {"TraceExportFunction", "TraceExportFailureQueue"} <= set(conditional)
    for lid, r in RES.items():
        if r["Type"] == "AWS::CloudWatch::Alarm":
            target = _ref(r["Properties"]["Dimensions"][0]["Value"])
            assert r.get("Condition") == conditional.get(str(target)), lid
    for f, condition in conditional.items():
        if f in FUNCTIONS:
            assert RES[f"{f}LogGroup"].get("Condition") == condition, f
