"""`mars` finds a running local stack from any folder (a state location per user), and says which run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARS = [sys.executable, "-m", "mars.cli"]


def write_state(directory: Path, name: str, pid: int, api: str = "http://127.0.0.1:4999/") -> None:
    """A state file as samlocal/stack.py writes it for a running stack (this test process stands in)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps({
        "pid": pid, "stack": name, "template": str(ROOT / "template.yaml"), "endpoint": "http://127.0.0.1:1",
        "apis": {"abc123": api}, "outputs": {"ApiUrl": api, "MessagesTableName": f"{name}-MessagesTable"}}))


def mars(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MARS, *args], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user whose state location is empty: no MARS_STATE_DIR, XDG_STATE_HOME under a temporary folder."""
    monkeypatch.delenv("MARS_STATE_DIR", raising=False)
    return {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}


def test_outputs_from_any_folder(tmp_path: Path, home: dict[str, str]) -> None:
    write_state(Path(home["XDG_STATE_HOME"]) / "mars", "mars-local", os.getpid())
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    got = mars("outputs", cwd=elsewhere, env=home)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["MessagesTableName"] == "mars-local-MessagesTable"


def test_mars_state_dir_and_flag_override(tmp_path: Path, home: dict[str, str]) -> None:
    write_state(tmp_path / "mine", "mars-local", os.getpid())
    assert mars("outputs", cwd=tmp_path, env={**home, "MARS_STATE_DIR": str(tmp_path / "mine")}).returncode == 0
    assert mars("outputs", "--state-dir", str(tmp_path / "mine"), cwd=tmp_path, env=home).returncode == 0
    assert mars("outputs", cwd=tmp_path, env=home).returncode == 2  # not in the per-user location


def test_says_which_stacks_run(tmp_path: Path, home: dict[str, str]) -> None:
    states = Path(home["XDG_STATE_HOME"]) / "mars"
    write_state(states, "shop-stack", os.getpid(), "http://127.0.0.1:4100/")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_state(states, "gone-stack", int(dead.stdout), "http://127.0.0.1:4200/")  # its process has exited
    missing = mars("outputs", cwd=tmp_path, env=home)
    assert missing.returncode == 2
    assert "'mars-local' is running" in missing.stderr and "running: shop-stack" in missing.stderr
    assert "gone-stack" not in missing.stderr
    listed = mars("stacks", cwd=tmp_path, env=home)
    assert listed.returncode == 0 and "shop-stack" in listed.stdout and "http://127.0.0.1:4100/" in listed.stdout
    assert "gone-stack" not in listed.stdout
    as_json = json.loads(mars("stacks", "--json", cwd=tmp_path, env=home).stdout)
    assert [s["stack"] for s in as_json] == ["shop-stack"]
    none = mars("stacks", cwd=tmp_path, env={**home, "XDG_STATE_HOME": str(tmp_path / "empty")})
    assert none.returncode == 0 and "no local stack is running" in none.stderr
