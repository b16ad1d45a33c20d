"""The one Trigger shape: every trigger derives from it, and what they share is written once."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from samlocal.invoker import InvokeResult
from samlocal.triggers import base
from samlocal.triggers.dynamodb import StreamPoller, StreamSource, _Record, _ShardReader
from samlocal.triggers.schedule import Scheduler
from samlocal.triggers.sns import SnsPoller
from samlocal.triggers.sqs import SqsPoller, SqsSource

TRIGGERS = Path(__file__).resolve().parents[2] / "samlocal" / "triggers"


@pytest.mark.parametrize(("payload", "expected"), [
    (None, []),
    ({}, []),
    ({"batchItemFailures": None}, []),
    ({"batchItemFailures": []}, []),
    ({"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "b"}]}, ["a", "b"]),
    ("not an object", None),
    ({"batchItemFailures": {}}, None),  # not a list
    ({"batchItemFailures": [{"itemIdentifier": ""}]}, None),  # Lambda: an empty identifier fails the batch
    ({"batchItemFailures": [{"itemIdentifier": None}]}, None),
    ({"batchItemFailures": [{"itemId": "a"}]}, None),  # a bad key name
    ({"batchItemFailures": [{"itemIdentifier": 7}]}, None),
    ({"batchItemFailures": ["a"]}, None),
])
def test_one_batch_item_failures_parser_with_lambdas_edge_semantics(payload: Any, expected: list[str] | None) -> None:
    assert base.reported_failures(payload) == expected


def _sqs_outcome(payload: Any) -> list[str]:
    poller = SqsPoller(None, SimpleNamespace(spec=SimpleNamespace(name="f", arn="arn:f")),  # type: ignore[arg-type]
                       SqsSource("http://q/q", "arn:q", report_failures=True), "us-east-1")
    messages = [{"MessageId": "a"}, {"MessageId": "b"}]
    return [m["MessageId"] for m in poller._succeeded(messages, InvokeResult(True, payload=payload))]


def _stream_outcome(payload: Any) -> tuple[int, bool]:
    poller = StreamPoller(None, SimpleNamespace(spec=SimpleNamespace(name="f", arn="arn:f")),  # type: ignore[arg-type]
                          StreamSource("arn:aws:dynamodb:r:1:table/T/stream/L", report_failures=True), "us-east-1",
                          lambda service: None)
    reader = _ShardReader(poller, "shard-1", "LATEST")
    batch = [_Record("a", 0.0, {}, 1, True), _Record("b", 0.0, {}, 1, True)]
    return reader._outcome(batch, InvokeResult(True, payload=payload))


@pytest.mark.parametrize("payload", [{"batchItemFailures": [{"itemIdentifier": ""}]},
                                     {"batchItemFailures": {}}, {"batchItemFailures": [{"itemIdentifier": "zzz"}]}])
def test_sqs_and_stream_pollers_fail_the_whole_batch_on_the_same_unusable_reports(payload: Any) -> None:
    assert _sqs_outcome(payload) == []  # nothing deleted
    assert _stream_outcome(payload) == (0, True)


def test_sqs_and_stream_pollers_agree_on_success_and_partial_failure() -> None:
    assert _sqs_outcome(None) == ["a", "b"] and _stream_outcome(None) == (2, False)
    assert _sqs_outcome({"batchItemFailures": []}) == ["a", "b"] and _stream_outcome({"batchItemFailures": []}) == (2, False)
    partial = {"batchItemFailures": [{"itemIdentifier": "b"}]}
    assert _sqs_outcome(partial) == ["a"] and _stream_outcome(partial) == (1, False)


def test_every_trigger_has_the_one_shape() -> None:
    for kind in (SqsPoller, StreamPoller, SnsPoller, Scheduler):
        assert issubclass(kind, base.Trigger)
        assert kind.kind and kind.event_types and "source_from" in vars(kind) and "run" in vars(kind)
    assert issubclass(SqsPoller, base.EventSourceMapping) and issubclass(StreamPoller, base.EventSourceMapping)


def _definitions_and_strings(path: Path) -> tuple[set[str], list[str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    names |= {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    strings = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and id(node) not in docstrings]
    return names, strings


def test_no_trigger_code_is_written_twice() -> None:
    """What the triggers share lives in base.py only: reading sources from the template, the
    batch-failure parser, the payload limit, the async invocation, the supervised threads."""
    for path in sorted(TRIGGERS.glob("*.py")):
        if path.name in ("base.py", "async_invoke.py", "supervise.py", "filtering.py"):
            continue
        names, strings = _definitions_and_strings(path)
        assert not names & {"sources_for", "schedules_for", "reported_failures", "PAYLOAD_LIMIT_BYTES", "_flag", "flag",
                            "filter_view", "describe_mapping", "mapping_uuid", "invoke_async", "supervised"} - (
            {"filter_view"} if path.name == "sqs.py" else set()), path.name  # SQS's view of a record is its own
        assert "batchItemFailures" not in strings and "itemIdentifier" not in strings, path.name
        text = path.read_text()
        assert "async_invoke.invoke_async(" not in text and "supervised(" not in text and "json.dumps(record" not in text, path.name
