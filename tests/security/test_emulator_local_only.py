"""Issue 12, item 3: the local AWS emulator serves no web page: no CORS, no foreign Origin, no
rebound Host name (a page could otherwise Scan KeysTable or PutItem an admin key)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from samlocal import emulator as emulator_mod

SCAN = json.dumps({"TableName": "keys"})


@pytest.fixture(scope="module")
def emu() -> Iterator[emulator_mod.Emulator]:
    server = emulator_mod.serve("127.0.0.1", 0, patched=True, metrics_interval=None)
    yield server
    server.stop()


def request(emu: emulator_mod.Emulator, method: str, headers: dict[str, str], body: str = "") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    conn.putrequest(method, "/", skip_host=True, skip_accept_encoding=True)
    for name, value in {"Host": f"127.0.0.1:{emu.port}", **headers}.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body.encode())
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


DYNAMO = {"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0",
          "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, "
                           "SignedHeaders=host, Signature=x"}


def test_a_foreign_origin_gets_no_cors_and_is_refused(emu: emulator_mod.Emulator) -> None:
    preflight = request(emu, "OPTIONS", {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "x-amz-target,content-type"})
    assert preflight.status == 403 and preflight.getheader("Access-Control-Allow-Origin") is None
    simple = request(emu, "POST", {**DYNAMO, "Origin": "https://evil.example", "Content-Type": "text/plain"}, "{}")
    assert simple.status == 403 and simple.getheader("Access-Control-Allow-Origin") is None
    other_local = request(emu, "POST", {**DYNAMO, "Origin": "http://localhost:8080"}, "{}")
    assert other_local.status == 403  # another local server's page is another origin too


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "127.0.0.1:1",
                                  "localhost.evil.example:{port}", ""])
def test_a_host_that_is_not_loopback_with_the_emulators_port_is_refused(emu: emulator_mod.Emulator, host: str) -> None:
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, but the browser sends it as Host."""
    assert request(emu, "POST", {**DYNAMO, "Host": host.format(port=emu.port)}, "{}").status == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "dynamodb.localhost:{port}",
                                  "[::1]:{port}", "127.0.0.2:{port}"])
def test_loopback_hosts_are_served(emu: emulator_mod.Emulator, host: str) -> None:
    assert request(emu, "POST", {**DYNAMO, "Host": host.format(port=emu.port)}, "{}").status == 200


def test_boto3_keeps_working(emu: emulator_mod.Emulator) -> None:
    kwargs: dict[str, Any] = {"endpoint_url": emu.endpoint_url, "region_name": "us-east-1",
                              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    dynamodb = boto3.client("dynamodb", **kwargs)
    dynamodb.create_table(TableName="keys", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                          BillingMode="PAY_PER_REQUEST")
    assert dynamodb.scan(TableName="keys")["Items"] == []
    sqs = boto3.client("sqs", **kwargs)
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    assert sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "x"


def test_the_emulator_process_refuses_a_web_page_too() -> None:
    """The real `python -m samlocal.emulator` (what `mars up` starts), not only the in-process app."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "samlocal.emulator", "--port", "0", "--metrics-interval", "0"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = json.loads(proc.stderr.readline())["port"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/", body="{}", headers={**DYNAMO, "Origin": "https://evil.example"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 403 and resp.getheader("Access-Control-Allow-Origin") is None
        conn.request("POST", "/", body="{}", headers=DYNAMO)  # http.client sends Host = 127.0.0.1:port
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
