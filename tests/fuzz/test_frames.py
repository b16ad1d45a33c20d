"""Malformed input on the two non-HTTP ways in, against the shared stack (`mars`).

Websocket (docs/LIVE.md): a malformed frame (not JSON, binary, wrong types for every field, unknown
actions, deeply nested, just under the 128 KB limit) gets one `error` frame and the connection stays
usable. A message over 128 KB closes it with 1009 (as documented); invalid UTF-8 in a text frame
closes it with 1007 (RFC 6455 §8.1). Whatever one connection sends, another one's subscription keeps
receiving its pushes and its pings are answered, also while 1,000 bad frames are being processed.

gRPC (grpc_shim): bytes that are not an EventRequest, wrong wire types, invalid UTF-8, oversized
strings and messages, a 600-event bulk: each call ends with an error status (never OK, never a dead
server), and a well-formed client calling at the same time keeps succeeding.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import ROOT, RunningStack, wait_timeline

sys.path.insert(0, str(ROOT / "grpc_shim"))
import event_pb2  # noqa: E402
from event_pb2_grpc import MarsGrpcStub  # noqa: E402

WS_LIMIT = 128 * 1024  # API Gateway's limit per client message, as the local gateway enforces it
FRAME_LIMIT = 32 * 1024  # and per frame: a longer message must be sent in fragments
ERROR_CODES = {"INVALID_JSON", "MISSING_ACTION", "UNKNOWN_ACTION", "VALIDATION_ERROR", "TOO_MANY_SUBSCRIPTIONS",
               "BINARY_FRAME"}
REPLY_TYPES = {"error", "subscribed", "unsubscribed", "timeline", "pong"}
FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- websocket helpers --------------------------------------------------------------------------

def ws(mars: RunningStack) -> ClientConnection:
    return connect(mars.outputs["WebSocketUrl"], open_timeout=10, max_size=None)


def replies(conn: ClientConnection, pongs: int = 1, timeout: float = 20) -> list[dict[str, Any]]:
    """Sends a ping and returns every frame that arrived before its pong. Frames of one connection are
    handled in order, so these are the replies to what was sent before the ping."""
    conn.send(json.dumps({"action": "ping"}))
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while pongs:
        frame = json.loads(conn.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame == {"type": "pong"}:
            pongs -= 1
        else:
            out.append(frame)
    return out


def text(value: Any) -> str:
    return json.dumps(value)


def sub(**fields: Any) -> str:
    return text({"action": "subscribe", **fields})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def send(conn: ClientConnection, frame: str | bytes) -> None:
    """One message, fragmented as API Gateway requires past 32 KB a frame (browsers do not: they get 1009)."""
    if isinstance(frame, str) and len(frame.encode()) > FRAME_LIMIT:
        conn.send([frame[i:i + FRAME_LIMIT // 4] for i in range(0, len(frame), FRAME_LIMIT // 4)])
    else:
        conn.send(frame)


def padded(size: int) -> str:
    """A subscribe frame of exactly `size` bytes with an unknown field `pad` (so: VALIDATION_ERROR)."""
    head, tail = '{"action": "subscribe", "app_id": "a", "pad": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


# (id, frame, code, field): the frame gets exactly one error frame with that code (and field, if named)
MALFORMED: list[tuple[str, str | bytes, str, str | None]] = [
    ("binary-garbage", b"\x00\xff\xfe\x80garbage", "BINARY_FRAME", None),
    ("binary-json", b'{"action": "ping"}', "BINARY_FRAME", None),  # binary frames are never routed (API Gateway)
    ("not-json", "subscribe me", "INVALID_JSON", None),
    ("empty", "", "INVALID_JSON", None),
    ("truncated-json", '{"action": "subscribe", "app_id": "a"', "INVALID_JSON", None),
    ("json-list", "[]", "INVALID_JSON", None),
    ("json-number", "42", "INVALID_JSON", None),
    ("json-null", "null", "INVALID_JSON", None),
    ("json-string", '"subscribe"', "INVALID_JSON", None),
    ("int-too-long", '{"action": "subscribe", "app_id": ' + "9" * 5000 + "}", "INVALID_JSON", None),
    ("no-action", "{}", "MISSING_ACTION", "action"),
    ("action-null", text({"action": None}), "MISSING_ACTION", "action"),
    *[(f"action-{name}", text({"action": value}), "UNKNOWN_ACTION", "action") for name, value in [
        ("int", 42), ("float", 1.5), ("true", True), ("list", ["subscribe"]), ("object", {"subscribe": 1}),
        ("upper", "SUBSCRIBE"), ("connect", "$connect"), ("disconnect", "$disconnect"), ("default", "$default"),
        ("unknown", "publish"), ("long", "x" * 5000), ("empty", ""), ("nul", "sub\u0000scribe")]],
    *[(f"app_id-{name}", sub(app_id=value), "VALIDATION_ERROR", "app_id") for name, value in [
        ("int", 42), ("float", 1.5), ("true", True), ("null", None), ("list", ["a"]), ("object", {"a": 1}),
        ("empty", ""), ("space", "a b"), ("slash", "a/b"), ("too-long", "a" * 129), ("newline", "a\n"),
        ("unicode", "café")]],
    ("app_id-missing", sub(message_id="m"), "VALIDATION_ERROR", "app_id"),
    *[(f"message_id-{name}", sub(app_id="fuzz", message_id=value), "VALIDATION_ERROR", "message_id")
      for name, value in [("int", 42), ("float", 1.5), ("true", True), ("list", ["m"]), ("object", {"m": 1}),
                          ("empty", ""), ("control", "m\u0007"), ("too-long", "m" * 257)]],
    ("unknown-field", sub(app_id="fuzz", colour="red"), "VALIDATION_ERROR", "colour"),
    ("unsubscribe-int", text({"action": "unsubscribe", "app_id": 42}), "VALIDATION_ERROR", "app_id"),
    ("unsubscribe-list", text({"action": "unsubscribe", "app_id": "fuzz", "message_id": []}), "VALIDATION_ERROR",
     "message_id"),
    ("just-under-128kb", padded(WS_LIMIT), "VALIDATION_ERROR", "pad"),
]
# Found by this suite (fixed): json.loads raised RecursionError on these, which the gateway's route selection
# and WebSocketFunction did not catch, and the connection was closed with 1011.
NESTED: list[Any] = [
    pytest.param("deep-array", nested(5000), "INVALID_JSON", None, id="deep-array"),
    # nested past what a JSON parser follows: the frame as a whole is not readable JSON
    pytest.param("deep-app_id", '{"action": "subscribe", "app_id": ' + nested(5000) + "}", "INVALID_JSON",
                 None, id="deep-app_id"),
    pytest.param("deep-action", '{"action": ' + nested(3000) + "}", "INVALID_JSON", None,
                 id="deep-action"),
]


@pytest.mark.parametrize("name,frame,code,field",
                         [pytest.param(*case, id=case[0]) for case in MALFORMED] + NESTED)
def test_a_malformed_frame_gets_one_error_frame_and_the_connection_stays_usable(
        mars: RunningStack, name: str, frame: str | bytes, code: str, field: str | None) -> None:
    with ws(mars) as conn:
        send(conn, frame)
        got = replies(conn)
        assert len(got) == 1, got
        error = got[0]
        assert error["type"] == "error" and error["code"] == code, error
        assert isinstance(error["message"], str) and error["message"]
        if field is not None:
            assert field in [d["field"] for d in error["details"]], error
        # still usable: a valid subscription after the garbage is acknowledged
        conn.send(sub(app_id="fuzz"))
        assert replies(conn) == [{"type": "subscribed", "app_id": "fuzz"}]


@pytest.mark.parametrize("frame,close_code", [
    pytest.param(padded(WS_LIMIT + 1), 1009, id="just-over-128kb"),
    pytest.param(padded(FRAME_LIMIT + 1), 1009, id="one-frame-just-over-32kb"),
    pytest.param('{"action": "ping", "pad": "' + "x" * (2 * WS_LIMIT) + '"}', 1009, id="256kb"),
    pytest.param(b'{"action": "\xff\xfe"}', 1007, id="invalid-utf8-text"),
    pytest.param(b"\xed\xa0\x80", 1007, id="utf8-surrogate-text"),
])
def test_a_frame_over_the_limit_or_not_utf8_closes_only_its_connection(mars: RunningStack, frame: str | bytes,
                                                                       close_code: int) -> None:
    with ws(mars) as conn:
        if isinstance(frame, bytes):
            conn.send(frame, text=True)  # a text frame whose payload is not UTF-8
        else:
            conn.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code, closed.value


JSON_LEAVES = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)
FRAME_OBJECTS = st.dictionaries(
    st.sampled_from(["action", "app_id", "message_id", "colour"]) | st.text(max_size=6),
    JSON_VALUES | st.sampled_from(["subscribe", "unsubscribe", "ping", "fuzz", "m-1"]), max_size=4)
FRAMES = st.one_of(
    FRAME_OBJECTS.map(json.dumps),
    st.fixed_dictionaries({"action": st.sampled_from(["subscribe", "unsubscribe"])},
                          optional={"app_id": JSON_VALUES, "message_id": JSON_VALUES}).map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
)


@pytest.fixture(scope="module")
def fuzz_connection(mars: RunningStack) -> Iterator[ClientConnection]:
    with ws(mars) as conn:
        yield conn


@seed(20261126)
@FUZZ
@given(frame=FRAMES)
def test_generated_frames_get_only_protocol_replies(fuzz_connection: ClientConnection, frame: str | bytes) -> None:
    """Whatever the frame, the answer is the protocol's (an error frame, or what a valid request gets), never
    API Gateway's "Internal server error" or "Forbidden", and the connection stays open."""
    fuzz_connection.send(frame)
    parsed: Any = None
    if isinstance(frame, str):
        try:
            parsed = json.loads(frame)
        except (ValueError, RecursionError):
            parsed = None
    pinged = isinstance(parsed, dict) and parsed.get("action") == "ping"
    got = replies(fuzz_connection, pongs=2 if pinged else 1)
    for reply in got:
        assert "message" not in reply or reply.get("type") == "error", reply  # gateway errors have no type
        assert reply.get("type") in REPLY_TYPES, reply
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES, reply
    valid_action = isinstance(parsed, dict) and parsed.get("action") in ("subscribe", "unsubscribe", "ping")
    if not valid_action:
        # (a timeline frame may arrive at any time: an earlier example may have subscribed to an app)
        assert [r["type"] for r in got if r["type"] != "timeline"] == ["error"], (frame, got)


