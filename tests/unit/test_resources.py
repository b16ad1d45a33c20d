"""samlocal.resources.provision: template.yaml's resources made in an endpoint, and made again on an
endpoint that already holds them (`mars up --endpoint` twice against one LocalStack): the same ids."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import boto3
from moto import mock_aws

from samlocal.resources import provision
from samlocal.template import Stack, load
from tests.conftest import ROOT


def clients(calls: Counter[str]) -> Any:
    @functools.cache
    def client(service: str) -> Any:
        made = boto3.client(service, region_name="us-east-1")
        made.meta.events.register("before-call.*.*", lambda model, **_: calls.update([model.name]))
        return made

    return client


def stack() -> Stack:
    return Stack(load(ROOT / "template.yaml"), root=ROOT, name="res")


def test_provisioning_again_finds_the_same_tables_queues_and_streams(aws_credentials: None) -> None:
    with mock_aws():
        first_calls: Counter[str] = Counter()
        first = stack()
        provision(first, clients(first_calls))
        again_calls: Counter[str] = Counter()
        again = stack()
        provision(again, clients(again_calls))
    tables = [lid for lid, spec in first.resources.items() if spec["Type"] == "AWS::DynamoDB::Table"]
    streams = [lid for lid in tables if "StreamSpecification" in first.resources[lid]["Properties"]]
    assert tables and streams
    assert again.physical == first.physical
    assert all(first.physical[lid]["StreamArn"].startswith(first.physical[lid]["Arn"] + "/stream/") for lid in streams)
    # a new table's ARNs come with CreateTable's answer; a table that was there is described
    assert first_calls["CreateTable"] == len(tables) and first_calls["DescribeTable"] == 0, first_calls
    assert again_calls["DescribeTable"] == len(tables), again_calls
