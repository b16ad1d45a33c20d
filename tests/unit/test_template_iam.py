"""template.yaml's IAM, read back: each function may call only what its code calls (issue 12, item 9).

The expected table below is the grep of each function's AWS calls (functions/*/app.py and the layer
modules it uses); SAM policy templates are expanded to the actions SAM grants for them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from samlocal.template import load
from tests.conftest import ROOT

DDB_READ = {"dynamodb:GetItem", "dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:Scan", "dynamodb:Query",
            "dynamodb:UpdateItem", "dynamodb:BatchWriteItem", "dynamodb:BatchGetItem", "dynamodb:DescribeTable",
            "dynamodb:ConditionCheckItem"}  # DynamoDBCrudPolicy: SAM's policy_templates.json
SAM_TEMPLATES: dict[str, tuple[set[str], str]] = {  # name: (actions, the property naming the resource)
    "DynamoDBCrudPolicy": (DDB_READ, "TableName"),
    "DynamoDBReadPolicy": ({"dynamodb:GetItem", "dynamodb:Scan", "dynamodb:Query", "dynamodb:BatchGetItem",
                            "dynamodb:DescribeTable"}, "TableName"),
    "LambdaInvokePolicy": ({"lambda:InvokeFunction"}, "FunctionName"),
    "SNSPublishMessagePolicy": ({"sns:Publish"}, "TopicName"),
    "SQSSendMessagePolicy": ({"sqs:SendMessage*", "sqs:ChangeMessageVisibility*"}, "QueueName"),
}
QUEUES = {f"EventsQueue{i}" for i in range(10)}
INDEX = "/index/*"

# function -> {(action, resource)}; resource "X" is X's ARN, "X/index/*" its indexes, "*" any.
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "ApiFunction": {
        *{(a, q) for q in QUEUES for a in ("sqs:SendMessage", "sqs:GetQueueAttributes")},
        ("sqs:GetQueueAttributes", "DeadLetterQueue"), ("sqs:GetQueueAttributes", "IngestDeadLetterQueue"),
        # /api/q/stats and /status: the failure queues too (TraceExportFailureQueue when it exists)
        *{("sqs:GetQueueAttributes", q) for q in ("AlertsFailureQueue", "BroadcastFailureQueue",
                                                  "AlertDeliveryDeadLetterQueue", "TraceExportFailureQueue")},
        ("cloudwatch:GetMetricData", "*"),
        *{(a, r) for r in ("MessagesTable", "MessagesTable" + INDEX)
          for a in ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:DescribeTable")},
        ("dynamodb:GetItem", "AppsTable"), ("dynamodb:UpdateItem", "AppsTable"), ("dynamodb:DescribeTable", "AppsTable"),
        *{(a, r) for r in ("ConnectionsTable", "ConnectionsTable" + INDEX)
          for a in ("dynamodb:Query", "dynamodb:BatchWriteItem")},
        ("dynamodb:GetItem", "KeysTable"), ("dynamodb:Query", "AlertsTable" + INDEX),
        ("dynamodb:Query", "AlertsTable"),  # GET /api/messages?alert=firing: a message's alert records
        ("dynamodb:GetItem", "EventsTable"), ("dynamodb:Query", "EventsTable"),
        ("execute-api:ManageConnections", "WebSocketApi"),
        *{(a, "DestinationsTable") for a in ("dynamodb:Query", "dynamodb:GetItem", "dynamodb:PutItem",
                                             "dynamodb:DeleteItem")},
        ("dynamodb:PutItem", "DestinationSecretsTable"), ("dynamodb:DeleteItem", "DestinationSecretsTable"),
        ("sqs:SendMessage", "AlertDeliveryQueue"),
        ("dynamodb:Query", "FunnelTable"),  # GET /api/apps/{app}/funnel
    },
    "DeliveryFunction": {
        ("dynamodb:GetItem", "DestinationsTable"), ("dynamodb:GetItem", "DestinationSecretsTable"),
        ("sqs:ChangeMessageVisibility", "AlertDeliveryQueue"), ("sqs:SendMessage", "AlertDeliveryDeadLetterQueue"),
        ("sns:Publish", "arn:${AWS::Partition}:sns:*:${AWS::AccountId}:*"),
    },
    "WebSocketFunction": {
        *{(a, "ConnectionsTable") for a in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem",
                                            "dynamodb:Query", "dynamodb:BatchWriteItem")},
        ("dynamodb:GetItem", "MessagesTable"), ("dynamodb:GetItem", "AppsTable"), ("dynamodb:GetItem", "KeysTable"),
        ("execute-api:ManageConnections", "WebSocketApi"),
    },
    "BroadcastFunction": {
        *{(a, r) for r in ("ConnectionsTable", "ConnectionsTable" + INDEX)
          for a in ("dynamodb:Query", "dynamodb:BatchWriteItem")},
        ("dynamodb:GetItem", "AppsTable"), ("dynamodb:GetItem", "EventsTable"),
        ("sqs:SendMessage*", "BroadcastFailureQueue"), ("sqs:ChangeMessageVisibility*", "BroadcastFailureQueue"),
        ("execute-api:ManageConnections", "WebSocketApi"),
    },
    "StoreFunction": {*{(a, "MessagesTable") for a in ("dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem")},
                      *{(a, "EventsTable") for a in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                                                     "dynamodb:Query")},
                      ("dynamodb:GetItem", "AppsTable"), ("dynamodb:UpdateItem", "AlertsTable"),
                      # the funnel: the marker's GetItem; TransactWriteItems needs UpdateItem on each item
                      ("dynamodb:GetItem", "FunnelTable"), ("dynamodb:UpdateItem", "FunnelTable")},
    "AuthorizerFunction": {("dynamodb:GetItem", "KeysTable")},
    "OtlpFunction": {*{("sqs:SendMessage", q) for q in QUEUES}, ("dynamodb:GetItem", "AppsTable"),
                     ("dynamodb:GetItem", "KeysTable")},
    "StuckFunction": {("dynamodb:Scan", "AppsTable"), ("dynamodb:Query", "MessagesTable" + INDEX),
                      ("dynamodb:UpdateItem", "MessagesTable"), ("dynamodb:GetItem", "MessagesTable"),
                      *{(a, r) for r in ("AlertsTable", "AlertsTable" + INDEX)
                        for a in ("dynamodb:UpdateItem", "dynamodb:Query")}},
    "AlertsFunction": {("sns:Publish", "AlertsTopic"),
                       ("sqs:SendMessage*", "AlertsFailureQueue"), ("sqs:ChangeMessageVisibility*", "AlertsFailureQueue"),
                       ("sqs:SendMessage*", "AlertDeliveryQueue"), ("sqs:ChangeMessageVisibility*", "AlertDeliveryQueue"),
                       ("dynamodb:Query", "DestinationsTable"),
                       *{(a, r) for r in ("ConnectionsTable", "ConnectionsTable" + INDEX)
                         for a in ("dynamodb:Query", "dynamodb:BatchWriteItem")},
                       ("execute-api:ManageConnections", "WebSocketApi")},
    "AggregatorFunction": {("lambda:InvokeFunction", "StoreFunction")},
    "RouterFunction": {*{("sqs:SendMessage", q) for q in QUEUES | {"IngestDeadLetterQueue"}}},
    # read_trace (the item, a long timeline's pages, the lifecycle); a refused batch to its queue
    "TraceExportFunction": {("dynamodb:GetItem", "MessagesTable"), ("dynamodb:GetItem", "AppsTable"),
                            ("dynamodb:Query", "EventsTable"),
                            ("sqs:SendMessage*", "TraceExportFailureQueue"),
                            ("sqs:ChangeMessageVisibility*", "TraceExportFailureQueue")},
}


def _resource(node: Any) -> str:
    """A policy resource as the logical id it points at (`X`, `X/index/*`), or the literal; a conditional
    one (`!If [Cond, X, !Ref AWS::NoValue]`) as X, the permission it grants when the condition holds."""
    if isinstance(node, str):
        return node
    if "Fn::If" in node:
        _, granted, otherwise = node["Fn::If"]
        assert otherwise == {"Ref": "AWS::NoValue"}, f"a conditional resource grants something either way: {node!r}"
        return _resource(granted)
    if "Fn::GetAtt" in node:
        target = node["Fn::GetAtt"]
        return (target if isinstance(target, str) else ".".join(target)).split(".")[0]
    if "Ref" in node:
        return str(node["Ref"])
    if "Fn::Sub" in node:
        text = node["Fn::Sub"] if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"][0]
        if text.startswith("${") and ".Arn}" in text.split("/", 1)[0]:
            return text[2:].split(".", 1)[0] + text.split("}", 1)[1]
        found = [r for r in re.findall(r"\$\{([A-Za-z0-9]+)\}", text) if not r.startswith("AWS")
                 and r != "Stage"]
        return found[0] if found else text
    raise AssertionError(f"unreadable policy resource {node!r}")


def grants(properties: dict[str, Any]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for policy in properties.get("Policies", []):
        ((name, body),) = policy.items()
        if name == "Statement":
            for statement in body:
                assert statement["Effect"] == "Allow"
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                out |= {(a, _resource(r)) for a in actions for r in resources}
        else:
            actions, field = SAM_TEMPLATES[name]
            out |= {(a, _resource(body[field])) for a in actions}
            if name.startswith("DynamoDB"):
                out |= {(a, _resource(body[field]) + INDEX) for a in actions}
    return out


@pytest.fixture(scope="module")
def functions() -> dict[str, dict[str, Any]]:
    resources = load(ROOT / "template.yaml")["Resources"]
    return {lid: r.get("Properties", {}) for lid, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}


def test_every_function_is_covered(functions: dict[str, dict[str, Any]]) -> None:
    assert set(functions) == set(EXPECTED)


@pytest.mark.parametrize("function", sorted(EXPECTED))
def test_each_function_may_call_only_what_its_code_calls(functions: dict[str, dict[str, Any]], function: str) -> None:
    got = grants(functions[function])
    assert got - EXPECTED[function] == set(), f"{function} may do more than its code does"
    assert EXPECTED[function] - got == set(), f"{function} lacks a permission its code needs"


def test_the_review_findings_stay_fixed(functions: dict[str, dict[str, Any]]) -> None:
    api, ws = grants(functions["ApiFunction"]), grants(functions["WebSocketFunction"])
    assert not {r for a, r in api if a.startswith("sqs:SendMessage") and "DeadLetter" in r}
    assert ("dynamodb:Scan", "KeysTable") not in api | ws
    # webhook URLs and signing secrets: written by the API, read only by the delivery
    assert not {a for a, r in api if r == "DestinationSecretsTable"} - {"dynamodb:PutItem", "dynamodb:DeleteItem"}
    for function in ("StoreFunction", "StuckFunction"):
        actions = {a for a, r in grants(functions[function]) if r.startswith("MessagesTable")}
        assert not actions & {"dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:BatchWriteItem"}
        # the store replaces an old item whole (conditionally) when its events move to pages; the sweep never
        assert "dynamodb:PutItem" not in actions or function == "StoreFunction"