# --- the isolation test -------------------------------------------------------------------------

GARBAGE = [frame for _, frame, _, _ in MALFORMED if len(frame) < 10_000]


class Reader(threading.Thread):
    """Reads one connection's frames until it saw `errors` error frames and then a pong."""

    def __init__(self, conn: ClientConnection, errors: int) -> None:
        super().__init__(daemon=True)
        self.conn, self.want = conn, errors
        self.frames: list[dict[str, Any]] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                frame = json.loads(self.conn.recv(timeout=120))
                if frame == {"type": "pong"} and len(self.frames) >= self.want:
                    return
                self.frames.append(frame)
        except BaseException as exc:  # reported by the test
            self.failure = exc


def post(mars: RunningStack, app_id: str, message_id: str, event: str) -> None:
    resp = requests.post(mars.url("/api/event"), json={"app_id": app_id, "message_id": message_id, "event": event},
                         timeout=30)
    assert resp.status_code == 202, resp.text


def pushed(conn: ClientConnection, message_id: str, event: str, timeout: float = 30) -> float:
    """Seconds until a timeline push of `message_id` adds `event` (anything else on the connection fails)."""
    start = time.monotonic()
    while True:
        frame = json.loads(conn.recv(timeout=max(0.1, start + timeout - time.monotonic())))
        assert frame.get("type") == "timeline" and frame["message_id"] == message_id, frame
        if [e["event"] for e in frame["new_events"]] == [event]:
            return time.monotonic() - start


