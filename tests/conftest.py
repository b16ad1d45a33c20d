"""Shared fixtures: Mars's functions loaded as their own modules, AWS mocked from template.yaml."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from tests import scheduling
from tests.cputime import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
LAYER = ROOT / "layers" / "common"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))  # what Lambda does with the layer (/opt/python)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and no endpoint override, so nothing can reach a real account."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "mars-test")


def _clear_caches() -> None:
    from mars_common import auth, aws, config

    auth.clear_cache()
    aws.client.cache_clear()
    aws.table.cache_clear()
    config.settings.cache_clear()


@pytest.fixture
def auth_on(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`mocked_stack` with API keys required (AUTH_REQUIRED=true) and every cache of settings and keys cleared."""
    from mars_common import auth, config

    monkeypatch.setenv("AUTH_REQUIRED", "true")
    config.settings.cache_clear()
    auth.clear_cache()
    return mocked_stack


# `make test` runs the suite on pytest-xdist workers, one module per unit of work, the slowest modules
# first and the ones that mostly wait on a lane of their own (tests/scheduling.py).
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain run keeps the order of the files
    items.sort(key=lambda item: scheduling.order(item.nodeid))  # stable: the rest keep their order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return scheduling.scheduler(config, log)


# Time per test module (setup + call + teardown of its tests; a shared stack's start is charged to the
# first test that needs it), printed after `--durations`' slowest tests: where a run's minutes go (issue 16).
# Beside the wall time, the CPU the test's process tree used (the worker, its stacks and their functions,
# from /proc): a module with far less CPU than wall time waits (timeouts, retries), one with more burns
# both cores.
_module_seconds: dict[str, list[float]] = {}
_cpu_mark: list[float] = []


