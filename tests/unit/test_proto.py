"""The generated gRPC code is what `make proto` makes from event.proto (no drift)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    # As `make proto`: event.proto seen as grpc_shim/event.proto, so the generated code imports its
    # sibling as `from grpc_shim import event_pb2` (a package module, no sys.path edit).
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-Igrpc_shim={ROOT}", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", "grpc_shim/event.proto"],
                   check=True, cwd=ROOT)
    for name in ("event_pb2.py", "event_pb2_grpc.py", "event_pb2.pyi"):
        assert (tmp_path / "grpc_shim" / name).read_text() == (ROOT / "grpc_shim" / name).read_text(), f"run `make proto`: {name}"


def test_marss_original_contract_is_kept() -> None:
    text = (ROOT / "event.proto").read_text()
    for line in ("package MarsWeb.GrpcService;", "rpc collectEvent (EventRequest) returns (EventResponse);",
                 "string app_id = 1;", "string message_id = 2;", "string event = 3;", "string created_at = 4;",
                 "bool success = 1;"):
        assert line in text
