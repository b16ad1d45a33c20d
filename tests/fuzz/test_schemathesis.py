"""Schemathesis against docs/openapi.yaml and the running local API (the shared `mars` stack): every
operation, with generated valid and invalid input (examples, coverage and fuzzing phases; positive and
negative modes), a bounded number of examples per operation and a fixed seed.

Checks: no 5xx (`not_a_server_error`); the status code is one the document declares for the operation
(`status_code_conformance`); the Content-Type is one it declares for that status
(`content_type_conformance`); a JSON body matches the declared schema (`response_schema_conformance`).
The dashboard's operations answer HTML, JS and CSS: schemathesis checks their status and media type and
leaves the body alone (it validates JSON bodies only), so they stay in.

tests/integration/test_openapi_contract.py drives every declared answer by hand; this one looks for the
answers nobody thought of.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config._phases import DEFAULT_UNEXPECTED_METHODS
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import ROOT, RunningStack

DOC = ROOT / "docs" / "openapi.yaml"
SEED = 20261126
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
LOADTEST_MAX_COUNT = 20  # GET /api/create_event enqueues `count` events into the shared stack


# Loaded at collection (schemathesis's lazy `from_fixture` loader touches `Node._nodeid`, which
# pytest 9 no longer has); the base URL, known only once the stack runs, is given per call.
schema = schemathesis.openapi.from_path(DOC)
schema.config.seed = SEED
schema.config.update(request_timeout=30)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES,
                                deterministic=True, database="none")

# Methods schemathesis tries on every path besides the declared ones (the gateway's 403 for each).
UNEXPECTED_METHODS = set(DEFAULT_UNEXPECTED_METHODS)
schema.config.phases.coverage.unexpected_methods = UNEXPECTED_METHODS


@schemathesis.hook
def filter_query(ctx: schemathesis.HookContext, query: dict[str, Any] | None) -> bool:
    """Keeps the load-test route's valid counts small: the stack is shared with the other tests, and a
    count of 500 is no more interesting to the checks than 20 (invalid counts all go through)."""
    if ctx.operation is None or ctx.operation.path != "/api/create_event" or not isinstance(query, dict):
        return True
    count = query.get("count")
    return not (isinstance(count, int) and not isinstance(count, bool) and count > LOADTEST_MAX_COUNT)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(case: schemathesis.Case, mars: RunningStack) -> None:
    case.call_and_validate(base_url=mars.api.rstrip("/"), checks=CHECKS)


# Found by this suite (fixed): the local gateway answered http.server's `501 Unsupported method` HTML page to
# methods it had no handler for, instead of API Gateway's `403 {"message": "Missing Authentication Token"}`.
@pytest.mark.parametrize("method", ["TRACE", "QUERY", "CONNECT", "PROPFIND"])
def test_undeclared_methods_get_the_gateways_403(mars: RunningStack, method: str) -> None:
    for path in ("/api/event", "/api/q/stats", "/status", "/"):
        resp = requests.request(method, mars.url(path), timeout=10)
        assert resp.status_code == 403, (method, path, resp.status_code, resp.text[:80])
        assert resp.json() == {"message": "Missing Authentication Token"}
