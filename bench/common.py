"""What every benchmark shares: the machine, a local stack as a user starts it, timing helpers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config as BotoConfig

from samlocal.stack import free_port, terminate, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import moto

    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "moto": moto.__version__,
            "loadavg": [round(x, 2) for x in os.getloadavg()], "commit": revision()}


def revision() -> str | None:
    """The commit measured ("+dirty" when the work tree has changes git tracks), None outside a git clone:
    a recorded run names the code it measured."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def client(service: str, endpoint: str, pool: int = 64) -> Any:
    return boto3.client(service, endpoint_url=endpoint, **CREDS,  # type: ignore[call-overload]  # any service, by name
                        config=BotoConfig(max_pool_connections=pool, retries={"max_attempts": 5, "mode": "standard"}))


@dataclass
class Emulator:
    """The emulator as the local stack runs it: DynamoDB in a second process unless `split` is off."""

    processes: list[subprocess.Popen[bytes]]
    endpoint: str
    dynamodb_endpoint: str

    def endpoint_for(self, service: str) -> str:
        return self.dynamodb_endpoint if service in ("dynamodb", "dynamodbstreams") else self.endpoint

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_DYNAMODB": self.dynamodb_endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        terminate(*self.processes)


def start_emulator(patched: bool = True, split: bool = True) -> Emulator:
    ports = [free_port() for _ in range(2 if split else 1)]
    procs = []
    for port in ports:
        cmd = [sys.executable, "-m", "samlocal.emulator", "--port", str(port)] + ([] if patched else ["--no-patches"])
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}))
    for port, proc in zip(ports, procs):
        wait_for_port("127.0.0.1", port, 30, proc)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    return Emulator(procs, urls[0], urls[-1])


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    state: dict[str, Any]
    log: Path

    @property
    def api(self) -> str:
        return str(self.state["outputs"]["ApiUrl"]).rstrip("/")

    @property
    def queue_urls(self) -> list[str]:
        return str(self.state["outputs"]["EventsQueueUrls"]).split(",")

    def lambda_client(self) -> Any:
        return client("lambda", self.state["lambda_endpoint"])

    def _aws_calls_by_caller(self) -> dict[str, Any]:
        """The runtime's count of AWS calls: {"runtime": {op: n}, "functions": {logical id: {op: n}}}."""
        got: dict[str, Any] = requests.get(self.state["lambda_endpoint"] + "/_local/aws-calls", timeout=10).json()
        return got

    def aws_calls(self) -> dict[str, int]:
        got = self._aws_calls_by_caller()
        total: dict[str, int] = dict(got["runtime"])
        for calls in got["functions"].values():
            for k, v in calls.items():
                total[k] = total.get(k, 0) + v
        return total

    def function_aws_calls(self, logical_id: str) -> dict[str, int]:
        return dict(self._aws_calls_by_caller()["functions"].get(logical_id, {}))

    def set_triggers(self, enabled: bool) -> None:
        lam = self.lambda_client()
        for m in lam.list_event_source_mappings()["EventSourceMappings"]:
            lam.update_event_source_mapping(UUID=m["UUID"], Enabled=enabled)

    def stop(self) -> None:
        terminate(self.process, timeout=20)


def start_stack(workdir: Path, *extra: str) -> Stack:
    """`mars up` exactly as a user runs it, on free ports, logging to a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir, log = workdir / "state", workdir / "stack.log"
    name = f"bench{os.getpid()}"
    quiet = [] if "--log-level" in extra else ["--log-level", "WARNING"]
    cmd = [sys.executable, "-m", "mars.cli", "up", "--stack-name", name, "--state-dir", str(state_dir),
           "--api-port", str(free_port()), "--ws-port", str(free_port()), "--emulator-port", str(free_port()),
           "--grpc-port", str(free_port()),
           *quiet, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    path = state_dir / f"{name}.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("mars up failed:\n" + log.read_text()[-2000:])
        if path.exists() and "GrpcEndpoint" in json.loads(path.read_text())["outputs"]:
            return Stack(proc, json.loads(path.read_text()), log)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("mars up did not start in time")


def depth(sqs: Any, urls: list[str]) -> int:
    total = 0
    for url in urls:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        total += int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
    return total


def wait_drained(sqs: Any, urls: list[str], timeout: float, interval: float = 0.2) -> float:
    """Returns the monotonic time at which every queue was first seen empty (nothing waiting or in flight)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if depth(sqs, urls) == 0:
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"queues not drained after {timeout}s")


def progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)
