"""Where running local stacks record themselves, and how every `mars` command finds one (or reads a
deployed stack's Outputs from a file: `read_outputs_file`).

A stack writes `<state dir>/<stack name>.json` while it runs (samlocal/stack.py). The state dir is per
user, not per folder, so `mars stats` finds the stack `make up` started from any folder:
`--state-dir`, else `$MARS_STATE_DIR`, else `$XDG_STATE_HOME/mars`, else `~/.local/state/mars`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

DEFAULT_STACK = "mars-local"


class UsageError(Exception):
    """No stack to talk to, or unusable arguments: exit code 2."""


def read_outputs_file(path: Path) -> dict[str, Any]:
    """`mars outputs` JSON, `aws cloudformation describe-stacks` JSON, or its `Stacks[0].Outputs` list."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read --stack-outputs {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"--stack-outputs {path} is not JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("Stacks"), list):
        if len(data["Stacks"]) != 1:
            raise UsageError(f"--stack-outputs {path} describes {len(data['Stacks'])} stacks: pass one (--stack-name)")
        data = data["Stacks"][0].get("Outputs", [])
    if isinstance(data, list):
        try:
            return {str(o["OutputKey"]): o["OutputValue"] for o in data}
        except (KeyError, TypeError) as exc:
            raise UsageError(f"--stack-outputs {path}: a list of outputs needs OutputKey and OutputValue") from exc
    if isinstance(data, dict):
        return data
    raise UsageError(f"--stack-outputs {path}: expected a JSON object of outputs")


def default_state_dir() -> Path:
    if os.environ.get("MARS_STATE_DIR"):
        return Path(os.environ["MARS_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mars"


def stack_args(p: argparse.ArgumentParser) -> None:
    """--stack-name and --state-dir, the same on every command that talks to a local stack."""
    p.add_argument("--stack-name", default=DEFAULT_STACK, help="local stack name (default %(default)s)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where running stacks record their outputs (default: $MARS_STATE_DIR, else "
                        f"$XDG_STATE_HOME/mars, else ~/.local/state/mars; now {default_state_dir()})")


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()


def read_state(directory: Path, stack_name: str) -> dict[str, Any] | None:
    """The running stack's state, or None if no stack of that name is running (its process is gone)."""
    path = directory / f"{stack_name}.json"
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(state)


def running(directory: Path) -> list[dict[str, Any]]:
    """Every stack running with its state in `directory`, by name."""
    if not directory.is_dir():
        return []
    found = (read_state(directory, path.stem) for path in sorted(directory.glob("*.json")))
    return [state for state in found if state is not None]


def find(args: argparse.Namespace, instead: str = "", err: TextIO = sys.stderr,
         start: str = "make up") -> dict[str, Any] | None:
    """The state of the stack `args` names; None after telling the user which stacks do run."""
    directory = state_dir(args)
    state = read_state(directory, args.stack_name)
    if state is not None:
        return state
    others = [s.get("stack", "?") for s in running(directory)]
    hint = (f"running: {', '.join(others)} (pass --stack-name)" if others
            else f"start one with `{start}`")
    print(f"mars: no local stack {args.stack_name!r} is running (state in {directory}); {hint}"
          f"{f', or pass {instead}' if instead else ''}", file=err)
    return None


def outputs(args: argparse.Namespace, instead: str = "") -> dict[str, Any] | None:
    state = find(args, instead)
    return None if state is None else dict(state["outputs"])


def output(args: argparse.Namespace, name: str, instead: str) -> str | None:
    """One Output of the running local stack; None (after saying what to do) if there is none."""
    values = outputs(args, instead)
    if values is None:
        return None
    if name not in values:
        print(f"mars: the local stack {args.stack_name!r} has no {name} output; pass {instead}", file=sys.stderr)
        return None
    return str(values[name])


def endpoint(state: dict[str, Any], service: str) -> str:
    """Where the running stack's `service` (a boto3 service name) answers: its own endpoint when the
    stack split it off (`--embedded`, the second DynamoDB emulator), else the stack's endpoint. Never
    derived from a queue URL: an endpoint's URLs need not name it (LocalStack's name other hosts)."""
    return str((state.get("service_endpoints") or {}).get(service) or state["endpoint"])


def aws_client(state: dict[str, Any], service: str) -> Any:
    """A boto3 client of the running stack's `service`, in its region, with the local dummy credentials."""
    import boto3

    return boto3.client(service, endpoint_url=endpoint(state, service),  # type: ignore[call-overload]  # any service, by name
                        region_name=state.get("region") or "us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
