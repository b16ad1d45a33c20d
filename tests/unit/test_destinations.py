"""Alert destinations and their delivery (issue 14 part 3) against template.yaml's tables and queues under
moto: the URL policy (SSRF), Standard Webhooks signatures checked with the `standardwebhooks` package's own
verify, the Slack body, the backoff schedule, DeliveryFunction's retry / dead-letter / SNS paths, the routes'
validation and auth scoping, secrets never listed, and `mars redrive`'s plan for a dead-lettered delivery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from mars_common import auth, aws, config, delivery, destinations
from mars_common.config import settings
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from mars import redrive
from tests.conftest import load_function
from tests.unit.test_api import Api, assert_error, fields


# --- a loopback receiver -----------------------------------------------------------------------------
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers `statuses` in turn (then 200) and keeps every request."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


ALERT = {"type": "alert", "alert_id": "al_1", "app_id": "shop", "message_id": "order-7",
         "rule": {"kind": "deadline", "step": "SHIPPED", "after": "PAID"}, "state": "firing",
         "fired_at": "2026-11-30T10:00:00.000Z", "resolved_at": None,
         "timeline_url": "https://mars.example/search/event?message_id=order-7&app_id=shop"}


# --- URL policy ----------------------------------------------------------------------------------------
def public_dns(host: str, port: int) -> list[str]:
    return {"hooks.example.com": ["93.184.216.34"], "internal.example.com": ["10.1.2.3"],
            "mixed.example.com": ["93.184.216.34", "192.168.0.5"], "rebind.example.com": ["169.254.169.254"],
            "v6.example.com": ["2606:4700::1111"]}.get(host) or _nx(host)


def _nx(host: str) -> list[str]:
    raise OSError(f"[Errno -2] Name or service not known: {host}")


@pytest.mark.parametrize("url,loopback,ok", [
    ("https://hooks.example.com/mars", False, True),
    ("https://93.184.216.34:8443/x?y=1", False, True),
    ("https://v6.example.com/", False, True),
    ("http://hooks.example.com/mars", False, False),  # https only deployed
    ("http://hooks.example.com/mars", True, False),  # the local stack: loopback only, nothing resolved
    ("https://hooks.example.com/mars", True, False),
    ("https://93.184.216.34/", True, False),
    ("https://internal.example.com/", False, False),  # resolves to a private address
    ("https://mixed.example.com/", False, False),  # any private address refuses the host
    ("https://rebind.example.com/", False, False),  # cloud metadata (link-local)
    ("https://169.254.169.254/latest/meta-data", False, False),
    ("https://10.0.0.1/", True, False),  # private: refused even on the local stack
    ("https://192.168.1.1/", True, False),
    ("https://100.64.0.1/", False, False),  # shared address space
    ("https://0.0.0.0/", False, False),
    ("https://[::ffff:10.0.0.1]/", False, False),  # IPv4-mapped private
    ("https://[fe80::1]/", False, False),
    ("https://224.0.0.1/", False, False),
    ("http://127.0.0.1:9000/hook", False, False),  # loopback refused deployed
    ("https://localhost/", False, False),
    ("https://[::1]/", False, False),
    ("http://127.0.0.1:9000/hook", True, True),  # the local stack's receivers
    ("http://localhost:9000/hook", True, True),
    ("http://[::1]:9000/hook", True, True),
    ("https://nx.example.com/", False, False),  # does not resolve
    ("https://user:pw@hooks.example.com/", False, False),
    ("https://hooks.example.com/#frag", False, False),
    ("ftp://hooks.example.com/", False, False),
    ("https:///nohost", False, False),
    ("https://hooks.example.com:99999/", False, False),
    ("https://hooks.example.com/a b", False, False),
    (None, False, False),
])
def test_the_url_policy(url: Any, loopback: bool, ok: bool) -> None:
    if loopback:
        resolver = _no_dns  # the local stack never resolves a name (no DNS query leaves the machine)
    else:
        resolver = public_dns
    if ok:
        assert destinations.check_url(url, allow_loopback=loopback, resolver=resolver)
    else:
        with pytest.raises(destinations.UrlRefusedError):
            destinations.check_url(url, allow_loopback=loopback, resolver=resolver)


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host} on the local stack")


def test_delivery_checks_the_address_again_and_never_connects_to_a_refused_one(receiver: Receiver) -> None:
    """A host that resolved to a public address at creation and to a private one now (DNS rebinding)."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    assert destinations.check_url("https://hooks.example.com/", allow_loopback=False,
                                  resolver=lambda h, p: next(answers))
    out = delivery.post("https://hooks.example.com/", "{}", {}, timeout=2, allow_loopback=False,
                        resolver=lambda h, p: next(answers))
    assert not out.ok and out.error.startswith("refused:") and "127.0.0.1" in out.error
    # and the loopback receiver itself, named by its address, is refused where loopback is not allowed
    out = delivery.post(receiver.url, "{}", {}, timeout=2, allow_loopback=False)
    assert not out.ok and out.status is None and receiver.requests == []