def pong_seconds(conn: ClientConnection) -> float:
    start = time.monotonic()
    conn.send(json.dumps({"action": "ping"}))
    assert json.loads(conn.recv(timeout=15)) == {"type": "pong"}
    return time.monotonic() - start


def test_garbage_on_other_connections_does_not_disturb_a_subscriber(mars: RunningStack) -> None:
    app_id, mid = uid("fuzz-live"), uid("m")
    with ws(mars) as victim:
        victim.send(sub(app_id=app_id, message_id=mid))
        assert json.loads(victim.recv(timeout=15))["type"] == "subscribed"
        assert json.loads(victim.recv(timeout=15))["type"] == "timeline"  # the current (empty) timeline

        with ws(mars) as attacker:
            reader = Reader(attacker, errors=1000)
            reader.start()
            for i in range(1000):  # a burst: sent at once, handled one after another by the gateway
                attacker.send(GARBAGE[i % len(GARBAGE)])
            attacker.send(json.dumps({"action": "ping"}))

            # while the burst is being handled, the subscriber's push and pings go through
            post(mars, app_id, mid, "CREATED")
            assert pushed(victim, mid, "CREATED") < 30
            assert pong_seconds(victim) < 5

            # connections closed by oversized and non-UTF-8 frames take nobody with them; nor does a deeply
            # nested frame (it closes its connection today, see the finding above, or gets an error frame)
            for frame, closes in ((padded(WS_LIMIT + 1), True), (b'{"action": "\xff"}', True), (nested(5000), False)):
                with ws(mars) as closer:
                    if isinstance(frame, bytes):
                        closer.send(frame, text=True)
                    else:
                        closer.send(frame)
                    try:
                        replies(closer)
                        assert not closes, "the connection should have been closed"
                    except ConnectionClosed:
                        pass
            post(mars, app_id, mid, "SENT")
            assert pushed(victim, mid, "SENT") < 30
            assert pong_seconds(victim) < 5

            reader.join(120)
            assert reader.failure is None, reader.failure
            assert not reader.is_alive(), f"only {len(reader.frames)} replies to 1000 bad frames"
            assert len(reader.frames) == 1000 and {f["type"] for f in reader.frames} == {"error"}
            assert {f["code"] for f in reader.frames} <= ERROR_CODES
            assert pong_seconds(attacker) < 5  # and the attacker's own connection still works


