"""The emulator refuses to start when moto is not the one its patches were written for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from samlocal.emulator import patches
from samlocal.emulator.patches import base

REPO = Path(__file__).resolve().parents[2]


def _start_with(setup: str) -> subprocess.CompletedProcess[str]:
    """`python -m samlocal.emulator`'s main after `setup` changed moto in that process."""
    program = f"import sys, moto, moto.sqs.models, moto.dynamodbstreams.models\n{setup}\n" \
              "from samlocal.emulator.server import main\nsys.exit(main(['--port', '0', '--metrics-interval', '0']))\n"
    return subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)


def _error_line(stderr: str) -> dict:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert errors, stderr
    return errors[0]


def test_every_patch_declares_the_pinned_moto_and_fits_it() -> None:
    pinned = next(line.split("==")[1].strip() for line in (REPO / "constraints.txt").read_text().splitlines()
                  if line.startswith("moto=="))
    assert base.MOTO_VERSION == pinned
    assert all(patch.moto_version == pinned and patch.replacements for patch in patches.PATCHES)
    # In a fresh process: here another test's emulator may have installed the patches already.
    fits = subprocess.run([sys.executable, "-c", "from samlocal.emulator import patches; patches.check_all()"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert fits.returncode == 0, fits.stderr


def test_another_moto_version_makes_the_emulator_refuse_to_start_naming_the_patches() -> None:
    result = _start_with("moto.__version__ = '5.3.0'")
    assert result.returncode == 2, result.stderr
    error = _error_line(result.stderr)
    assert error["msg"].startswith("emulator refused to start")
    assert set(error["patches"]) == {patch.name for patch in patches.PATCHES}
    assert "patch sqs.send_receive: written for moto 5.2.5, moto 5.3.0 is installed" in error["error"]
    assert "emulator listening" not in result.stderr


def test_a_replaced_attribute_moto_no_longer_has_makes_the_emulator_refuse_naming_that_patch() -> None:
    result = _start_with("del moto.dynamodbstreams.models.DynamoDBStreamsBackend.get_records")
    assert result.returncode == 2, result.stderr
    error = _error_line(result.stderr)
    assert error["patches"] == ["dynamodbstreams.shard_iterators"]
    assert ("patch dynamodbstreams.shard_iterators: moto.dynamodbstreams.models.DynamoDBStreamsBackend.get_records "
            "is no longer defined by moto") in error["error"]


def test_an_inherited_attribute_moto_now_defines_itself_is_a_mismatch() -> None:
    result = _start_with("moto.sqs.models.Message.__new__ = staticmethod(lambda cls, *a, **k: object.__new__(cls))")
    assert result.returncode == 2, result.stderr
    assert _error_line(result.stderr)["patches"] == ["sqs.message_tracking"]


def test_an_instance_attribute_init_no_longer_assigns_is_a_mismatch() -> None:
    class Renamed:
        def __init__(self) -> None:
            self.messages_v2: list[str] = []

    patch = base.Patch("test.fake", "why", (base.Replacement(Renamed, "_messages", "instance", lambda original: None),))
    assert base.check(patch, base.MOTO_VERSION) == [
        ("test.fake", f"{Renamed.__module__}.{Renamed.__qualname__}._messages is no longer assigned by "
                      f"{Renamed.__qualname__}.__init__")]


def test_an_attribute_a_patch_adds_that_moto_now_defines_is_a_mismatch() -> None:
    result = _start_with("import moto.dynamodb.models.table as t\nt.Table.__deepcopy__ = lambda self, memo: self")
    assert result.returncode == 2, result.stderr
    error = _error_line(result.stderr)
    assert error["patches"] == ["dynamodb.transactions"]
    assert "moto.dynamodb.models.table.Table.__deepcopy__ is now defined by moto" in error["error"]


def test_a_mismatch_installs_nothing() -> None:
    program = """
import moto
from moto.sqs.models import SQSBackend
from samlocal.emulator import patches
receive = SQSBackend.__dict__["receive_message"]
moto.__version__ = "4.0.0"
try:
    patches.apply()
except patches.PatchMismatchError as exc:
    assert "sqs.message_store" in str(exc)
    assert not patches.is_applied() and SQSBackend.__dict__["receive_message"] is receive and not patches.ORIGINALS
    print("refused, nothing installed")
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "refused, nothing installed", result.stderr


def test_installed_puts_patches_in_for_a_block_and_moto_back_after_and_stock_undoes_apply_for_a_block() -> None:
    program = """
from samlocal.emulator import patches
from samlocal.emulator.patches import dynamodb

chosen = dynamodb.PATCHES
where = [(r.owner, r.name) for p in chosen for r in p.replacements]
def now():
    return [owner.__dict__.get(name) for owner, name in where]
stock = now()
assert any(v is None for v in stock)  # an inherited and an added attribute are among them
with patches.installed(*chosen):
    inside = now()
    assert all(v is not None and v is not s for v, s in zip(inside, stock)), "a patch not installed"
assert now() == stock, "moto not put back"

import moto
version, moto.__version__ = moto.__version__, "4.0.0"
try:
    with patches.installed(dynamodb.TRANSACTIONS):
        raise AssertionError("installed on a moto it was not written for")
except patches.PatchMismatchError as exc:
    assert "dynamodb.transactions" in str(exc) and now() == stock
moto.__version__ = version

patches.apply()
applied = now()
with patches.installed(dynamodb.UPDATE_EXPRESSIONS, stock=True):
    swapped = now()
assert now() == applied, "the applied patches not put back"
n = len(dynamodb.REQUEST_LOCK.replacements + dynamodb.STREAM_RECORDS.replacements + dynamodb.QUERY_PARTITION.replacements
        + dynamodb.TRANSACTIONS.replacements)
ue = len(dynamodb.UPDATE_EXPRESSIONS.replacements)
assert swapped[:n] == applied[:n] and swapped[n:n + ue] == stock[n:n + ue] and swapped[n + ue:] == applied[n + ue:]

print("ok")
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
