"""Integration fixtures: a real local stack started with the `mars` command, read through its Outputs."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from samlocal.stack import terminate

ROOT = Path(__file__).resolve().parents[2]
MARS = [sys.executable, "-m", "mars.cli"]
# Fast redelivery for tests (the SQS-triggered functions time out first: Lambda refuses a visibility
# timeout shorter than the function timeout); everything else is template.yaml's defaults.
TEST_PARAMETERS = ["QueueVisibilityTimeout=5", "QueueFunctionTimeout=5", "MaxReceiveCount=3",
                   # alert deliveries: a retry window of seconds (tests/integration/test_destinations.py)
                   "DeliveryRetrySeconds=20", "DeliveryBackoffSeconds=1"]


def port_block(environ: Mapping[str, str] = os.environ, ephemeral_low: int | None = None) -> range:
    """This xdist worker's share of the ports between 10000 and the kernel's ephemeral range (all of
    them without xdist), or MARS_TEST_PORTS ("low-high"): `make test` runs schemathesis beside the
    workers on ports below theirs."""
    if environ.get("MARS_TEST_PORTS"):
        low_text, _, high_text = environ["MARS_TEST_PORTS"].partition("-")
        try:
            chosen = range(int(low_text), int(high_text) + 1)
        except ValueError:
            chosen = range(0)
        if not (1024 <= chosen.start and chosen.stop <= 65536 and len(chosen) >= 64):
            raise ValueError(f"MARS_TEST_PORTS={environ['MARS_TEST_PORTS']!r}: want low-high, 1024-65535, "
                             "at least 64 ports")
        return chosen
    if ephemeral_low is None:
        try:
            ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            ephemeral_low = 32768
    low, high = 10_000, max(ephemeral_low, 20_000)
    workers = max(1, int(environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))
    name = environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(name[2:]) % workers if name[2:].isdigit() else 0
    span = (high - low) // workers
    return range(low + index * span, low + (index + 1) * span)


class Ports:
    """Hands out ports of `block` for servers a test starts, `stride` apart (`mars up` gives a template's
    second REST or websocket API the next port), each once until the block wraps around, skipping any
    that cannot be bound."""

    def __init__(self, block: range, start: int, stride: int = 4) -> None:
        self.block, self.stride, self._next = block, stride, start
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            for _ in range(len(self.block) // self.stride):
                port = self.block[self._next % len(self.block)]
                self._next += self.stride
                with socket.socket() as s:
                    try:
                        s.bind(("127.0.0.1", port))
                    except OSError:  # in use, or in TIME_WAIT after a stack that stopped
                        continue
                return port
        raise RuntimeError(f"no free port left in {self.block.start}-{self.block.stop - 1}")


# The kernel's bind(0) picks from the ephemeral range, where a port picked for one xdist worker's stack
# can be picked for another's (or taken by a client socket) before the server binds it: each worker
# draws from a block of its own below that range. A random start keeps two runs at once apart.
_PORTS = Ports(port_block(), random.randrange(len(port_block())))


def free_port() -> int:
    """A loopback port no other worker of this run hands out, for a server a test starts."""
    return _PORTS.take()


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    outputs: dict[str, Any]
    stack_name: str
    keys: dict[str, str] = field(default_factory=dict)  # API keys made for the stack (auth stacks)
    last_stats: str = ""  # the last answer of GET /api/q/stats that drained() saw, for the error

    @property
    def api(self) -> str:
        return str(self.outputs["ApiUrl"])

    def url(self, path: str) -> str:
        return self.api.rstrip("/") + path

    @property
    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / f"{self.stack_name}.json").read_text()))

    def client(self, service: str) -> Any:
        """A boto3 client of the stack's emulator for `service` (as `mars` commands make them)."""
        from mars import stacks

        return stacks.aws_client(self.state, service)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def drained(self) -> bool:
        resp = requests.get(self.url("/api/q/stats"), timeout=30)
        self.last_stats = f"{resp.status_code} {resp.text[:500]}"
        if resp.status_code != 200:  # e.g. 504 when the machine is busy: not drained yet, ask again
            return False
        return all(q["visible"] == 0 and q["in_flight"] == 0 for q in resp.json()["queues"])

    def wait_drained(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.drained():
                return
            time.sleep(0.3)
        raise AssertionError(f"queues did not drain within {timeout}s; last GET /api/q/stats: {self.last_stats}")

    def stop(self) -> None:
        terminate(self.process, timeout=20)


def _mars_shaped(template: Path) -> tuple[list[str], bool]:
    """The test parameters `template` declares, and whether it has what the gRPC shim needs (Mars's
    queues): another SAM app (tests/fixtures/…) gets neither, a copy of Mars's template both."""
    from samlocal.template import load

    spec = load(template)
    declared = set(spec.get("Parameters") or {})
    return ([p for p in TEST_PARAMETERS if p.split("=")[0] in declared],
            "EventsQueueUrls" in (spec.get("Outputs") or {}))


def start_stack(tmp: Path, name: str, *extra: str, template: Path | None = None, cwd: Path = ROOT,
                parameters: tuple[str, ...] = ()) -> RunningStack:
    state_dir, log_path = tmp / "state", tmp / f"{name}.log"
    test_parameters, grpc = _mars_shaped(template) if template else (TEST_PARAMETERS, True)
    cmd = [*MARS, "up", "--stack-name", name, "--state-dir", str(state_dir), "--api-port", str(free_port()), "--ws-port", str(free_port()),
           "--emulator-port", str(free_port()), "--grpc-port", str(free_port() if grpc else 0),
           "--template", str(template or ROOT / "template.yaml"),
           "--parameter-overrides", *test_parameters, *parameters, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = log_path.open("wb")
    process = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mars up exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        # the state (and so `mars outputs`) is written once every server `mars up` starts accepts
        # connections and the gateways are open: `mars outputs` (a process) runs once it exists
        if (state_dir / f"{name}.json").exists():
            got = subprocess.run([*MARS, "outputs", "--stack-name", name, "--state-dir", str(state_dir)],
                                 capture_output=True, text=True, cwd=cwd, env=env)
            if got.returncode == 0:
                return RunningStack(process, state_dir, log_path, json.loads(got.stdout), name)
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"mars up did not become ready:\n{log_path.read_text()[-3000:]}")


def wait_timeline(stack: RunningStack, message_id: str, *, app_id: str | None = None, events: int = 1,
                  timeout: float = 30) -> dict[str, Any]:
    """Polls GET /api/messages/{id} until the timeline holds at least `events` events."""
    deadline = time.monotonic() + timeout
    params = {"app_id": app_id} if app_id else {}
    last: Any = None
    while time.monotonic() < deadline:
        resp = requests.get(stack.url(f"/api/messages/{requests.utils.quote(message_id, safe='')}"), params=params,
                            headers={"x-api-key": stack.keys["admin"]} if "admin" in stack.keys else {},
                            timeout=10)
        if resp.status_code == 200:
            last = resp.json()
            if sum(len(t["events"]) for t in last["timelines"]) >= events:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timeline of {message_id} not complete within {timeout}s: {last}")
