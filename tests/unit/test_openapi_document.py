"""docs/openapi.yaml is a valid OpenAPI 3.1 document that says what the code does: its operations are
template.yaml's Api events of ApiFunction and the Chalice routes, and its request schemas accept and refuse
what mars_common.events and the app accept and refuse.

The helpers here (the document, a validator that resolves its `$ref`s) are shared with
tests/integration/test_openapi_contract.py.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import ValidationError as SchemaValidationError
from jsonschema import validators
from mars_common import events as ev
from mars_common import otlp
from mars_common.auth import ANONYMOUS_ADMIN
from mars_common.timeline import STATUSES
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from samlocal.template import load
from tests.conftest import event_file, load_function

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "openapi.yaml"
DOC_URI = "urn:mars:openapi"
PAGE_TYPES = {"text/html", "text/javascript", "text/css"}  # what the dashboard's operations answer with
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    return yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))


def ecma_search(pattern: str, text: str) -> bool:
    """JSON Schema patterns are ECMA-262: an unescaped final `$` matches only at the very end of the text
    (Python's `$` also matches before a final newline, which would hide a trailing-newline bug)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.search(pattern, text) is not None


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[SchemaValidationError]:
    if validator.is_type(instance, "string") and not ecma_search(pattern, instance):
        yield SchemaValidationError(f"{instance!r} does not match {pattern!r}")


# OAS 3.1's dialect with ECMA-262 anchoring for `pattern`; pass as cls= to openapi_schema_validator.validate.
EcmaOAS31Validator = validators.extend(OAS31Validator, {"pattern": _ecma_pattern})


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The whole document as one resource, so `#/components/...` refs resolve from any schema in it."""
    return Registry().with_resource(DOC_URI, DRAFT202012.create_resource(document()))


def pointer(*parts: str) -> str:
    """A JSON pointer into the document (escapes `~` and `/` of path templates and media types)."""
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def ref(json_pointer: str) -> dict[str, str]:
    return {"$ref": f"{DOC_URI}#{json_pointer}"}


def resolve(node: Any) -> Any:
    """Follows a document-local `$ref` (responses, request bodies, examples, parameters)."""
    while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
        target: Any = document()
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def schema_errors(instance: Any, json_pointer: str) -> list[str]:
    """Every reason `instance` does not match the schema at `json_pointer` (empty: it matches)."""
    validator = EcmaOAS31Validator(ref(json_pointer), registry=registry())
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(instance))


def component(name: str) -> str:
    return pointer("components", "schemas", name)


@lru_cache(maxsize=1)
def api_module() -> Any:
    """functions/api/app.py, loaded once (importing it touches no AWS service)."""
    return load_function("api")


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document()["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method, path, item[method]


def template_api_routes(function: str = "ApiFunction") -> set[tuple[str, str]]:
    template = load(ROOT / "template.yaml")
    events = template["Resources"][function]["Properties"].get("Events", {})
    return {(str(e["Properties"]["Method"]).lower(), str(e["Properties"]["Path"]))
            for e in events.values() if e.get("Type") == "Api"}


def schemas() -> dict[str, Any]:
    return document()["components"]["schemas"]


# --- the document -------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_operations_are_the_api_events_of_api_function() -> None:
    documented = {(method, path) for method, path, _ in operations()}
    assert documented == template_api_routes() | template_api_routes("OtlpFunction")


def test_operations_are_the_chalice_routes() -> None:
    """Every operation but OtlpFunction's (a plain handler, OTLP/HTTP) is a route of the Chalice app."""
    app = api_module().app
    routes = {(method.lower(), path) for path, methods in app.routes.items() for method in methods}
    assert {(method, path) for method, path, _ in operations()} - template_api_routes("OtlpFunction") == routes


def test_servers_are_the_local_stack_and_the_deployed_stage() -> None:
    servers = {s["url"]: s for s in document()["servers"]}
    assert "http://127.0.0.1:4000" in servers
    deployed = servers["https://{apiId}.execute-api.{region}.amazonaws.com/{stage}"]
    stages = load(ROOT / "template.yaml")["Parameters"]["Stage"]
    assert deployed["variables"]["stage"]["enum"] == stages["AllowedValues"]
    assert deployed["variables"]["stage"]["default"] == stages["Default"]


def test_every_operation_is_documented_with_json_responses_and_examples() -> None:
    ids = []
    for method, path, op in operations():
        ids.append(op["operationId"])
        assert op.get("summary"), (method, path)
        statuses = set(op["responses"])
        assert any(s.startswith("2") for s in statuses), (method, path)
        required = {"415", "500"} if "requestBody" in op else {"500"}  # a body content-type check; the catch-all
        assert required <= statuses, (method, path)
        examples = 0
        for status, response in op["responses"].items():
            content = resolve(response)["content"]
            if "dashboard" in op.get("tags", []) and status.startswith("2"):  # the page and its files
                assert set(content) <= PAGE_TYPES, (method, path, status)
                examples += sum(1 for media in content.values() if "example" in media)
                continue
            if "export" in op.get("tags", []) and status.startswith("2"):  # NDJSON or CSV pages
                assert set(content) == {"application/x-ndjson", "text/csv"}, (method, path, status)
                examples += sum(1 for media in content.values() if "example" in media)
                continue
            if "otlp" in op.get("tags", []) and path == "/v1/traces":  # OTLP answers in the request's encoding
                assert set(content) <= {"application/json", "application/x-protobuf"}, (method, path, status)
            else:
                assert set(content) == {"application/json"}, (method, path, status)
            examples += len(content["application/json"].get("examples", {}))
        assert examples >= 2, f"{method} {path} has too few examples"
        for param in op.get("parameters", []) + document()["paths"][path].get("parameters", []):
            if param["in"] == "path":
                assert param["required"] is True and "{" + param["name"] + "}" in path
    assert len(ids) == len(set(ids))


def test_unknown_routes_and_gateway_errors_are_described() -> None:
    text = document()["info"]["description"]
    assert '403 {"message": "Missing Authentication Token"}' in text
    assert schema_errors({"message": "Missing Authentication Token"}, component("GatewayError")) == []


def _examples(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, example in (node.get("examples") or {}).items():
        yield name, resolve(example)["value"]
    if "example" in node:
        yield "example", node["example"]


def test_every_example_matches_its_schema() -> None:
    checked = 0
    for method, path, op in operations():
        for status, response in op["responses"].items():
            base = pointer("paths", path, method, "responses", status)
            if "$ref" in response:
                base = response["$ref"][1:]
            for media_type, media in resolve(response)["content"].items():
                for name, value in _examples(media):
                    assert schema_errors(value, base + pointer("content", media_type, "schema")) == [], \
                        (method, path, status, name)
                    checked += 1
        located = [(pointer("paths", path, method, "parameters", str(i)), p)
                   for i, p in enumerate(op.get("parameters", []))]
        located += [(pointer("paths", path, "parameters", str(i)), p)
                    for i, p in enumerate(document()["paths"][path].get("parameters", []))]
        for base, param in located:
            for name, value in _examples(param):
                assert schema_errors(value, base + "/schema") == [], (method, path, param["name"], name)
                checked += 1
    assert checked >= 25


def _request_examples() -> Iterator[tuple[str, str, str, str, Any]]:
    for method, path, op in operations():
        body = resolve(op.get("requestBody", {}))
        for media, spec in body.get("content", {}).items():
            for name, value in _examples(spec):
                yield method, path, media, name, value


@pytest.mark.parametrize("method,path,media,name,value",
                         [pytest.param(*case, id=f"{case[0]} {case[1]} {case[3]}") for case in _request_examples()])
def test_request_examples_match_the_schema_and_the_code_accepts_them(method: str, path: str, media: str, name: str,
                                                                      value: Any) -> None:
    body = document()["paths"][path][method]["requestBody"]
    base = body["$ref"][1:] if "$ref" in body else pointer("paths", path, method, "requestBody")
    assert schema_errors(value, base + pointer("content", media, "schema")) == []
    if path == "/api/event":
        ev.parse_event(value)
    elif path.endswith("/destinations"):
        from mars_common.destinations import parse

        parse(value, allow_loopback=False, resolver=lambda host, port: ["93.184.216.34"])  # no DNS in a unit test
    elif path == "/api/event/bulk":
        ev.parse_events(value)
    elif path == "/v1/traces":
        request = otlp.decode_request(json.dumps(value).encode(), otlp.JSON)
        result = otlp.to_events(request, ANONYMOUS_ADMIN, lambda app: otlp.DEFAULT_MAPPING, ev.utc_now())
        assert result.events and not result.rejected_spans
    elif path == "/api/apps/{app_id}/otlp":
        otlp.parse_mapping(value)
    else:
        api_module()._parse_lifecycle(value)


@pytest.mark.parametrize("name,method,schema", [("api_post_event.json", "post", "Event"),
                                                 ("api_post_bulk.json", "post", "BulkRequest"),
                                                 ("api_put_lifecycle.json", "put", "LifecycleRequest")])
def test_the_sample_api_events_have_bodies_the_document_accepts(name: str, method: str, schema: str) -> None:
    event = event_file(name)
    assert event["httpMethod"].lower() == method and event["resource"] in document()["paths"]
    assert schema_errors(json.loads(event["body"]), component(schema)) == []


# --- the Event schema is mars_common.events ------------------------------------------------------

def test_event_schema_constraints_are_the_events_module_constants() -> None:
    s = schemas()
    event = s["Event"]
    assert event["additionalProperties"] is False
    assert set(event["properties"]) == ev.ALLOWED_FIELDS
    required = {e.field for e in _errors(ev.parse_event, {}) if e.message == "is required"}
    assert set(event["required"]) == required == {"app_id", "message_id", "event"}
    app_id = s["AppId"]
    assert app_id["pattern"] == ev.APP_ID_RE.pattern
    assert app_id["maxLength"] == int(re.search(r"\{1,(\d+)\}", ev.APP_ID_RE.pattern).group(1)) == 128
    assert s["EventId"]["pattern"] == ev.EVENT_ID_RE.pattern
    assert event["properties"]["message_id"]["maxLength"] == ev.MAX_MESSAGE_ID
    assert event["properties"]["event"]["maxLength"] == ev.MAX_EVENT
    assert event["properties"]["meta"]["x-max-json-bytes"] == ev.MAX_META_BYTES
    bulk = s["BulkRequest"]["properties"]["events"]
    assert (bulk["minItems"], bulk["maxItems"]) == (1, ev.MAX_BULK)
    assert s["Status"]["enum"] == list(STATUSES)


def test_api_constants_are_in_the_document() -> None:
    api = api_module()
    count = next(p for p in document()["paths"]["/api/create_event"]["get"]["parameters"] if p["name"] == "count")
    assert count["schema"]["maximum"] == api.MAX_CREATE_COUNT
    assert f"{api.MAX_BODY_BYTES:,} bytes" in document()["info"]["description"]
    assert str(api.MAX_BODY_BYTES) in str(resolve({"$ref": "#/components/responses/PayloadTooLarge"}))
    lifecycle = schemas()["LifecycleRequest"]["properties"]
    assert lifecycle["events"]["items"]["maxLength"] == ev.MAX_EVENT
    assert resolve(document()["components"]["headers"]["Retry-After"])["schema"]["type"] == "string"


def _errors(parse: Any, value: Any) -> list[ev.FieldError]:
    try:
        parse(value)
    except ev.ValidationError as exc:
        return exc.errors
    return []


def _accepted(parse: Any, value: Any) -> bool:
    return not _errors(parse, value)


def test_printable_text_pattern_is_str_isprintable() -> None:
    """Exact for every assigned BMP character; an unassigned one the pattern lets through, the code refuses."""
    pattern = schemas()["PrintableText"]["pattern"]
    mismatched = []
    for code in range(0x10000):
        char = chr(code)
        doc_ok = ecma_search(pattern, f"a{char}b")
        if unicodedata.category(char) == "Cn":
            if not doc_ok:
                mismatched.append(code)  # the document must never refuse what the code accepts
        elif doc_ok != f"a{char}b".isprintable():
            mismatched.append(code)
    assert not mismatched, [f"U+{c:04X}" for c in mismatched[:20]]


BASE = {"app_id": "checkout", "message_id": "order-1", "event": "MESSAGE_CREATED"}
EVENT_CASES: list[Any] = [
    pytest.param(BASE, id="minimal"),
    pytest.param(BASE | {"created_at": "2024-05-01T10:00:00Z", "event_id": "k:1", "meta": {"a": "b"}}, id="full"),
    pytest.param(BASE | {"created_at": None, "event_id": None, "meta": None}, id="nulls"),
    pytest.param(BASE | {"created_at": "", "event_id": ""}, id="empty-optional"),
    pytest.param(BASE | {"meta": {}}, id="empty-meta"),
    pytest.param(BASE | {"app_id": "a" * 128, "message_id": "m" * ev.MAX_MESSAGE_ID, "event": "e" * ev.MAX_EVENT},
                 id="max-lengths"),
    pytest.param(BASE | {"app_id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "message_id": "ünï cödé / ✓"},
                 id="uuid-app-unicode-message"),
    pytest.param(BASE | {"app_id": "a" * 129}, id="app-id-too-long"),
    pytest.param(BASE | {"message_id": "m" * (ev.MAX_MESSAGE_ID + 1)}, id="message-id-too-long"),
    pytest.param(BASE | {"event": "e" * (ev.MAX_EVENT + 1)}, id="event-too-long"),
    pytest.param(BASE | {"app_id": ""}, id="empty-app-id"),
    pytest.param(BASE | {"event": ""}, id="empty-event"),
    pytest.param(BASE | {"app_id": "a b"}, id="app-id-space"),
    pytest.param(BASE | {"app_id": "a/b"}, id="app-id-slash"),
    pytest.param(BASE | {"app_id": "ab\n"}, id="app-id-trailing-newline"),
    pytest.param(BASE | {"message_id": "m\u0007"}, id="message-id-control"),
    pytest.param(BASE | {"message_id": "m\u2028"}, id="message-id-line-separator"),
    pytest.param(BASE | {"message_id": "m\n"}, id="message-id-trailing-newline"),
    pytest.param(BASE | {"event": "E\t1"}, id="event-tab"),
    pytest.param(BASE | {"message_id": 12}, id="message-id-number"),
    pytest.param(BASE | {"app_id": None}, id="app-id-null"),
    pytest.param({k: v for k, v in BASE.items() if k != "event"}, id="event-missing"),
    pytest.param(BASE | {"colour": "red"}, id="unknown-field"),
    pytest.param(BASE | {"created_at": 1714557600}, id="created-at-number"),
    pytest.param(BASE | {"event_id": "has space"}, id="event-id-space"),
    pytest.param(BASE | {"event_id": "k" * 129}, id="event-id-too-long"),
    pytest.param(BASE | {"event_id": 7}, id="event-id-number"),
    pytest.param(BASE | {"event_id": "k\n"}, id="event-id-trailing-newline"),
    pytest.param(BASE | {"meta": {"a": 1}}, id="meta-number-value"),
    pytest.param(BASE | {"meta": {"a": {"b": "c"}}}, id="meta-nested"),
    pytest.param(BASE | {"meta": ["a"]}, id="meta-list"),
    pytest.param(BASE | {"meta": "a=b"}, id="meta-string"),
    pytest.param([BASE], id="array"),
    pytest.param("event", id="string"),
]


@pytest.mark.parametrize("body", EVENT_CASES)
def test_event_schema_and_parse_event_agree(body: Any) -> None:
    doc_errors = schema_errors(body, component("Event"))
    assert (doc_errors == []) == _accepted(ev.parse_event, body), doc_errors or _errors(ev.parse_event, body)


def test_meta_size_limit_is_json_bytes() -> None:
    limit = schemas()["Event"]["properties"]["meta"]["x-max-json-bytes"]
    overhead = len(json.dumps({"k": ""}).encode())
    fits = {"k": "é" * ((limit - overhead) // 2)}  # two bytes each in UTF-8
    assert len(json.dumps(fits, ensure_ascii=False).encode()) <= limit
    over = {"k": "x" * (limit - overhead + 1)}
    assert schema_errors(fits, component("Event") + "/properties/meta") == []
    assert _accepted(ev.parse_event, BASE | {"meta": fits})
    assert not _accepted(ev.parse_event, BASE | {"meta": over})


def test_created_at_the_code_accepts_is_a_string_the_document_accepts() -> None:
    for value in ["2024-05-01T10:00:00Z", "2024-05-01t10:00:00z", "2024-05-01 10:00:00", "2024-05-01",
                  "2024-05-01T12:00:00.250+02:00"]:
        assert _accepted(ev.parse_event, BASE | {"created_at": value}), value
        assert schema_errors(BASE | {"created_at": value}, component("Event")) == [], value
    assert not _accepted(ev.parse_event, BASE | {"created_at": "yesterday"})


BULK_CASES: list[Any] = [
    pytest.param({"events": [BASE]}, id="one"),
    pytest.param({"events": [BASE] * ev.MAX_BULK}, id="max"),
    pytest.param({"events": [BASE] * (ev.MAX_BULK + 1)}, id="too-many"),
    pytest.param({"events": []}, id="empty"),
    pytest.param({"events": BASE}, id="not-a-list"),
    pytest.param({"events": [BASE], "app_id": "a"}, id="extra-key"),
    pytest.param({"events": [BASE, BASE | {"event": ""}]}, id="invalid-item"),
    pytest.param({"events": [BASE, "x"]}, id="non-object-item"),
]


@pytest.mark.parametrize("body", BULK_CASES)
def test_bulk_schema_and_parse_events_agree(body: Any) -> None:
    doc_errors = schema_errors(body, component("BulkRequest"))
    assert (doc_errors == []) == _accepted(ev.parse_events, body), doc_errors or _errors(ev.parse_events, body)


LIFECYCLE_CASES: list[Any] = [
    pytest.param({"events": ["A"]}, id="minimal"),
    pytest.param({"events": ["A", "B"], "sla_seconds": 0}, id="sla-zero"),
    pytest.param({"events": [f"E{i}" for i in range(50)], "sla_seconds": 2592000}, id="max"),
    pytest.param({"events": [f"E{i}" for i in range(51)]}, id="too-many-events"),
    pytest.param({"events": []}, id="no-events"),
    pytest.param({"sla_seconds": 5}, id="events-missing"),
    pytest.param({"events": ["A", "A"]}, id="duplicates"),
    pytest.param({"events": ["e" * ev.MAX_EVENT]}, id="longest-name"),
    pytest.param({"events": ["e" * (ev.MAX_EVENT + 1)]}, id="name-too-long"),
    pytest.param({"events": [""]}, id="empty-name"),
    pytest.param({"events": ["A\u0000"]}, id="control-name"),
    pytest.param({"events": [1]}, id="number-name"),
    pytest.param({"events": ["A"], "sla_seconds": 2592001}, id="sla-too-big"),
    pytest.param({"events": ["A"], "sla_seconds": -1}, id="sla-negative"),
    pytest.param({"events": ["A"], "sla_seconds": True}, id="sla-bool"),
    pytest.param({"events": ["A"], "sla_seconds": "60"}, id="sla-string"),
    pytest.param({"events": ["A"], "sla_seconds": None}, id="sla-null"),
    pytest.param({"events": ["A"], "colour": "red"}, id="unknown-field"),
    pytest.param({"events": ["A"], "retention_days": 7}, id="retention"),
    pytest.param({"events": ["A"], "retention_days": 7.0}, id="retention-float-integer"),
    pytest.param({"events": ["A"], "retention_days": 3650}, id="retention-max"),
    pytest.param({"events": ["A"], "retention_days": 0}, id="retention-zero"),
    pytest.param({"events": ["A"], "retention_days": 3651}, id="retention-too-big"),
    pytest.param({"events": ["A"], "retention_days": True}, id="retention-bool"),
    pytest.param({"events": ["A"], "retention_days": "7"}, id="retention-string"),
    pytest.param({"events": ["A"], "retention_days": None}, id="retention-null"),
    pytest.param(["A"], id="array"),
]


@pytest.mark.parametrize("body", LIFECYCLE_CASES)
def test_lifecycle_schema_and_the_app_agree(body: Any) -> None:
    parse = api_module()._parse_lifecycle
    doc_errors = schema_errors(body, component("LifecycleRequest"))
    assert (doc_errors == []) == _accepted(parse, body), doc_errors or _errors(parse, body)