def _tree_cpu_seconds() -> float:
    """user + system CPU of this process, its live descendants and the dead ones they reaped (Linux /proc;
    0 elsewhere). A descendant that dies unreaped by the tree (orphaned when a stack stops) takes its CPU
    out of the sum: the module that stops a stack can show less CPU than it used, even a negative figure."""
    total, todo, seen = 0.0, [os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        cpu = cpu_seconds(pid)
        if cpu is None:
            continue  # gone meanwhile, or no /proc
        total += cpu
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    now = _tree_cpu_seconds()
    spent = now - _cpu_mark[0] if _cpu_mark else 0.0  # since the last report: between tests counts too
    _cpu_mark[:] = [now]
    outcome.get_result().user_properties.append(("cpu_seconds", spent))  # travels with xdist's reports


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::")[0]
    cpu = sum(v for k, v in report.user_properties if k == "cpu_seconds")
    wall_cpu = _module_seconds.setdefault(module, [0.0, 0.0])
    wall_cpu[0] += report.duration
    wall_cpu[1] += cpu


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if len(_module_seconds) < 2:
        return
    total = sum(w for w, _ in _module_seconds.values())
    cpu = sum(c for _, c in _module_seconds.values())
    # The orphans a stopped stack leaves are in no worker's tree: `make test`'s last line counts them too.
    terminalreporter.write_sep("=", f"slowest 15 of {len(_module_seconds)} modules ({total:.0f} s in all, "
                                    f"{cpu:.0f} s of CPU in the workers' process trees)")
    terminalreporter.write_line("    wall         CPU  module")
    ranked = sorted(_module_seconds.items(), key=lambda kv: kv[1][0], reverse=True)
    for module, (seconds, used) in ranked[:15]:
        terminalreporter.write_line(f"{seconds:7.1f}s {100 * seconds / total:4.1f} % {used:7.1f}s  {module}")
    # Every module, for whoever looks for the next minute to save (build/ is not committed).
    table = Path(terminalreporter.config.rootpath) / "build" / "test-modules.tsv"
    try:
        table.parent.mkdir(exist_ok=True)
        table.write_text("wall_s\tcpu_s\tmodule\n" + "".join(f"{w:.1f}\t{c:.1f}\t{m}\n" for m, (w, c) in ranked))
        terminalreporter.write_line(f"every module: {table}")
    except OSError as exc:
        terminalreporter.write_line(f"every module: not written ({exc})")


def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition", poll: float = 0.01) -> Any:
    """Polls `predicate` until it returns something true (returned), or fails the test after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def table_stream(table_name: str) -> list[dict[str, Any]]:
    """Every record of a table's stream so far (its first shard), as Lambda hands them to a function —
    through the local runtime's own conversion (samlocal.triggers.dynamodb.lambda_record)."""
    from samlocal.triggers.dynamodb import lambda_record

    ddb, streams = boto3.client("dynamodb", region_name="us-east-1"), boto3.client("dynamodbstreams", region_name="us-east-1")
    arn = ddb.describe_table(TableName=table_name)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return [lambda_record(r, arn, "us-east-1") for r in streams.get_records(ShardIterator=iterator)["Records"]]


# One client per service for every mocked stack of this process: a boto3 client costs ~15 ms to make and
# ~25 ms more for its first calls (provision asks per resource; 380 tests provision a stack). moto 5
# mocks every client made after moto is imported, whenever a mock is active, and the credentials are the
# fixtures' dummy ones, so a client made under one test's mock_aws is mocked under the next test's.
@functools.cache
def _provision_client(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1")


@pytest.fixture
def mocked_stack(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """template.yaml's queues and tables created under moto's mock_aws (by the same code the local
    runtime uses), and the environment a function of the template gets, set for this process.

    moto's DynamoDB runs with the emulator's fixes installed (docs/LOCAL.md), as the local stack runs
    it: the functions are tested against the DynamoDB they meet in `mars up` (closer to AWS's: one
    INSERT per new item, atomic transactions), and long timelines' pages are not re-measured and
    re-serialised member by member (stock moto: ~1/3 of the long-timeline tests' CPU)."""
    from moto import mock_aws

    from samlocal.emulator import patches
    from samlocal.emulator.patches import dynamodb as dynamodb_patches
    from samlocal.lambdas import build_spec
    from samlocal.resources import provision
    from samlocal.template import Stack, load

    with mock_aws(), patches.installed(*dynamodb_patches.PATCHES):
        stack = Stack(load(ROOT / "template.yaml"), root=ROOT, name="unit",
                      parameter_overrides={"AllowTestRoutes": "true", "AuthRequired": "false"})
        provision(stack, _provision_client)
        env = build_spec(stack, "ApiFunction", {}).environment
        env["STORE_FUNCTION_NAME"] = stack.ref("StoreFunction")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _clear_caches()
        yield stack
        _clear_caches()


@pytest.fixture(scope="session")
def mars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local stack (`mars up`) per test session, shared by tests/integration and tests/browser."""
    from tests.integration.conftest import start_stack

    stack = start_stack(tmp_path_factory.mktemp("mars"), "mars-it")
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def mars_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local stack with API keys required (`mars up --auth`), and keys made by `mars keys create`:
    `.keys["shop"]` (app shop), `["bank"]` (apps bank, bank2), `["admin"]`."""
    import subprocess

    from tests.integration.conftest import MARS, start_stack

    stack = start_stack(tmp_path_factory.mktemp("mars-auth"), "mars-auth", "--auth")
    try:
        stack.keys = {}
        for name, args in {"shop": ["--app", "shop"], "bank": ["--app", "bank", "--app", "bank2"],
                           "admin": ["--admin"]}.items():
            got = subprocess.run([*MARS, "keys", "create", *args, "--note", f"tests {name}", "--stack-name", "mars-auth",
                                  "--state-dir", str(stack.state_dir)], capture_output=True, text=True, check=True,
                                 cwd=ROOT)
            stack.keys[name] = got.stdout.strip().splitlines()[-1]
        yield stack
    finally:
        stack.stop()


def load_function(name: str) -> ModuleType:
    """functions/<name>/app.py as its own module, so every app.py can be tested side by side."""
    path = ROOT / "functions" / name / "app.py"
    module_name = f"mars_function_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def lambda_context() -> Any:
    from samlocal.worker import LambdaContext

    spec = {"name": "unit-function", "arn": "arn:aws:lambda:us-east-1:123456789012:function:unit-function",
            "memory_mb": 512}
    import time

    return LambdaContext(spec, "req-unit", int(time.time() * 1000) + 10_000, "")


def event_file(name: str) -> dict[str, Any]:
    import json

    return json.loads((EVENTS / name).read_text())


os.environ.setdefault("POWERTOOLS_DEV", "false")