# --- gRPC ---------------------------------------------------------------------------------------

METHOD = "/MarsWeb.GrpcService.MarsGrpc/collectEvent"
# An undecodable message is the caller's error: INVALID_ARGUMENT (grpc_shim decodes requests itself for this).
DECODE_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT}


def pb(**fields: Any) -> bytes:
    return event_pb2.EventRequest(**{"app_id": "fuzz", "message_id": "m", "event": "CREATED", **fields}) \
        .SerializeToString()


GOOD = pb()


@pytest.fixture(scope="module")
def channel(mars: RunningStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mars.outputs["GrpcEndpoint"]) as ch:
        yield ch


def raw_call(channel: grpc.Channel, payload: bytes, method: str = METHOD) -> grpc.RpcError | bytes:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        return call(payload, timeout=15)
    except grpc.RpcError as err:
        return err


# (id, payload, expected status codes, a field the details must name)
GRPC_MALFORMED: list[tuple[str, bytes, set[grpc.StatusCode], str | None]] = [
    ("garbage", b"\xff\xff\xff\xff\x0f not a protobuf", DECODE_ERRORS, None),
    ("truncated", GOOD[:-1], DECODE_ERRORS, None),
    ("length-past-the-end", b"\x0a\xff\xff\xff\xff\x07", DECODE_ERRORS, None),
    ("invalid-utf8-app_id", b"\x0a\x02\xff\xfe\x12\x01m\x1a\x01E", DECODE_ERRORS, None),
    ("invalid-utf8-meta", GOOD + b"\x32\x04\x0a\x02\xff\xfe", DECODE_ERRORS, None),
    ("end-group-only", b"\x0c", DECODE_ERRORS, None),
    # wrong wire types for known fields: protobuf keeps them as unknown fields, so the field is empty
    ("app_id-as-varint", b"\x08\x2a\x12\x01m\x1a\x01E", {grpc.StatusCode.INVALID_ARGUMENT}, "app_id"),
    ("message_id-as-fixed64", b"\x0a\x01a\x11" + b"\x00" * 8 + b"\x1a\x01E", {grpc.StatusCode.INVALID_ARGUMENT},
     "message_id"),
    ("event-as-fixed32", b"\x0a\x01a\x12\x01m\x1d\x00\x00\x00\x00", {grpc.StatusCode.INVALID_ARGUMENT}, "event"),
    ("start-group", b"\x0b\x0c", {grpc.StatusCode.INVALID_ARGUMENT}, "app_id"),
    ("empty-message", b"", {grpc.StatusCode.INVALID_ARGUMENT}, "app_id"),
    ("oversized-app_id", pb(app_id="a" * 100_000), {grpc.StatusCode.INVALID_ARGUMENT}, "app_id"),
    ("oversized-message_id", pb(message_id="m" * 257), {grpc.StatusCode.INVALID_ARGUMENT}, "message_id"),
    ("oversized-event", pb(event="E" * 1_000_000), {grpc.StatusCode.INVALID_ARGUMENT}, "event"),
    # collectEvent keeps a created_at that is not a timestamp as text (Mars's behaviour, tests/unit/
    # test_grpc_created_at.py), but never a terminal escape: that one is refused, naming the field
    ("bad-created_at-with-escape", pb(created_at="yesterday\x1b]0;owned\x07"), {grpc.StatusCode.INVALID_ARGUMENT},
     "created_at"),
    ("over-4mb", pb(message_id="m" * (5 * 1024 * 1024)), {grpc.StatusCode.RESOURCE_EXHAUSTED}, None),
]


