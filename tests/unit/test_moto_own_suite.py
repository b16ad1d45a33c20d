"""moto's own tests of the services the emulator patches, run on the patched moto.

The emulator replaces moto internals (samlocal/emulator/patches, docs/LOCAL.md): SQS's message store,
FIFO ordering and deduplication; DynamoDB's request lock, stream records, Query, transactions and
update expressions; DynamoDB Streams' iterators. Our own tests check what each patch is for; moto's
tests check everything else those services do, written by the people who wrote moto. So the sdist of
the pinned moto (it ships its tests; from PyPI, cached in .cache/) is unpacked and its DynamoDB, DynamoDB
Streams and SQS tests run with every patch installed (a pytest plugin in each xdist worker). They
must all pass, but for two of moto's SQS tests that start a Lambda function in Docker (no Docker engine
here; they fail on stock moto too).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import moto
import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "moto-sdist"
SUITES = ("tests/test_dynamodb", "tests/test_dynamodbstreams", "tests/test_sqs")
# Their own helpers, imported by the suites above (export/import tests: s3_aws_verified; SQS → Lambda
# tests: a function's zip and role), not run themselves.
HELPERS = ("tests/__init__.py", "tests/conftest.py", "tests/markers.py", "tests/test_s3/__init__.py",
           "tests/test_awslambda/__init__.py", "tests/test_awslambda/test_lambda.py",
           "tests/test_awslambda/utilities.py", "tests/test_ecr/__init__.py", "tests/test_ecr/test_ecr_helpers.py")
NEEDS_DOCKER = ("tests/test_sqs/test_sqs_integration.py::test_invoke_function_from_sqs_queue",
                "tests/test_sqs/test_sqs_integration.py::test_invoke_function_from_sqs_fifo_queue")
PLUGIN = "from samlocal.emulator import patches\n\npatches.apply()  # in every xdist worker, before any test\n"
# Their own root: without it pytest would take this repository's pyproject.toml as the run's config.
INI = "[pytest]\nfilterwarnings = ignore\n"


def _moto_tests(version: str) -> Path:
    """moto's tests of `version`, unpacked from its sdist (downloaded once)."""
    unpacked = CACHE / f"moto-{version}"
    if (unpacked / "_mars_patches.py").is_file():
        return unpacked
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"moto-{version}.tar.gz"
    if not sdist.exists():
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                              "--dest", str(CACHE), f"moto=={version}"], capture_output=True, text=True, timeout=300)
        assert got.returncode == 0 and sdist.exists(), f"could not download moto {version}'s sdist: {got.stderr[-2000:]}"
    prefix = f"moto-{version}/"
    wanted = tuple(prefix + path for path in SUITES + HELPERS)
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(wanted) and (m.isfile() or m.isdir())]
        archive.extractall(CACHE, members=members, filter="data")
    (unpacked / "pytest.ini").write_text(INI)
    (unpacked / "_mars_patches.py").write_text(PLUGIN)
    return unpacked


@pytest.mark.timeout(900)
def test_motos_own_dynamodb_streams_and_sqs_tests_pass_on_the_patched_moto() -> None:
    suite = _moto_tests(moto.__version__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(suite), str(ROOT)])}
    env.pop("PYTEST_XDIST_WORKER", None)
    # 4 workers: most of the SQS tests' time is long polls and visibility timeouts, not CPU.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", "pytest.ini", "--rootdir", ".", "-p", "_mars_patches",
         "-p", "no:cacheprovider", "-n", "4", *SUITES, *(f"--deselect={test}" for test in NEEDS_DOCKER)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=880)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, f"moto's own tests on the patched moto: {summary}\n{result.stdout[-6000:]}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 850, summary  # 887 in moto 5.2.5: not a run that collected nothing