def test_https_deliveries_verify_the_certificate_for_the_urls_host_name(tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection goes to the checked address, but TLS is checked against the URL's name (SNI too)."""
    import ssl

    from samlocal.tls import make_ca

    ca = make_ca(tmp_path, hosts=("localhost",))
    receiver = Receiver()
    receiver.server.socket = ca.server_context().wrap_socket(receiver.server.socket, server_side=True)
    port = receiver.server.server_address[1]
    try:
        untrusted = delivery.post(f"https://localhost:{port}/hook", "{}", {}, timeout=5, allow_loopback=True)
        assert not untrusted.ok and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.bundle))  # trust the local CA (ssl's default paths)
        assert ssl.get_default_verify_paths().cafile == str(ca.bundle)
        wrong_name = delivery.post(f"https://127.0.0.1:{port}/hook", "{}", {}, timeout=5, allow_loopback=True)
        assert not wrong_name.ok and "127.0.0.1" in wrong_name.error  # the certificate names localhost only
        trusted = delivery.post(f"https://localhost:{port}/hook", "{}", {}, timeout=5, allow_loopback=True)
        assert trusted.ok and trusted.status == 200 and len(receiver.requests) == 1
    finally:
        receiver.close()


def test_listings_show_urls_redacted() -> None:
    assert destinations.redact("https://hooks.slack.com/services/T0/B0/secret") == "https://hooks.slack.com/services/…"
    assert destinations.redact("https://h.example/hook?token=x") == "https://h.example/hook/…"
    assert destinations.redact("http://127.0.0.1:9000/hook") == "http://127.0.0.1:9000/hook"


