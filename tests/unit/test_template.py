"""template.yaml, parsed by the local runtime's loader: the pipeline's wiring, and API Gateway ↔ Chalice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mars_common import store

from samlocal.template import load
from tests.conftest import ROOT, load_function

QUEUES = [f"EventsQueue{i}" for i in range(10)]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def value(template: dict[str, Any], node: Any) -> Any:
    """A literal, or the Default of the parameter it Refs (what a plain `sam deploy` uses)."""
    if isinstance(node, dict) and set(node) == {"Ref"} and node["Ref"] in template.get("Parameters", {}):
        return template["Parameters"][node["Ref"]]["Default"]
    return node


def props(resources: dict[str, Any], lid: str) -> dict[str, Any]:
    return resources[lid].get("Properties", {})


def is_true(node: Any) -> bool:
    return str(node).lower() == "true"


# --- queues -------------------------------------------------------------------------------------

def test_ten_fifo_event_queues_with_a_fifo_dead_letter_queue(template: dict[str, Any],
                                                             resources: dict[str, Any]) -> None:
    queues = {lid for lid, r in resources.items() if r["Type"] == "AWS::SQS::Queue" and lid.startswith("EventsQueue")}
    assert queues == set(QUEUES)
    assert resources["DeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    assert is_true(props(resources, "DeadLetterQueue").get("FifoQueue"))  # a FIFO queue's DLQ must be FIFO
    for lid in QUEUES:
        p = props(resources, lid)
        assert is_true(p.get("FifoQueue")), lid
        redrive = p["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}, lid
        assert int(value(template, redrive["maxReceiveCount"])) >= 1, lid
        assert "ContentBasedDeduplication" not in p or not is_true(p["ContentBasedDeduplication"])  # ids are ours


def test_poison_reaches_the_dead_letter_queue_within_five_minutes(template: dict[str, Any],
                                                                  resources: dict[str, Any]) -> None:
    aggregator_timeout = int(value(template, props(resources, "AggregatorFunction").get(
        "Timeout", template["Globals"]["Function"]["Timeout"])))
    for lid in QUEUES:
        p = props(resources, lid)
        visibility = int(value(template, p.get("VisibilityTimeout", 30)))
        receives = int(value(template, p["RedrivePolicy"]["maxReceiveCount"]))
        assert visibility * receives <= 300, lid  # DESIGN §1: in the DLQ within 5 minutes
        # Lambda refuses an SQS mapping whose queue's visibility timeout is below the function timeout
        assert visibility >= aggregator_timeout, lid
        # FIFO DLQs keep the original enqueue time: a shorter retention would drop dead letters early
        assert int(props(resources, "DeadLetterQueue").get("MessageRetentionPeriod", 345600)) >= \
            int(p.get("MessageRetentionPeriod", 345600)), lid


# --- the aggregator's mappings ------------------------------------------------------------------

def test_aggregator_has_one_mapping_per_event_queue(resources: dict[str, Any]) -> None:
    events = props(resources, "AggregatorFunction")["Events"]
    sqs = [e["Properties"] for e in events.values() if e["Type"] == "SQS"]
    assert len(sqs) == len(events) == 10
    targets = [p["Queue"] for p in sqs]
    assert sorted(t["Fn::GetAtt"][0] for t in targets) == sorted(QUEUES)
    assert all(t["Fn::GetAtt"][1] == "Arn" for t in targets)
    for p in sqs:
        assert 1 <= int(p.get("BatchSize", 10)) <= 10  # FIFO event sources take at most 10
        assert p["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert "MaximumBatchingWindowInSeconds" not in p  # not allowed on FIFO sources


def test_aggregator_is_wired_to_the_store(resources: dict[str, Any]) -> None:
    p = props(resources, "AggregatorFunction")
    assert p["Environment"]["Variables"]["STORE_FUNCTION_NAME"] == {"Ref": "StoreFunction"}
    assert {"LambdaInvokePolicy": {"FunctionName": {"Ref": "StoreFunction"}}} in p["Policies"]


def test_events_queue_order_is_the_shard_order(template: dict[str, Any]) -> None:
    refs = [{"Ref": q} for q in QUEUES]
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["EVENTS_QUEUE_URLS"] == {"Fn::Join": [",", refs]}
    assert template["Outputs"]["EventsQueueUrls"]["Value"] == {"Fn::Join": [",", refs]}


# --- tables -------------------------------------------------------------------------------------

def test_messages_table(resources: dict[str, Any]) -> None:
    p = props(resources, "MessagesTable")
    assert p["KeySchema"] == [{"AttributeName": "app_id", "KeyType": "HASH"},
                              {"AttributeName": "message_id", "KeyType": "RANGE"}]
    assert p["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert p["TimeToLiveSpecification"]["AttributeName"] == "expires_at"  # what store.upsert_message writes
    assert is_true(p["TimeToLiveSpecification"]["Enabled"])
    indexes = {i["IndexName"]: i for i in p["GlobalSecondaryIndexes"]}
    assert set(indexes) == {store.BY_MESSAGE_INDEX, store.BY_APP_INDEX} == {"ByMessage", "ByAppUpdated"}
    assert indexes["ByMessage"]["KeySchema"][0] == {"AttributeName": "message_id", "KeyType": "HASH"}
    assert indexes["ByAppUpdated"]["KeySchema"] == [{"AttributeName": "app_id", "KeyType": "HASH"},
                                                    {"AttributeName": "updated_at", "KeyType": "RANGE"}]
    assert indexes["ByAppUpdated"]["Projection"]["ProjectionType"] == "ALL"  # the list reads items from it
    defined = {a["AttributeName"]: a["AttributeType"] for a in p["AttributeDefinitions"]}
    assert defined == {"app_id": "S", "message_id": "S", "updated_at": "S"}


def test_events_table_holds_long_timelines_and_only_its_users_reach_it(template: dict[str, Any],
                                                                      resources: dict[str, Any]) -> None:
    p = props(resources, "EventsTable")
    assert p["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert p["TimeToLiveSpecification"]["AttributeName"] == "expires_at" and is_true(p["TimeToLiveSpecification"]["Enabled"])
    assert "GlobalSecondaryIndexes" not in p and "StreamSpecification" not in p  # the summary's stream is the live one
    assert template["Outputs"]["EventsTableName"]["Value"] == {"Ref": "EventsTable"}
    assert template["Globals"]["Function"]["Environment"]["Variables"]["EVENTS_TABLE"] == {"Ref": "EventsTable"}
    from tests.unit.test_template_iam import grants

    reach = {lid for lid, res in resources.items() if res["Type"] == "AWS::Serverless::Function"
             and any(r == "EventsTable" for _a, r in grants(res.get("Properties", {})))}
    # WebSocketFunction sends a long timeline's summary: it never reads pages (the actions: test_template_iam)
    assert reach == {"StoreFunction", "ApiFunction", "BroadcastFunction", "TraceExportFunction"}


def test_an_apps_retention_is_bounded_by_the_stacks(template: dict[str, Any]) -> None:
    from mars_common.timeline import MAX_RETENTION_DAYS

    assert template["Parameters"]["RetentionDays"]["MaxValue"] == MAX_RETENTION_DAYS


def test_apps_table(resources: dict[str, Any]) -> None:
    assert props(resources, "AppsTable")["KeySchema"] == [{"AttributeName": "app_id", "KeyType": "HASH"}]


# --- outputs ------------------------------------------------------------------------------------

def test_contract_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert {"ApiUrl", "EventsQueueUrls", "DeadLetterQueueUrl", "MessagesTableName"} <= set(outputs)
    assert outputs["DeadLetterQueueUrl"]["Value"] == {"Ref": "DeadLetterQueue"}
    assert outputs["MessagesTableName"]["Value"] == {"Ref": "MessagesTable"}
    api_url = outputs["ApiUrl"]["Value"]["Fn::Sub"]
    assert "${MarsApi}" in api_url and api_url.startswith("https://")


# --- functions and API routes -------------------------------------------------------------------

def _functions(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lid: r["Properties"] for lid, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}


def test_every_handler_exists(resources: dict[str, Any]) -> None:
    for lid, p in _functions(resources).items():
        code = Path(ROOT / p["CodeUri"])
        module, attr = p["Handler"].rsplit(".", 1)
        assert (code / f"{module}.py").is_file(), lid
        assert module == "app", lid
        assert callable(getattr(load_function(code.name), attr)), lid


def _template_routes(resources: dict[str, Any]) -> set[tuple[str, str]]:
    routes = set()
    for event in props(resources, "ApiFunction")["Events"].values():
        assert event["Type"] == "Api"
        assert event["Properties"]["RestApiId"] == {"Ref": "MarsApi"}
        routes.add((event["Properties"]["Path"], event["Properties"]["Method"].upper()))
    return routes


def _chalice_routes() -> set[tuple[str, str]]:
    app = load_function("api").app
    return {(path, method) for path, methods in app.routes.items() for method in methods}


def test_chalice_routes_and_api_gateway_routes_match(resources: dict[str, Any]) -> None:
    template_routes, chalice_routes = _template_routes(resources), _chalice_routes()
    assert chalice_routes - template_routes == set(), "routes Chalice serves but API Gateway does not expose"
    assert template_routes - chalice_routes == set(), "routes API Gateway exposes but Chalice does not serve"
    assert len(template_routes) == len(props(resources, "ApiFunction")["Events"])  # no route declared twice


def test_other_functions_declare_no_routes_of_the_api(resources: dict[str, Any]) -> None:
    chalice_paths = {p for p, _ in _chalice_routes()}
    for lid, p in _functions(resources).items():
        if lid == "ApiFunction":
            continue
        for event in p.get("Events", {}).values():
            if event["Type"] == "Api":
                assert event["Properties"]["Path"] not in chalice_paths, lid


def test_route_parameters_are_named_alike(resources: dict[str, Any]) -> None:
    app = load_function("api").app
    for path, methods in app.routes.items():
        names = re.findall(r"\{([^}]+)\}", path)
        for entry in methods.values():
            assert entry.view_args == names, path


def test_loadtest_route_is_off_by_default(template: dict[str, Any]) -> None:
    assert template["Parameters"]["AllowTestRoutes"]["Default"] == "false"
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["ALLOW_TEST_ROUTES"] == {"Ref": "AllowTestRoutes"}
    assert env["RETENTION_DAYS"] == {"Ref": "RetentionDays"}
