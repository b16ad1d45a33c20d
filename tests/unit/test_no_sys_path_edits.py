"""No module outside tests edits sys.path: the layer (mars_common) and the generated gRPC code are
packages (pyproject.toml), imported as such. The one exception is the runtime's execution
environment, which puts the function's code and layers on its path as Lambda does."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("mars", "samlocal", "grpc_shim", "functions", "layers", "bench", "tools")
# samlocal/worker.py: the Lambda sandbox (a worker process) imports the function's handler from its
# code directory and layers, which Lambda mounts on the path; that is what it emulates.
SANDBOX = {"samlocal/worker.py"}


def sys_path_edits(path: Path) -> list[int]:
    """Lines that call a method of `sys.path` or assign to it."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if isinstance(t, ast.Attribute)), None)
        if (isinstance(target, ast.Attribute) and target.attr == "path" and isinstance(target.value, ast.Name)
                and target.value.id == "sys"):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_sys_path_edit_outside_tests() -> None:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in SANDBOX or "/.aws-sam/" in relative:
                continue
            if lines := sys_path_edits(path):
                found[relative] = lines
    assert found == {}


def test_the_check_finds_an_edit(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import sys\nsys.path.insert(0, 'x')\nsys.path = []\nsys.path += ['y']\nprint(sys.path)\n")
    assert sys_path_edits(sample) == [2, 3, 4]