# --- signatures and bodies -------------------------------------------------------------------------------
def test_a_delivery_is_signed_as_standard_webhooks_and_verifies_with_its_library(receiver: Receiver) -> None:
    secret = destinations.new_secret()
    assert secret.startswith("whsec_") and len(Webhook(secret)._whsecret) == 32
    msg_id = delivery.webhook_id(ALERT)
    out = delivery.deliver_webhook(ALERT, msg_id, receiver.url, secret, "standard", timeout=5, allow_loopback=True)
    assert out.ok and out.status == 200 and out.host == "127.0.0.1"
    ((headers, body),) = receiver.requests
    assert headers["webhook-id"] == msg_id and headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == ALERT
    with pytest.raises(WebhookVerificationError):  # another destination's secret does not verify it
        Webhook(destinations.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # nor does a changed body
        Webhook(secret).verify(body.replace(b"firing", b"resolved"), headers)


def test_the_webhook_id_is_stable_per_alert_transition() -> None:
    assert delivery.webhook_id(ALERT) == delivery.webhook_id(dict(ALERT))
    assert delivery.webhook_id(ALERT) != delivery.webhook_id({**ALERT, "state": "resolved"})
    assert delivery.webhook_id(ALERT) != delivery.webhook_id({**ALERT, "alert_id": "al_2"})


def test_the_slack_body() -> None:
    body = json.loads(delivery.render({**ALERT, "message_id": "<order&7>"}, "slack"))
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith("[FIRING] app shop, message <order&7>: SHIPPED did not arrive in time after PAID")
    assert ALERT["timeline_url"] in body["text"]
    blocks = json.dumps(body["blocks"])
    assert "&lt;order&amp;7&gt;" in blocks and "<order" not in blocks  # mrkdwn escaped
    assert f"<{ALERT['timeline_url']}|timeline>" in blocks and "SHIPPED" in blocks and "firing" in blocks
    resolved = delivery.slack_body({**ALERT, "state": "resolved", "resolved_at": "2026-11-30T11:00:00Z"})
    assert resolved["text"].startswith("[RESOLVED]") and "2026-11-30T11:00:00Z" in json.dumps(resolved["blocks"])


# --- backoff -------------------------------------------------------------------------------------------
def test_the_backoff_doubles_up_to_its_cap_and_retries_for_the_whole_window() -> None:
    assert [delivery.retry_delay(n, 30, 86400) for n in range(1, 11)] == \
        [30, 60, 120, 240, 480, 960, 1920, 3840, 7680, 10800]
    assert [delivery.retry_delay(n, 2, 300) for n in range(1, 7)] == [2, 4, 8, 16, 32, 37]
    # deployed: attempts until the window closes; the last one at its end, after at least 24 h
    start, now, attempt, times = 1000.0, 1000.0, 1, [1000.0]
    while (delay := delivery.next_visibility(attempt, start, now, 30, 86400)) is not None:
        assert 1 <= delay <= delivery.MAX_VISIBILITY_SECONDS
        now += delay
        attempt += 1
        times.append(now)
    assert times[-1] - start == 86400 and 14 <= attempt <= 20
    assert delivery.next_visibility(3, start, start + 86399.5, 30, 86400) == 1  # never past the window
    assert delivery.next_visibility(3, start, start + 86400, 30, 86400) is None


# --- the routes ------------------------------------------------------------------------------------------
def _routes(api: Api, method: str, app_id: str, suffix: str = "", body: Any = None,
            key: str | None = None) -> Any:
    resource = "/api/apps/{app_id}/destinations"
    params = {"app_id": app_id}
    if suffix:
        parts = suffix.strip("/").split("/")
        params["destination_id"] = parts[0]
        resource += "/{destination_id}" + ("/test" if len(parts) > 1 else "")
    event = api.event(method, f"/api/apps/{app_id}/destinations{suffix}", resource=resource, params=params, body=body)
    if key is not None:
        event["headers"]["x-api-key"] = key
        event["multiValueHeaders"]["x-api-key"] = [key]
    return api.send(event)


@pytest.fixture
def api(mocked_stack: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("ALLOW_LOOPBACK_DESTINATIONS", "true")  # as the local stack
    config.settings.cache_clear()
    return Api(load_function("api"), lambda_context)


def test_create_list_delete_and_secrets_are_never_listed(api: Api, receiver: Receiver) -> None:
    made = _routes(api, "POST", "shop", body={"type": "webhook", "url": receiver.url + "/x?t=1", "format": "slack"})
    assert made.status == 201, made.body
    assert made.body["secret"].startswith("whsec_") and made.body["id"].startswith("dst_")
    assert made.body["format"] == "slack" and made.body["url"] == receiver.url + "/…"
    sns = _routes(api, "POST", "shop", body={"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t"})
    assert sns.status == 201 and sns.body["secret"] is None
    listed = _routes(api, "GET", "shop")
    assert listed.status == 200
    assert [d["id"] for d in listed.body["items"]] == [made.body["id"], sns.body["id"]]
    text = json.dumps(listed.body)
    assert made.body["secret"] not in text and "secret" not in text and "t=1" not in text
    # stored apart: the listed table has no secret and no full URL
    item = aws.table(settings().destinations_table).get_item(Key={"app_id": "shop", "destination_id": made.body["id"]})["Item"]
    assert made.body["secret"] not in json.dumps(item, default=str) and "t=1" not in json.dumps(item, default=str)
    assert _routes(api, "GET", "bank").body["items"] == []  # another app's list
    assert _routes(api, "DELETE", "bank", "/" + made.body["id"]).status == 404  # not another app's to delete
    assert _routes(api, "DELETE", "shop", "/" + made.body["id"]).status == 200
    assert _routes(api, "DELETE", "shop", "/" + made.body["id"]).status == 404
    assert destinations.secret_of(settings().destination_secrets_table, made.body["id"]) is None
    assert [d["id"] for d in _routes(api, "GET", "shop").body["items"]] == [sns.body["id"]]


@pytest.mark.parametrize("body,bad", [
    ({"type": "email"}, {"type"}),
    ([], {"body"}),
    ({"type": "webhook"}, {"url"}),
    ({"type": "webhook", "url": "https://10.0.0.1/", "format": "teams"}, {"url", "format"}),
    ({"type": "webhook", "url": "http://127.0.0.1:1/x", "topic_arn": "x"}, {"topic_arn"}),
    ({"type": "sns", "topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"}, {"topic_arn"}),
    ({"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t", "url": "https://x"}, {"url"}),
])
def test_create_refuses_bad_bodies_with_the_field_named(api: Api, body: Any, bad: set[str]) -> None:
    assert fields(assert_error(_routes(api, "POST", "shop", body=body), 400, "VALIDATION_ERROR")) == bad


def test_bad_ids_and_the_per_app_limit(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fields(assert_error(_routes(api, "DELETE", "shop", "/nope"), 400)) == {"destination_id"}
    assert fields(assert_error(_routes(api, "POST", "shop", "/nope/test"), 400)) == {"destination_id"}
    assert_error(_routes(api, "POST", "shop", "/dst_0123456789abcdef/test"), 404, "NOT_FOUND")
    assert fields(assert_error(_routes(api, "GET", "bad app"), 400)) == {"app_id"}
    monkeypatch.setattr(destinations, "MAX_PER_APP", 1)
    body = {"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}
    assert _routes(api, "POST", "shop", body=body).status == 201
    assert_error(_routes(api, "POST", "shop", body=body), 409, "TOO_MANY_DESTINATIONS")


def test_loopback_receivers_are_refused_where_the_stack_does_not_allow_them(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOW_LOOPBACK_DESTINATIONS", "false")  # the template's default (deployed)
    config.settings.cache_clear()
    details = assert_error(_routes(api, "POST", "shop", body={"type": "webhook", "url": "http://127.0.0.1:9/x"}), 400)
    assert "AllowLoopbackDestinations" in details[0]["message"]


@pytest.fixture
def scoped(auth_on: Any, lambda_context: Any) -> tuple[Api, dict[str, str]]:
    table = settings().keys_table
    keys = {"shop": auth.create_key(table, ["shop"])[1], "bank": auth.create_key(table, ["bank"])[1]}
    return Api(load_function("api"), lambda_context), keys


def test_every_destination_route_is_scoped_to_the_keys_apps(scoped: tuple[Api, dict[str, str]]) -> None:
    api, keys = scoped
    body = {"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}
    mine = _routes(api, "POST", "bank", body=body, key=keys["bank"])
    assert mine.status == 201
    dest = "/" + mine.body["id"]
    for method, suffix, payload in [("POST", "", body), ("GET", "", None), ("DELETE", dest, None),
                                    ("POST", dest + "/test", None)]:
        assert_error(_routes(api, method, "bank", suffix, body=payload, key=keys["shop"]), 403, "FORBIDDEN")
        assert _routes(api, method, "bank", suffix, body=payload).status == 401  # no key
    assert [d["id"] for d in _routes(api, "GET", "bank", key=keys["bank"]).body["items"]] == [mine.body["id"]]
    assert _routes(api, "POST", "bank", dest + "/test", key=keys["bank"]).status == 202
    assert _routes(api, "DELETE", "bank", dest, key=keys["bank"]).status == 200


# --- fan_out and DeliveryFunction -------------------------------------------------------------------------
@pytest.fixture
def deliveries(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """DeliveryFunction's environment (its own variables beside the globals), loopback allowed."""
    from samlocal.lambdas import build_spec

    for key, value in build_spec(mocked_stack, "DeliveryFunction", {}).environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ALLOW_LOOPBACK_DESTINATIONS", "true")
    monkeypatch.setenv("DELIVERY_RETRY_SECONDS", "60")
    monkeypatch.setenv("DELIVERY_BACKOFF_SECONDS", "2")
    config.settings.cache_clear()
    return load_function("delivery")


def _webhook(url: str, app_id: str = "shop") -> dict[str, Any]:
    cfg = settings()
    new = destinations.parse({"type": "webhook", "url": url}, allow_loopback=True)
    return destinations.create(cfg.destinations_table, cfg.destination_secrets_table, app_id, new)


def _receive(url: str, visibility: int = 30) -> list[dict[str, Any]]:
    from samlocal.triggers.sqs import SqsSource, lambda_record

    got = aws.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=visibility,
                                            AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages", [])
    source = SqsSource(queue_url=url, queue_arn="arn:aws:sqs:us-east-1:123456789012:q")
    return [lambda_record(m, source, "us-east-1") for m in got]


def _logs(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The structured lines so far (Powertools' fields: level, message and the `extra` keys), then forgotten."""
    out = [{**r.__dict__, "level": r.levelname, "message": r.getMessage()} for r in caplog.records]
    caplog.clear()
    return out


def test_fan_out_enqueues_one_delivery_per_destination(deliveries: Any) -> None:
    a, b = _webhook("http://127.0.0.1:9/a"), _webhook("http://127.0.0.1:9/b")
    _webhook("http://127.0.0.1:9/c", app_id="bank")
    assert delivery.fan_out(ALERT) == 2
    bodies = [json.loads(r["body"]) for r in _receive(settings().alert_delivery_queue_url)]
    assert sorted(b_["destination_id"] for b_ in bodies) == sorted([a["id"], b["id"]])
    assert all(b_["alert"] == ALERT and b_["webhook_id"] == delivery.webhook_id(ALERT) for b_ in bodies)
    assert delivery.fan_out(ALERT, only=a["id"]) == 1
    assert delivery.fan_out({**ALERT, "app_id": "nobody"}) == 0
    with pytest.raises(ValueError, match="alert_id"):
        delivery.fan_out({"app_id": "shop", "state": "firing"})


def test_fan_out_says_which_deliveries_were_not_enqueued(deliveries: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _webhook("http://127.0.0.1:9/a")
    monkeypatch.setenv("ALERT_DELIVERY_QUEUE_URL", settings().alert_delivery_queue_url + "-gone")
    config.settings.cache_clear()
    with pytest.raises(delivery.FanOutError, match=made["id"]):
        delivery.fan_out(ALERT)


def test_a_failed_delivery_is_retried_with_backoff_then_dead_lettered_after_the_window(
        deliveries: Any, lambda_context: Any, caplog: pytest.LogCaptureFixture) -> None:
    failing = Receiver([500] * 100)
    try:
        made = _webhook(failing.url)
        delivery.fan_out(ALERT)
        queue = settings().alert_delivery_queue_url
        (record,) = _receive(queue, visibility=0)
        out = deliveries.lambda_handler({"Records": [record]}, lambda_context)
        assert out == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
        assert _receive(queue) == []  # hidden for the backoff (2 s), not the 30 s of the receive
        (warning,) = [line for line in _logs(caplog) if line["level"] == "WARNING"]
        assert warning["destination_id"] == made["id"] and warning["url_host"] == "127.0.0.1"
        assert warning["status"] == 500 and warning["attempt"] == 1 and warning["retry_in_seconds"] == 2
        time.sleep(2.2)
        (record,) = _receive(queue, visibility=0)
        assert record["attributes"]["ApproximateReceiveCount"] == "2"
        # the window is over: the same failure now dead-letters it, with the last error
        body = json.loads(record["body"])
        record["body"] = json.dumps({**body, "first_attempt_at": body["first_attempt_at"] - 61})
        assert deliveries.lambda_handler({"Records": [record]}, lambda_context) == {"batchItemFailures": []}
        (error,) = [line for line in _logs(caplog) if line["level"] == "ERROR"]
        assert error["destination_id"] == made["id"] and error["status"] == 500 and error["attempt"] == 2
        (dead,) = _receive(settings().alert_delivery_dead_letter_queue_url)
        assert dead["messageAttributes"]["ErrorMessage"]["stringValue"].startswith("HTTP 500")
        assert dead["messageAttributes"]["DestinationId"]["stringValue"] == made["id"]
        assert len(failing.requests) == 2
    finally:
        failing.close()


def test_a_delivered_alert_is_done_and_a_deleted_destination_drops_its_deliveries(
        deliveries: Any, lambda_context: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    made = _webhook(receiver.url)
    delivery.fan_out(ALERT)
    records = _receive(settings().alert_delivery_queue_url)
    assert deliveries.lambda_handler({"Records": records}, lambda_context) == {"batchItemFailures": []}
    ((headers, body),) = receiver.requests
    secret = made["secret"]
    assert Webhook(secret).verify(body, headers) == ALERT
    cfg = settings()
    delivery.fan_out(ALERT)
    destinations.delete(cfg.destinations_table, cfg.destination_secrets_table, "shop", made["id"])
    records = _receive(cfg.alert_delivery_queue_url)
    assert deliveries.lambda_handler({"Records": records}, lambda_context) == {"batchItemFailures": []}
    assert len(receiver.requests) == 1
    assert any(line["message"] == "destination deleted; delivery dropped" and line["level"] == "WARNING"
               for line in _logs(caplog))


def test_a_malformed_delivery_goes_to_the_dlq_at_once(deliveries: Any, lambda_context: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    aws.client("sqs").send_message(QueueUrl=settings().alert_delivery_queue_url, MessageBody='{"v": 1}')
    records = _receive(settings().alert_delivery_queue_url)
    assert deliveries.lambda_handler({"Records": records}, lambda_context) == {"batchItemFailures": []}
    assert any(line["level"] == "ERROR" for line in _logs(caplog))
    (dead,) = _receive(settings().alert_delivery_dead_letter_queue_url)
    assert "malformed" in dead["messageAttributes"]["ErrorMessage"]["stringValue"]


def test_an_sns_destination_gets_the_alert_json(deliveries: Any, lambda_context: Any) -> None:
    sns, sqs = aws.client("sns"), aws.client("sqs")
    topic = sns.create_topic(Name="ops-alerts")["TopicArn"]
    inbox = sqs.create_queue(QueueName="ops-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    cfg = settings()
    destinations.create(cfg.destinations_table, cfg.destination_secrets_table, "shop",
                        destinations.parse({"type": "sns", "topic_arn": topic}, allow_loopback=False))
    delivery.fan_out(ALERT)
    records = _receive(cfg.alert_delivery_queue_url)
    assert deliveries.lambda_handler({"Records": records}, lambda_context) == {"batchItemFailures": []}
    (got,) = _receive(inbox)
    assert json.loads(got["body"]) == ALERT


def test_redrive_puts_a_dead_lettered_delivery_back_with_a_fresh_window() -> None:
    body = json.dumps({"v": 1, "app_id": "shop", "destination_id": "dst_0123456789abcdef", "webhook_id": "msg_x",
                       "first_attempt_at": 5.0, "alert": ALERT})
    message = {"MessageId": "m1", "Body": body, "MessageAttributes": {
        "ErrorMessage": {"DataType": "String", "StringValue": "HTTP 500"},
        "DestinationId": {"DataType": "String", "StringValue": "dst_0123456789abcdef"},
        "Attempts": {"DataType": "Number", "StringValue": "12"}}}
    plan = redrive.plan_delivery(message, "https://q/delivery", "run1", now=1000.0)
    (send,) = plan.sends
    assert send["QueueUrl"] == "https://q/delivery" and set(send["MessageAttributes"]) == {redrive.RUN_ATTRIBUTE}
    assert json.loads(send["MessageBody"]) == {**json.loads(body), "first_attempt_at": 1000.0}
    assert redrive.plan_delivery({"MessageId": "m2", "Body": "nope"}, "https://q", "run1").kept == redrive.INVALID
    assert redrive.plan_delivery({"MessageId": "m3", "Body": '{"alert": 1}'}, "https://q", "run1").kept == redrive.INVALID


def test_loopback_receivers_are_off_in_the_template_and_on_in_the_local_stack() -> None:
    from mars.cli import LOCAL_PARAMETERS
    from samlocal.template import load
    from tests.conftest import ROOT

    template = load(ROOT / "template.yaml")
    params = template["Parameters"]
    assert params["AllowLoopbackDestinations"]["Default"] == "false"
    assert params["DeliveryRetrySeconds"]["Default"] >= 86400  # at least 24 h deployed
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["ALLOW_LOOPBACK_DESTINATIONS"] == {"Ref": "AllowLoopbackDestinations"}
    assert LOCAL_PARAMETERS["AllowLoopbackDestinations"] == "true"
    assert 60 <= int(LOCAL_PARAMETERS["DeliveryRetrySeconds"]) <= 3600  # minutes locally


def test_delivery_outcomes_are_counted_in_emf(deliveries: Any, lambda_context: Any, receiver: Receiver,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from mars_common import metrics as m

    from tests.unit.test_emf_metrics import metrics_of, services, total

    failing = Receiver([500] * 10)
    try:
        _webhook(receiver.url)
        _webhook(failing.url)
        delivery.fan_out(ALERT)
        capsys.readouterr()
        records = _receive(settings().alert_delivery_queue_url)
        out = deliveries.lambda_handler({"Records": records}, lambda_context)
        assert len(out["batchItemFailures"]) == 1
        lines = metrics_of(capsys)
        assert services(lines) == {"mars-delivery"}
        assert total(lines, m.ALERT_DELIVERIES, outcome="delivered") == 1
        assert total(lines, m.ALERT_DELIVERIES, outcome="retried") == 1
        assert total(lines, m.BATCH_SIZE) == 2
    finally:
        failing.close()
