"""`mars up` as a newcomer meets it: a client that starts polling at the same moment as the stack
never sees a dropped connection, and `/status` answers 200 only once every server accepts
connections (REST, websocket, @connections, gRPC). The log has no raw traceback."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from samlocal.stack import terminate
from tests.integration.conftest import MARS, ROOT, TEST_PARAMETERS, free_port


def poll(port: int) -> str:
    """One fresh-connection GET /status: 'refused' (not listening yet), the status code, or 'dropped'."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 503:
            assert resp.getheader("Retry-After") == "1" and json.loads(body) == {"message": "Service Unavailable"}
        return str(resp.status)
    except ConnectionRefusedError:
        return "refused"
    except (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError, BrokenPipeError) as exc:
        return f"dropped: {type(exc).__name__}"
    finally:
        conn.close()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_status_only_when_everything_is_up_and_no_dropped_connection(tmp_path: Path) -> None:
    api, ws, grpc_port = free_port(), free_port(), free_port()
    state = tmp_path / "state"
    log_path = tmp_path / "up.log"
    cmd = [*MARS, "up", "--stack-name", "startup", "--state-dir", str(state), "--api-port", str(api),
           "--ws-port", str(ws), "--emulator-port", str(free_port()), "--grpc-port", str(grpc_port),
           "--parameter-overrides", *TEST_PARAMETERS]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-3000:]
            got = poll(api)
            seen.append(got)
            if got == "200":
                break
            if got == "refused":
                time.sleep(0.02)
        assert seen[-1] == "200", f"never up: {seen[-5:]}\n{log_path.read_text()[-3000:]}"
        # the moment /status says 200, every server the stack starts accepts connections
        assert accepts(ws), "websocket gateway not listening"
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        state_file = json.loads((state / "startup.json").read_text())
        management = next(iter(state_file["websockets"].values()))[1]
        assert accepts(int(management.rsplit(":", 1)[1]))
        assert "GrpcEndpoint" in state_file["outputs"]  # `mars outputs` is complete once it answers at all
    finally:
        terminate(process, timeout=20)
    dropped = [s for s in seen if s.startswith("dropped")]
    assert not dropped, f"dropped connections during start-up: {dropped}"
    assert set(seen) <= {"refused", "503", "200"}, seen
    text = log_path.read_text(errors="replace")
    raw = [line for line in text.splitlines() if not line.startswith("{") and not line.startswith("Mars is up")]
    assert not raw, f"lines in the log that are not structured: {raw[:20]}"
    assert len([line for line in text.splitlines() if line.startswith("Mars is up")]) == 1
