"""The gRPC shim on the running stack: Mars's original clients, health, reflection, bulk, streaming."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from .conftest import ROOT, RunningStack, wait_timeline

sys.path.insert(0, str(ROOT / "grpc_shim"))
import event_pb2  # noqa: E402
import event_pb2_grpc  # noqa: E402

# The Elixir Mars's event.proto, as its clients have it (DESIGN §2): only what Mars had.
ORIGINAL = """syntax = "proto3";
package MarsWeb.GrpcService;
service MarsGrpc { rpc collectEvent (EventRequest) returns (EventResponse); }
message EventRequest { string app_id = 1; string message_id = 2; string event = 3; string created_at = 4; }
message EventResponse { bool success = 1; }
"""


CLIENT = """
import sys
import grpc
import mars_original_pb2 as pb2, mars_original_pb2_grpc as pb2_grpc
target, mid = sys.argv[1], sys.argv[2]
reply = pb2_grpc.MarsGrpcStub(grpc.insecure_channel(target)).collectEvent(
    pb2.EventRequest(app_id="legacy", message_id=mid, event="Hello", created_at="2026-11-26T10:00:00Z"))
print("success" if reply.success else "failure")
"""


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client generated from Mars's original proto, in a process of its own (its messages share
    names with the extended ones, so they cannot live in one descriptor pool)."""
    out = tmp_path_factory.mktemp("mars_original")
    (out / "mars_original.proto").write_text(ORIGINAL)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "mars_original.proto"], check=True)
    (out / "client.py").write_text(CLIENT)
    return out


@pytest.fixture(scope="module")
def channel(mars: RunningStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mars.outputs["GrpcEndpoint"]) as ch:
        yield ch


def uid() -> str:
    return "grpc-" + uuid.uuid4().hex[:10]


def test_a_client_of_the_original_mars_proto_is_served(mars: RunningStack, original: Path) -> None:
    mid = uid()
    got = subprocess.run([sys.executable, "client.py", mars.outputs["GrpcEndpoint"], mid], cwd=original,
                         capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == "success", got.stderr
    timeline = wait_timeline(mars, mid)["timelines"][0]
    assert timeline["events"][0]["event"] == "Hello" and timeline["app_id"] == "legacy"


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "MarsWeb.GrpcService.MarsGrpc"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"MarsWeb.GrpcService.MarsGrpc", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_bulk_and_streaming_calls(mars: RunningStack, channel: grpc.Channel) -> None:
    stub = event_pb2_grpc.MarsGrpcStub(channel)
    mid = uid()
    events = [event_pb2.EventRequest(app_id="g", message_id=mid, event=f"B{i}", created_at=f"2026-11-26T10:00:0{i}Z")
              for i in range(3)]
    bulk = stub.collectEvents(event_pb2.EventsRequest(events=events))
    assert bulk.success and len(bulk.event_ids) == 3
    streamed = stub.streamEvents(iter([event_pb2.EventRequest(app_id="g", message_id=mid, event=f"S{i}",
                                                              created_at=f"2026-11-26T10:01:0{i}Z",
                                                              meta={"i": str(i)}) for i in range(4)]))
    assert streamed.success and streamed.received == 4 and streamed.accepted == 4
    timeline = wait_timeline(mars, mid, events=7)["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == ["B0", "B1", "B2", "S0", "S1", "S2", "S3"]
    assert timeline["events"][3]["meta"] == {"i": "0"}


def test_invalid_input_is_invalid_argument_naming_the_field(channel: grpc.Channel) -> None:
    stub = event_pb2_grpc.MarsGrpcStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.collectEvent(event_pb2.EventRequest(app_id="g", message_id=uid(), event="", created_at="Hello"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event: must not be empty" in err.value.details() and "created_at" in err.value.details()
    good = event_pb2.EventRequest(app_id="g", message_id=uid(), event="OK")
    with pytest.raises(grpc.RpcError) as err:
        stub.collectEvents(event_pb2.EventsRequest(events=[good, event_pb2.EventRequest(app_id="bad app", message_id="m",
                                                                                        event="E")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "events[1].app_id" in err.value.details()


def test_empty_created_at_is_the_time_received_and_concurrent_calls_all_land(mars: RunningStack,
                                                                           channel: grpc.Channel) -> None:
    stub = event_pb2_grpc.MarsGrpcStub(channel)
    mids = [uid() for _ in range(40)]
    futures = [stub.collectEvent.future(event_pb2.EventRequest(app_id="burst", message_id=m, event="E"))
               for m in mids]
    assert all(f.result().success for f in futures)
    timeline = wait_timeline(mars, mids[-1])["timelines"][0]
    assert timeline["events"][0]["created_at"] == timeline["events"][0]["received_at"]


def test_the_dockerfile_runs_the_entrypoint_the_tests_start() -> None:
    dockerfile = (ROOT / "grpc_shim" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "grpc_shim"' in dockerfile
    assert Path(ROOT / "grpc_shim" / "__main__.py").exists()


def test_mars_bench_grpc_prints_a_ghz_style_summary(mars: RunningStack) -> None:
    got = subprocess.run([sys.executable, "-m", "mars.cli", "bench", "grpc", "--target", mars.outputs["GrpcEndpoint"],
                          "-n", "100", "-c", "5", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    for heading in ("Summary:", "Requests/sec:", "Response time histogram:", "Latency distribution:",
                    "99% in", "Status code distribution:", "[OK]   100 responses", "no-op MarsGrpc server"):
        assert heading in got.stdout
    figures = json.loads(got.stdout.strip().splitlines()[-1])
    assert figures["statuses"] == {"OK": 100} and figures["rps"] > 0 and figures["noop_rps"] > 0


def test_the_seeds_own_ghz_body_is_stored(mars: RunningStack, channel: grpc.Channel) -> None:
    """Mars's README load-tests collectEvent with created_at "Hello"; Mars ignored it, so do we
    (unless the shim is strict): stored with the time received, the text kept in meta."""
    mid = uid()
    body = {"app_id": "95625ac7-f249-49af-96a4-90352c72e2b8", "message_id": mid, "event": "Hello", "created_at": "Hello"}
    assert event_pb2_grpc.MarsGrpcStub(channel).collectEvent(event_pb2.EventRequest(**body)).success
    event = wait_timeline(mars, mid)["timelines"][0]["events"][0]
    assert event["event"] == "Hello" and event["created_at"] == event["received_at"]
    assert event["meta"] == {"created_at_text": "Hello"}

