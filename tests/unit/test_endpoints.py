"""The stack's account and endpoints come from the endpoint, never from a URL or a constant."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from mars import cli, stacks
from samlocal.resources import create_queue
from samlocal.stack import embedded_services
from samlocal.template import Stack

TEMPLATE = {
    "Parameters": {"Where": {"Type": "String", "Default": "000000000000"}},
    "Conditions": {"OnLocalStack": {"Fn::Equals": [{"Ref": "AWS::AccountId"}, {"Ref": "Where"}]}},
    "Resources": {},
}


def test_bind_sets_the_account_of_pseudo_parameters_and_conditions() -> None:
    stack = Stack(TEMPLATE, root=Path("."))
    assert stack.condition("OnLocalStack") is False  # moto's default account until the endpoint is asked
    stack.bind(account_id="000000000000")
    assert stack.resolve({"Fn::Sub": "arn:aws:sqs:${AWS::Region}:${AWS::AccountId}:q"}) == "arn:aws:sqs:us-east-1:000000000000:q"
    assert stack.condition("OnLocalStack") is True, "conditions are evaluated again with the learned account"


def test_a_queue_arn_is_the_one_the_endpoint_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    stack = Stack({"Resources": {}}, root=Path("."), account_id="000000000000")  # not moto's account
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        made = create_queue(stack, "Q", {"QueueName": "q1"}, lambda service: sqs)
        real = sqs.get_queue_attributes(QueueUrl=made["QueueUrl"], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert made["Arn"] == real == "arn:aws:sqs:us-east-1:123456789012:q1"


def test_embedded_services_bring_their_companions_and_refuse_unknown_names() -> None:
    assert embedded_services("dynamodb") == ("dynamodb", "dynamodbstreams")
    assert embedded_services(" DynamoDB , sqs,") == ("dynamodb", "dynamodbstreams", "sqs")
    assert embedded_services("") == ()
    with pytest.raises(ValueError, match="dynamo"):
        embedded_services("dynamo")


def test_up_refuses_embedded_without_an_endpoint_and_unknown_services(capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from samlocal import logs

    monkeypatch.setattr(logs, "setup", lambda level: None)  # leave pytest's logging (and stderr) alone
    template = str(Path(__file__).resolve().parents[1] / "fixtures" / "probe_app" / "template.yaml")
    assert cli.main(["up", "--template", template, "--embedded", "dynamodb"]) == 2
    assert "--endpoint" in capsys.readouterr().err
    assert cli.main(["up", "--template", template, "--endpoint", "http://127.0.0.1:9", "--embedded", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_a_service_endpoint_comes_from_the_state_not_from_a_queue_url() -> None:
    state = {"endpoint": "http://127.0.0.1:4566", "service_endpoints": {"dynamodb": "http://127.0.0.1:4999"},
             "outputs": {"IngestQueueUrl": "http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/q"}}
    assert stacks.endpoint(state, "sqs") == "http://127.0.0.1:4566"
    assert stacks.endpoint(state, "dynamodb") == "http://127.0.0.1:4999"
    assert stacks.endpoint({"endpoint": "http://e"}, "sns") == "http://e"


class _Sts:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def get_caller_identity(self) -> dict[str, object]:
        return {"Account": "000000000000", "ResponseMetadata": {"HTTPHeaders": self.headers}}


@pytest.mark.parametrize("embedded, warned", [((), True), (("dynamodb", "dynamodbstreams"), False)])
def test_localstack_without_embedded_dynamodb_is_warned_about(caplog: pytest.LogCaptureFixture,
                                                              embedded: tuple[str, ...], warned: bool) -> None:
    from samlocal.stack import Config, LocalRuntime

    template = Path(__file__).resolve().parents[1] / "fixtures" / "api_stream" / "template.yaml"  # has tables
    stack = LocalRuntime(Config(template=template, endpoint="http://127.0.0.1:9", embedded=embedded))
    stack.client = lambda service: _Sts({"x-localstack": "true"})  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="samlocal.stack"):
        assert stack._caller_account() == "000000000000"
    assert any("--embedded dynamodb,dynamodbstreams" in r.getMessage() for r in caplog.records) is warned


def test_an_endpoint_without_sts_keeps_the_default_account_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from botocore.exceptions import ClientError

    from samlocal.stack import Config, LocalRuntime

    class NoSts:
        def get_caller_identity(self) -> dict[str, object]:
            raise ClientError({"Error": {"Code": "InvalidAction", "Message": "no STS here"}}, "GetCallerIdentity")

    template = Path(__file__).resolve().parents[1] / "fixtures" / "api_stream" / "template.yaml"
    stack = LocalRuntime(Config(template=template, endpoint="http://127.0.0.1:9"))
    stack.client = lambda service: NoSts()  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="samlocal.stack"):
        assert stack._caller_account() == "123456789012"
    assert any("no STS" in r.getMessage() for r in caplog.records)
