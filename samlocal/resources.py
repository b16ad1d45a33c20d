"""Creating the template's resources in the emulator (or any AWS-compatible endpoint).

Also used by unit tests under moto's mock_aws, so tests and template cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from .lambdas import FUNCTION_TYPES, LAYER_TYPES, physical_name
from .template import Stack, topological

log = logging.getLogger("samlocal.resources")

_SQS_ATTRIBUTES = ("FifoQueue", "ContentBasedDeduplication", "DelaySeconds", "MaximumMessageSize",
                   "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds", "VisibilityTimeout",
                   "DeduplicationScope", "FifoThroughputLimit", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds",
                   "SqsManagedSseEnabled")


def _str(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def create_queue(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    fifo = str(props.get("FifoQueue", "false")).lower() == "true"
    name = props.get("QueueName") or physical_name(stack, lid) + (".fifo" if fifo else "")
    attributes = {k: _str(props[k]) for k in _SQS_ATTRIBUTES if k in props}
    for policy in ("RedrivePolicy", "RedriveAllowPolicy"):
        if policy in props:
            value = props[policy]
            if isinstance(value, dict) and "maxReceiveCount" in value:
                value = {**value, "maxReceiveCount": int(value["maxReceiveCount"])}
            attributes[policy] = value if isinstance(value, str) else json.dumps(value)
    sqs = clients("sqs")
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        settable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
        if settable:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=settable)
    # The endpoint's own ARN, not one built here: a RedrivePolicy naming a DLQ ARN of another account
    # makes the endpoint drop the message at maxReceiveCount (LocalStack does), silently.
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {"Ref": url, "Arn": arn, "QueueName": name, "QueueUrl": url}


def create_table(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    name = props.get("TableName") or physical_name(stack, lid)
    ddb = clients("dynamodb")
    kwargs: dict[str, Any] = {"TableName": name, "AttributeDefinitions": props["AttributeDefinitions"],
                              "KeySchema": props["KeySchema"],
                              "BillingMode": props.get("BillingMode", "PROVISIONED")}
    if kwargs["BillingMode"] == "PROVISIONED":
        kwargs["ProvisionedThroughput"] = _throughput(props.get("ProvisionedThroughput"))
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if props.get(key):
            indexes = []
            for index in props[key]:
                index = dict(index)
                if kwargs["BillingMode"] == "PROVISIONED" and key == "GlobalSecondaryIndexes":
                    index["ProvisionedThroughput"] = _throughput(index.get("ProvisionedThroughput"))
                indexes.append(index)
            kwargs[key] = indexes
    stream = props.get("StreamSpecification")
    if stream:
        kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    try:
        desc = ddb.create_table(**kwargs)["TableDescription"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
        desc = None  # made before (a reused endpoint): described below, after its TTL is set
    ttl = props.get("TimeToLiveSpecification")
    if ttl and str(ttl.get("Enabled", "false")).lower() == "true":
        try:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "AttributeName": ttl["AttributeName"], "Enabled": True})
        except ClientError as exc:  # already enabled on a reused endpoint
            if "already enabled" not in str(exc).lower():
                raise
    if desc is None:  # a new table's ARNs are in CreateTable's answer: one call fewer per table
        desc = ddb.describe_table(TableName=name)["Table"]
    out = {"Ref": name, "Arn": desc["TableArn"]}
    if desc.get("LatestStreamArn"):
        out["StreamArn"] = desc["LatestStreamArn"]
    return out


def _throughput(value: dict[str, Any] | None) -> dict[str, int]:
    value = value or {}
    return {"ReadCapacityUnits": int(value.get("ReadCapacityUnits", 5)),
            "WriteCapacityUnits": int(value.get("WriteCapacityUnits", 5))}


def create_topic(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    name = props.get("TopicName") or physical_name(stack, lid)
    attributes = {}
    if str(props.get("FifoTopic", "false")).lower() == "true":
        attributes["FifoTopic"] = "true"
        if not name.endswith(".fifo"):
            name += ".fifo"
    arn = clients("sns").create_topic(Name=name, Attributes=attributes)["TopicArn"]
    return {"Ref": arn, "TopicArn": arn, "TopicName": name}


_SUBSCRIPTION_ATTRIBUTES = ("DeliveryPolicy", "FilterPolicy", "FilterPolicyScope", "RawMessageDelivery", "RedrivePolicy")


def create_subscription(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    """An SNS subscription: an sqs endpoint receives the topic's messages through the emulator as in AWS
    (other protocols are the emulator's); e-mail and SMS ones exist (pending confirmation), nothing is sent."""
    attributes = {k: json.dumps(props[k]) if isinstance(props[k], (dict, list)) else _str(props[k])
                  for k in _SUBSCRIPTION_ATTRIBUTES if k in props}
    arn = clients("sns").subscribe(TopicArn=props["TopicArn"], Protocol=props["Protocol"], Endpoint=props["Endpoint"],
                                   Attributes=attributes, ReturnSubscriptionArn=True)["SubscriptionArn"]
    if str(props["Protocol"]).lower() in ("email", "email-json", "sms"):
        log.info("subscription not delivered locally", extra={"logical_id": lid, "protocol": props["Protocol"],
                                                               "reason": "the emulator sends no e-mail or SMS"})
    return {"Ref": arn}


def local_api_id(stack: Stack, lid: str) -> str:
    """A stable 10-character id, shaped like API Gateway's."""
    return hashlib.sha256(f"{stack.name}/{lid}".encode()).hexdigest()[:10]


def _api(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    api_id = local_api_id(stack, lid)
    return {"Ref": api_id, "RootResourceId": api_id[:6]}


def _api_v2(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    api_id = local_api_id(stack, lid)
    scheme = "wss" if str(props.get("ProtocolType", "HTTP")).upper() == "WEBSOCKET" else "https"
    return {"Ref": api_id, "ApiId": api_id, "ApiEndpoint": f"{scheme}://{api_id}.execute-api.{stack.region}.amazonaws.com"}


def _local_id(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    """Resources that exist only as configuration the runtime reads from the template (routes,
    integrations, stages, permissions): an id so references to them resolve."""
    return {"Ref": props.get("StageName") or local_api_id(stack, lid)[:7]}


def _function(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    name = props.get("FunctionName") or physical_name(stack, lid)
    return {"Ref": name, "Arn": f"arn:aws:lambda:{stack.region}:{stack.account_id}:function:{name}"}


def _layer(stack: Stack, lid: str, props: dict[str, Any], clients: Callable[[str], Any]) -> dict[str, Any]:
    name = props.get("LayerName") or physical_name(stack, lid)
    return {"Ref": f"arn:aws:lambda:{stack.region}:{stack.account_id}:layer:{name}:1"}


CREATORS: dict[str, Callable[[Stack, str, dict[str, Any], Callable[[str], Any]], dict[str, Any]]] = {
    "AWS::SQS::Queue": create_queue,
    "AWS::DynamoDB::Table": create_table,
    "AWS::SNS::Topic": create_topic,
    "AWS::SNS::Subscription": create_subscription,
    "AWS::Serverless::Api": _api,
    "AWS::ApiGatewayV2::Api": _api_v2,
    **{t: _local_id for t in ("AWS::ApiGatewayV2::Integration", "AWS::ApiGatewayV2::Route",
                              "AWS::ApiGatewayV2::RouteResponse", "AWS::ApiGatewayV2::Deployment",
                              "AWS::ApiGatewayV2::Stage", "AWS::Lambda::Permission")},
    **{t: _function for t in FUNCTION_TYPES},
    **{t: _layer for t in LAYER_TYPES},
}


# CloudWatch configuration that watches, shows or keeps what AWS's own services publish: the local stack
# publishes none of it (no Lambda, SQS or API Gateway metrics, no EMF extraction), so creating these
# would only make alarms that never fire. Not created, said once per type at INFO (not a WARNING: the
# template is fine). A function's output is the stack's log file instead (LocalRuntime.log_file).
NOT_LOCAL = {
    "AWS::CloudWatch::Alarm": "alarms watch the metrics AWS publishes; nothing publishes them locally",
    "AWS::CloudWatch::CompositeAlarm": "alarms watch the metrics AWS publishes; nothing publishes them locally",
    "AWS::CloudWatch::Dashboard": "dashboards show the metrics AWS publishes; nothing publishes them locally",
    "AWS::Logs::LogGroup": "the functions' stdout and stderr go to the stack's log file (<state dir>/<stack>.log)",
}


def provision(stack: Stack, clients: Callable[[str], Any]) -> list[str]:
    """Creates every supported resource in dependency order; returns the logical ids it skipped."""
    supported = [lid for lid, spec in stack.resources.items() if spec.get("Type") in CREATORS]
    skipped = [lid for lid in stack.resources if lid not in supported]
    for kind, why in NOT_LOCAL.items():
        ids = [lid for lid in skipped if stack.resources[lid].get("Type") == kind]
        if ids:
            log.info("not created locally", extra={"type": kind, "logical_ids": ids, "reason": why})
    # Functions and layers only need names, and functions reference queues in their Events:
    # name them first so a queue policy or output that references a function resolves.
    first = [lid for lid in supported if stack.resources[lid]["Type"] in (*FUNCTION_TYPES, *LAYER_TYPES,
                                                                          "AWS::Serverless::Api")]
    for lid in first:
        spec = stack.resources[lid]
        stack.physical[lid] = CREATORS[spec["Type"]](stack, lid, stack.resolve(_names_only(spec)), clients)
    if _uses_implicit_api(stack) and IMPLICIT_API not in stack.physical:
        stack.physical[IMPLICIT_API] = _api(stack, IMPLICIT_API, {}, clients)
    rest = [lid for lid in supported if lid not in first]
    for lid in topological(stack, rest):
        spec = stack.resources[lid]
        props = stack.resolve(spec.get("Properties", {}))
        stack.physical[lid] = CREATORS[spec["Type"]](stack, lid, props, clients)
        log.info("created", extra={"logical_id": lid, "type": spec["Type"], "physical_id": stack.physical[lid]["Ref"]})
    for lid in (lid for lid in skipped if stack.resources[lid].get("Type") not in NOT_LOCAL):
        log.warning("not emulated", extra={"logical_id": lid, "type": stack.resources[lid].get("Type")})
    return skipped


IMPLICIT_API = "ServerlessRestApi"  # what SAM calls the API it creates for Api events without RestApiId


def _uses_implicit_api(stack: Stack) -> bool:
    return any(event.get("Type") == "Api" and "RestApiId" not in event.get("Properties", {})
               for fn in stack.of_type(*FUNCTION_TYPES).values()
               for event in fn.get("Properties", {}).get("Events", {}).values())


def _names_only(spec: dict[str, Any]) -> dict[str, Any]:
    props = spec.get("Properties", {})
    return {k: props[k] for k in ("FunctionName", "LayerName") if k in props}
