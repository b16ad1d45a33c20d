"""Issue 12, item 2: deployed, API Gateway never holds a Mars key. The usage plan gets the key's
usage identifier; the REST API's authorizer checks the key and names that identifier."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from mars_common import auth, aws, config
from mars_common.config import settings

from samlocal.template import load
from tests.conftest import ROOT, load_function


@pytest.fixture
def deployed(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> tuple[Any, str, Any]:
    monkeypatch.setenv("AUTH_REQUIRED", "true")
    config.settings.cache_clear()
    auth.clear_cache()
    apigw = boto3.client("apigateway", region_name="us-east-1")
    api_id = apigw.create_rest_api(name="mars")["id"]
    plan = apigw.create_usage_plan(name="mars", apiStages=[], throttle={"rateLimit": 200, "burstLimit": 500})["id"]
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps([{"OutputKey": "KeysTableName", "OutputValue": settings().keys_table},
                                   {"OutputKey": "UsagePlanId", "OutputValue": plan},
                                   {"OutputKey": "ApiUrl", "OutputValue": f"https://{api_id}.example/dev/"}]))
    return apigw, plan, outputs


def create(outputs: Any, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    from mars import cli

    assert cli.main(["keys", "create", *args, "--stack-outputs", str(outputs)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_api_gateway_stores_a_usage_identifier_never_the_mars_key(deployed: tuple[Any, str, Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    apigw, plan, outputs = deployed
    keys = [create(outputs, capsys, "--app", "shop"), create(outputs, capsys, "--admin")]
    registered = apigw.get_api_keys(includeValues=True)["items"]
    assert len(registered) == 2
    for key in keys:
        key_id = key.split("_")[1]
        (mine,) = [k for k in registered if k["name"] == f"mars-{key_id}"]
        assert mine["value"] != key and mine["value"] == auth.usage_key_value(key_id)
        assert len(mine["value"]) >= 20  # API Gateway's minimum
    assert {k["id"] for k in apigw.get_usage_plan_keys(usagePlanId=plan)["items"]} == {k["id"] for k in registered}
    # no plaintext Mars key anywhere: API Gateway's keys and usage plan, KeysTable
    stored = json.dumps([registered, apigw.get_usage_plan_keys(usagePlanId=plan)["items"],
                         aws.table(settings().keys_table).scan()["Items"]], default=str)
    for key in keys:
        assert key not in stored and key.split("_", 2)[2] not in stored  # nor its secret part


def authorizer_event(key: str | None) -> dict[str, Any]:
    headers = {"Host": "abc.execute-api.us-east-1.amazonaws.com", **({"x-api-key": key} if key else {})}
    return {"type": "REQUEST", "headers": headers,
            "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc123/dev/POST/api/event"}


def test_the_authorizer_names_the_usage_identifier_of_a_valid_key(deployed: tuple[Any, str, Any],
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  lambda_context: Any) -> None:
    apigw, _plan, outputs = deployed
    key = create(outputs, capsys, "--app", "shop")
    handler = load_function("authorizer")
    answer = handler.lambda_handler(authorizer_event(key), lambda_context)
    (registered,) = apigw.get_api_keys(includeValues=True)["items"]
    assert answer["usageIdentifierKey"] == registered["value"]  # the usage plan key API Gateway throttles
    assert answer["principalId"] == key.split("_")[1]
    (statement,) = answer["policyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and statement["Resource"] == "arn:aws:execute-api:us-east-1:123456789012:abc123/dev/*"
    assert key not in json.dumps(answer)
    for bad in (None, "garbage", "mk_AAAAAAAA_" + "x" * 43):
        with pytest.raises(Exception, match="^Unauthorized$"):  # API Gateway's 401
            handler.lambda_handler(authorizer_event(bad), lambda_context)


def test_the_rest_api_takes_usage_keys_from_the_authorizer_only() -> None:
    """A usage identifier sent as x-api-key is worthless: API Gateway reads keys from the authorizer."""
    resources = load(ROOT / "template.yaml")["Resources"]
    api = resources["MarsApi"]["Properties"]
    assert api["ApiKeySourceType"] == "AUTHORIZER"
    assert api["Auth"]["DefaultAuthorizer"] == "MarsKeyAuthorizer"
    authorizer = api["Auth"]["Authorizers"]["MarsKeyAuthorizer"]
    assert authorizer["FunctionPayloadType"] == "REQUEST" and authorizer["Identity"]["Headers"] == ["x-api-key"]
    assert authorizer["Identity"]["ReauthorizeEvery"] <= auth.CACHE_SECONDS
    for event in resources["ApiFunction"]["Properties"]["Events"].values():
        route_auth = event["Properties"].get("Auth", {})
        if route_auth.get("ApiKeyRequired") is False:  # public routes skip both checks
            assert route_auth.get("Authorizer") == "NONE", event


def test_keys_sync_replaces_api_gateway_keys_that_hold_a_mars_key(deployed: tuple[Any, str, Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Upgrading: keys registered by older versions hold the Mars key itself; `mars keys sync` deletes
    them and registers the usage identifiers (a revoked key's disabled)."""
    from mars import cli

    apigw, plan, outputs = deployed
    table = settings().keys_table
    old_keys = {}
    for apps in (["shop"], ["bank"]):
        key_id, key = auth.create_key(table, apps)
        created = apigw.create_api_key(name=f"mars-{key_id}", value=key, enabled=True)  # the old way
        apigw.create_usage_plan_key(usagePlanId=plan, keyId=created["id"], keyType="API_KEY")
        old_keys[key_id] = key
    revoked_id = next(iter(old_keys))
    auth.revoke_key(table, revoked_id)
    assert cli.main(["keys", "sync", "--stack-outputs", str(outputs)]) == 0
    assert "2 usage identifier(s) registered, 2 key(s) holding a Mars key deleted" in capsys.readouterr().err
    registered = apigw.get_api_keys(includeValues=True)["items"]
    assert sorted(k["value"] for k in registered) == sorted(auth.usage_key_value(i) for i in old_keys)
    assert {k["value"]: k["enabled"] for k in registered}[auth.usage_key_value(revoked_id)] is False
    stored = json.dumps([registered, apigw.get_usage_plan_keys(usagePlanId=plan)["items"]], default=str)
    assert not any(key in stored for key in old_keys.values())
    assert cli.main(["keys", "sync", "--stack-outputs", str(outputs)]) == 0  # idempotent
    assert "0 usage identifier(s) registered, 0 key(s)" in capsys.readouterr().err
