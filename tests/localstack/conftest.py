"""Mars on LocalStack (host mode: `localstack-core` in .venv-localstack, no Docker, no auth token).

One LocalStack for this folder's tests on a free loopback port, and one `mars up --endpoint URL --embedded
dynamodb,dynamodbstreams` on it: LocalStack's DynamoDB downloads Java and DynamoDB Local at first use,
which cannot happen offline, so tables and their streams stay on the embedded emulator.

LocalStack missing (`make localstack` not run): the tests skip and say so, unless MARS_REQUIRE_LOCALSTACK=1
(`make test`, `make localstack-test`), where they fail.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from samlocal.stack import terminate
from tests.integration.conftest import RunningStack, free_port, start_stack

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("MARS_LOCALSTACK_PYTHON") or ROOT / ".venv-localstack" / "bin" / "python")
EMBEDDED = "dynamodb,dynamodbstreams"
# What Mars needs of LocalStack; the rest stays off (faster start, nothing else listening).
SERVICES = "sqs,sns,sts,cloudwatch"


def _unavailable(reason: str) -> None:
    if os.environ.get("MARS_REQUIRE_LOCALSTACK") == "1":
        pytest.fail(f"LocalStack is required here (MARS_REQUIRE_LOCALSTACK=1): {reason}", pytrace=False)
    pytest.skip(f"LocalStack is not installed: {reason}; `make localstack` installs it (.venv-localstack)")


def localstack_env(port: int, root: Path) -> dict[str, str]:
    """Host mode, offline, loopback only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "GATEWAY_SERVER": "hypercorn",  # the default server binds 0.0.0.0 whatever GATEWAY_LISTEN says
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        # queue URLs http://127.0.0.1:PORT/ACCOUNT/NAME, not sqs.REGION.localhost.localstack.cloud (public DNS)
        "LOCALSTACK_HOST": f"127.0.0.1:{port}", "SQS_ENDPOINT_STRATEGY": "off",
        "DNS_ADDRESS": "0",  # no DNS server (it would bind :53 on 0.0.0.0)
        "SKIP_SSL_CERT_DOWNLOAD": "1", "DISABLE_EVENTS": "1",  # offline: no certificate download, no analytics
        "SERVICES": SERVICES, "FILESYSTEM_ROOT": str(root),  # its state and caches in the test's folder
    })
    return env


@pytest.fixture(scope="package")  # stopped once tests/localstack are done
def localstack_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not PYTHON.exists():
        _unavailable(f"no {PYTHON}")
    probe = subprocess.run([str(PYTHON), "-c", "import localstack.runtime.main"], capture_output=True, text=True)
    if probe.returncode != 0:
        _unavailable(f"{PYTHON} cannot import localstack: {probe.stderr.strip()[-300:]}")
    tmp = tmp_path_factory.mktemp("localstack")
    port = free_port()
    log_path = tmp / "localstack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(PYTHON), "-m", "localstack.runtime.main"], env=localstack_env(port, tmp / "fs"),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"LocalStack exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                health = requests.get(url + "/_localstack/health", timeout=2).json()
                if all(health["services"].get(s) in ("available", "running") for s in SERVICES.split(",")):
                    break
            except (requests.RequestException, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"LocalStack not ready after 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        terminate(process, timeout=3)  # its hypercorn shutdown can hang: SIGKILL after 3 s


@pytest.fixture(scope="package")  # stopped once tests/localstack are done
def mars_ls(localstack_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Mars on LocalStack, DynamoDB (and its streams) on the embedded emulator."""
    # --emulator-port = LocalStack's port, as `mars up --endpoint http://127.0.0.1:4566` has by default: the
    # embedded emulator must move to a free port
    stack = start_stack(tmp_path_factory.mktemp("mars-ls"), "mars-ls", "--endpoint", localstack_endpoint,
                        "--embedded", EMBEDDED, "--emulator-port", str(urlsplit(localstack_endpoint).port))
    yield stack
    stack.stop()