@pytest.mark.parametrize("payload,codes,field", [pytest.param(*case[1:], id=case[0]) for case in GRPC_MALFORMED])
def test_a_malformed_grpc_message_gets_an_error_status(channel: grpc.Channel, payload: bytes,
                                                       codes: set[grpc.StatusCode], field: str | None) -> None:
    got = raw_call(channel, payload)
    assert isinstance(got, grpc.RpcError), f"accepted: {got!r}"
    assert got.code() in codes, (got.code(), got.details())
    if field is not None:
        assert field in (got.details() or ""), got.details()


def test_a_600_event_bulk_is_refused(channel: grpc.Channel) -> None:
    bulk = event_pb2.EventsRequest(events=[event_pb2.EventRequest(app_id="fuzz", message_id=f"m{i}", event="E")
                                           for i in range(600)]).SerializeToString()
    got = raw_call(channel, bulk, "/MarsWeb.GrpcService.MarsGrpc/collectEvents")
    assert isinstance(got, grpc.RpcError) and got.code() == grpc.StatusCode.INVALID_ARGUMENT, got
    assert "events" in (got.details() or "")


def test_garbage_in_a_client_stream_fails_the_stream(channel: grpc.Channel) -> None:
    call = channel.stream_unary("/MarsWeb.GrpcService.MarsGrpc/streamEvents", request_serializer=None,
                                response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        call(iter([pb(message_id=uid("stream")), b"\xff\xff\xff\xff\x0f", GOOD]), timeout=15)
    assert err.value.code() in DECODE_ERRORS, err.value


@seed(20261126)
@settings(max_examples=400, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(payload=st.binary(min_size=1, max_size=200))
def test_random_bytes_get_an_error_status(channel: grpc.Channel, payload: bytes) -> None:
    got = raw_call(channel, payload)
    assert isinstance(got, grpc.RpcError), f"random bytes accepted as an event: {payload!r} → {got!r}"
    assert got.code() in DECODE_ERRORS, (got.code(), got.details())


def test_grpc_garbage_does_not_disturb_a_well_formed_client(mars: RunningStack, channel: grpc.Channel) -> None:
    app_id = uid("fuzz-grpc")
    stop = threading.Event()
    results: list[tuple[str, bool]] = []
    failures: list[BaseException] = []

    def good_client() -> None:
        with grpc.insecure_channel(mars.outputs["GrpcEndpoint"]) as own:
            stub = MarsGrpcStub(own)
            n = 0
            while not stop.is_set():
                mid = f"m{n:04d}"
                try:
                    reply = stub.collectEvent(event_pb2.EventRequest(app_id=app_id, message_id=mid, event="CREATED"),
                                              timeout=15)
                    results.append((mid, reply.success))
                except grpc.RpcError as exc:
                    failures.append(exc)
                n += 1

    client = threading.Thread(target=good_client, daemon=True)
    client.start()
    rng = random.Random(20261126)
    started = time.monotonic()
    bad = 0
    while time.monotonic() - started < 4 or len(results) < 20:
        payload = rng.choice([bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),
                              *[case[1] for case in GRPC_MALFORMED[:10]]])
        assert isinstance(raw_call(channel, payload), grpc.RpcError)
        bad += 1
        if time.monotonic() - started > 30:
            break
    stop.set()
    client.join(30)
    assert not failures, failures[:3]
    assert len(results) >= 20 and all(ok for _, ok in results), results[:5]
    assert bad > 100
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    wait_timeline(mars, results[-1][0], app_id=app_id)  # and what it sent was stored
