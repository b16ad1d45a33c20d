"""The event contract (DESIGN §2 "Event"): one test per rule, through mars_common.events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mars_common.events import (
    MAX_BULK,
    Event,
    ValidationError,
    derive_event_id,
    parse_event,
    parse_events,
    parse_timestamp,
)

RECEIVED = "2024-05-01T12:00:00.000000Z"


def valid(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"app_id": "checkout", "message_id": "order-1", "event": "MESSAGE_CREATED",
                            "created_at": "2024-05-01T11:59:58.250Z"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not _DROP}


_DROP = object()


def errors_of(data: Any, **kwargs: Any) -> dict[str, str]:
    """field → message of every error parse_event reports."""
    with pytest.raises(ValidationError) as info:
        parse_event(data, **kwargs)
    return {e.field: e.message for e in info.value.errors}


# --- required fields and types ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["app_id", "message_id", "event"])
def test_each_required_field_is_required(name: str) -> None:
    assert errors_of(valid(**{name: _DROP})) == {name: "is required"}
    assert errors_of(valid(**{name: None})) == {name: "is required"}


@pytest.mark.parametrize("name", ["app_id", "message_id", "event"])
@pytest.mark.parametrize("value", [42, 1.5, True, ["x"], {"x": "y"}])
def test_required_fields_must_be_strings(name: str, value: Any) -> None:
    errs = errors_of(valid(**{name: value}))
    assert list(errs) == [name]
    assert "must be a string" in errs[name]


@pytest.mark.parametrize("name", ["app_id", "message_id", "event"])
def test_required_fields_must_not_be_empty(name: str) -> None:
    assert list(errors_of(valid(**{name: ""}))) == [name]


def test_non_object_event_is_rejected() -> None:
    for data in ([], "x", 3, None):
        assert "event" in errors_of(data)


# --- app_id -------------------------------------------------------------------------------------

@pytest.mark.parametrize("app_id", [
    "a", "checkout", "Checkout_v2", "team.payments:eu-west-1", "A-B_C.D:E",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
    "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301", "x" * 128,
])
def test_app_id_accepts_its_charset_and_uuids(app_id: str) -> None:
    assert parse_event(valid(app_id=app_id), received_at=RECEIVED).app_id == app_id


@pytest.mark.parametrize("app_id", ["has space", "slash/app", "ümlaut", "a+b", "a@b", "a\tb", "{uuid}", "x" * 129])
def test_app_id_rejects_other_characters_and_length(app_id: str) -> None:
    assert list(errors_of(valid(app_id=app_id))) == ["app_id"]


# --- message_id ---------------------------------------------------------------------------------

@pytest.mark.parametrize("message_id", [
    "m", "order 42 with spaces", "ünïcödé-日本語-🚀", "a/b?c=d&e#f", "<xml attr='1'/>", "x" * 256, "é" * 256,
])
def test_message_id_accepts_printable_text_up_to_256(message_id: str) -> None:
    assert parse_event(valid(message_id=message_id), received_at=RECEIVED).message_id == message_id


@pytest.mark.parametrize("message_id", ["x" * 257, "line\nbreak", "nul\x00", "tab\there", "del\x7f", "esc\x1b[0m",
                                        "unit\x1fsep"])
def test_message_id_rejects_control_characters_and_length(message_id: str) -> None:
    assert list(errors_of(valid(message_id=message_id))) == ["message_id"]


# --- event --------------------------------------------------------------------------------------

def test_event_length_limit_is_128() -> None:
    assert parse_event(valid(event="E" * 128), received_at=RECEIVED).event == "E" * 128
    errs = errors_of(valid(event="E" * 129))
    assert list(errs) == ["event"] and "128" in errs["event"]


def test_event_rejects_control_characters() -> None:
    assert list(errors_of(valid(event="SENT\n"))) == ["event"]


# --- created_at ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "stored"), [
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.000000Z"),
    ("2024-05-01T10:00:00.123Z", "2024-05-01T10:00:00.123000Z"),
    ("2024-05-01T10:00:00.123456z", "2024-05-01T10:00:00.123456Z"),
    ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00.000000Z"),
    ("2024-05-01T12:30:00.5+02:30", "2024-05-01T10:00:00.500000Z"),
    ("2024-05-01T05:00:00-05:00", "2024-05-01T10:00:00.000000Z"),
    ("2024-05-01T01:00:00+02:00", "2024-04-30T23:00:00.000000Z"),
    ("2024-05-01T10:00:00", "2024-05-01T10:00:00.000000Z"),
    ("2024-05-01 10:00:00", "2024-05-01T10:00:00.000000Z"),
    ("2024-05-01t10:00:00z", "2024-05-01T10:00:00.000000Z"),
    ("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:00.000000Z"),
])
def test_created_at_is_normalised_to_utc(given: str, stored: str) -> None:
    assert parse_event(valid(created_at=given), received_at=RECEIVED).created_at == stored


def test_normalised_timestamps_sort_lexically_in_time_order() -> None:
    given = ["2024-05-01T12:00:00+02:00", "2024-05-01T09:59:59.999999Z", "2024-05-01T10:00:00.000001",
             "2024-05-01T05:00:00.5-05:00"]
    stored = [parse_timestamp(g) for g in given]
    moments = [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in stored]
    assert sorted(stored) == [s for _, s in sorted(zip(moments, stored, strict=True))]


@pytest.mark.parametrize("created_at", [_DROP, None, ""])
def test_missing_created_at_is_the_time_received(created_at: Any) -> None:
    assert parse_event(valid(created_at=created_at), received_at=RECEIVED).created_at == RECEIVED


def test_missing_created_at_without_received_at_is_now() -> None:
    before = datetime.now(UTC)
    ev = parse_event(valid(created_at=_DROP))
    after = datetime.now(UTC)
    moment = datetime.fromisoformat(ev.created_at.replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= moment <= after + timedelta(seconds=1)
    assert ev.created_at == ev.received_at


@pytest.mark.parametrize("created_at", ["yesterday", "2024-13-01T00:00:00Z", "2024-05-01T25:00:00Z",
                                        "1714557600", "2024-05-01T10:00:00+25:00", "   ", "2024/05/01 10:00"])
def test_unparseable_created_at_is_rejected_naming_the_field(created_at: str) -> None:
    errs = errors_of(valid(created_at=created_at))
    assert list(errs) == ["created_at"]
    assert "ISO-8601" in errs["created_at"] or "timestamp" in errs["created_at"]


@pytest.mark.parametrize("created_at", [1714557600, 1714557600.5, True, ["2024-05-01"], {"t": 1}])
def test_non_string_created_at_is_rejected(created_at: Any) -> None:
    assert list(errors_of(valid(created_at=created_at))) == ["created_at"]


@pytest.mark.parametrize("created_at", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_out_of_range_created_at_is_a_validation_error(created_at: str) -> None:
    assert list(errors_of(valid(created_at=created_at))) == ["created_at"]


def test_early_years_are_stored_fixed_width() -> None:
    assert parse_timestamp("0999-01-01T00:00:00Z") == "0999-01-01T00:00:00.000000Z"


# --- event_id -----------------------------------------------------------------------------------

def test_event_id_is_derived_deterministically() -> None:
    first = parse_event(valid(), received_at=RECEIVED)
    again = parse_event(valid(), received_at="2030-01-01T00:00:00.000000Z")  # received time is not an input
    assert first.event_id == again.event_id
    assert len(first.event_id) == 32 and all(c in "0123456789abcdef" for c in first.event_id)
    # the same instant written another way is the same event
    same_instant = parse_event(valid(created_at="2024-05-01T13:59:58.25+02:00"), received_at=RECEIVED)
    assert same_instant.event_id == first.event_id


@pytest.mark.parametrize("change", [
    {"app_id": "other"}, {"message_id": "order-2"}, {"event": "MESSAGE_SENT"},
    {"created_at": "2024-05-01T11:59:58.251Z"}, {"meta": {"k": "v"}},
])
def test_derived_event_id_changes_with_any_input(change: dict[str, Any]) -> None:
    base = parse_event(valid(), received_at=RECEIVED).event_id
    assert parse_event(valid(**change), received_at=RECEIVED).event_id != base


def test_derived_event_id_ignores_meta_key_order() -> None:
    a = parse_event(valid(meta={"a": "1", "b": "2"}), received_at=RECEIVED)
    b = parse_event(valid(meta={"b": "2", "a": "1"}), received_at=RECEIVED)
    assert a.event_id == b.event_id
    assert parse_event(valid(meta={"a": "2", "b": "1"}), received_at=RECEIVED).event_id != a.event_id


def test_derive_event_id_function_is_stable() -> None:
    # pinned: a change of the derivation would re-id (and so duplicate) every event retried across a deploy
    assert derive_event_id("app", "msg", "E", "2024-05-01T10:00:00.000000Z", {}) == "1e54d77f51bb804235c5539b93ac0326"
    assert derive_event_id("app", "msg", "E", "2024-05-01T10:00:00.000000Z", {"k": "v"}) == \
        "2279f98cda6bb0d71da19728b74e9772"
    assert derive_event_id("ab", "c", "E", "t", {}) != derive_event_id("a", "bc", "E", "t", {})


@pytest.mark.parametrize("event_id", ["k1", "evt:2024-05-01.001", "a.b-c_d:e", "x" * 128,
                                      "3f2504e0-4f89-11d3-9a0c-0305e82c3301"])
def test_client_event_id_is_kept(event_id: str) -> None:
    assert parse_event(valid(event_id=event_id), received_at=RECEIVED).event_id == event_id


@pytest.mark.parametrize("event_id", ["has space", "x" * 129, 12, ["a"], "slash/id", "new\nline"])
def test_invalid_client_event_id_is_rejected(event_id: Any) -> None:
    assert list(errors_of(valid(event_id=event_id))) == ["event_id"]


@pytest.mark.parametrize("event_id", [None, ""])
def test_empty_event_id_means_derive_one(event_id: Any) -> None:
    assert parse_event(valid(event_id=event_id), received_at=RECEIVED).event_id == \
        parse_event(valid(), received_at=RECEIVED).event_id


# --- meta ---------------------------------------------------------------------------------------

def test_meta_of_strings_is_kept() -> None:
    ev = parse_event(valid(meta={"region": "eu-west-1", "attempt": "2", "note": "ü 日本"}), received_at=RECEIVED)
    assert ev.meta == {"region": "eu-west-1", "attempt": "2", "note": "ü 日本"}
    assert ev.as_dict()["meta"] == ev.meta


def test_empty_or_absent_meta_is_omitted() -> None:
    assert "meta" not in parse_event(valid(), received_at=RECEIVED).as_dict()
    assert "meta" not in parse_event(valid(meta={}), received_at=RECEIVED).as_dict()


@pytest.mark.parametrize("meta", [{"n": 1}, {"nested": {"a": "b"}}, {"l": ["a"]}, {"b": True}, {"x": None},
                                  ["a", "b"], "k=v", 3])
def test_meta_must_be_a_flat_object_of_strings(meta: Any) -> None:
    assert list(errors_of(valid(meta=meta))) == ["meta"]


def test_meta_size_limit_is_2kb_in_bytes() -> None:
    assert parse_event(valid(meta={"k": "v" * 1900}), received_at=RECEIVED).meta["k"] == "v" * 1900
    assert list(errors_of(valid(meta={"k": "v" * 3000}))) == ["meta"]
    many = {f"k{i}": "v" * 40 for i in range(60)}  # many small values add up
    assert list(errors_of(valid(meta=many))) == ["meta"]
    # 1100 characters but 2200 bytes in UTF-8: the limit is bytes
    assert list(errors_of(valid(meta={"k": "é" * 1100}))) == ["meta"]


# --- unknown fields and error reporting ---------------------------------------------------------

@pytest.mark.parametrize("field", ["app", "messageId", "created", "received_at", "timestamp", "metadata"])
def test_unknown_fields_are_rejected(field: str) -> None:
    errs = errors_of(valid(**{field: "x"}))
    assert list(errs) == [field]
    assert "not a known field" in errs[field]


def test_every_error_is_reported_at_once() -> None:
    data = {"app_id": "bad app", "message_id": "", "event": 7, "created_at": "never",
            "event_id": "bad id", "meta": {"n": 1}, "typo": "x"}
    assert set(errors_of(data)) == {"app_id", "message_id", "event", "created_at", "event_id", "meta", "typo"}
    with pytest.raises(ValidationError) as info:
        parse_event(data)
    text = str(info.value)
    for name in ("app_id", "message_id", "event", "created_at", "typo"):
        assert name in text


def test_errors_of_an_empty_object_name_every_required_field() -> None:
    assert set(errors_of({})) == {"app_id", "message_id", "event"}


# --- bulk ---------------------------------------------------------------------------------------

def test_bulk_returns_every_event_in_order_with_one_received_time() -> None:
    items = [valid(message_id=f"m{i}") for i in range(5)]
    events = parse_events({"events": items})
    assert [e.message_id for e in events] == [f"m{i}" for i in range(5)]
    assert len({e.received_at for e in events}) == 1


def test_single_event_payload_is_a_list_of_one() -> None:
    events = parse_events(valid(), received_at=RECEIVED)
    assert len(events) == 1 and events[0].message_id == "order-1"


def test_bulk_accepts_exactly_the_maximum() -> None:
    assert MAX_BULK == 500
    assert len(parse_events({"events": [valid(message_id=f"m{i}") for i in range(500)]})) == 500


def bulk_errors(payload: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        parse_events(payload)
    return [e.as_dict() for e in info.value.errors]


def test_bulk_rejects_more_than_500() -> None:
    errs = bulk_errors({"events": [valid(message_id=f"m{i}") for i in range(501)]})
    assert [e["field"] for e in errs] == ["events"] and "500" in errs[0]["message"]


@pytest.mark.parametrize("events", [[], {}, "x", None, 5])
def test_bulk_events_must_be_a_non_empty_list(events: Any) -> None:
    errs = bulk_errors({"events": events})
    assert [e["field"] for e in errs] == ["events"]


def test_bulk_rejects_unknown_top_level_keys() -> None:
    errs = bulk_errors({"events": [valid()], "app_id": "checkout"})
    assert [e["field"] for e in errs] == ["app_id"]


def test_bulk_reports_errors_per_index_only_for_invalid_items() -> None:
    items = [valid(message_id="ok0"), valid(event=_DROP), valid(message_id="ok2"),
             valid(created_at="nope", extra="x"), "not an object"]
    errs = bulk_errors({"events": items})
    by_index: dict[int, set[str]] = {}
    for e in errs:
        by_index.setdefault(e["index"], set()).add(e["field"])
    assert by_index == {1: {"event"}, 3: {"created_at", "extra"}, 4: {"events[4]"}}


# --- serialisation ------------------------------------------------------------------------------

def test_to_json_from_json_round_trip() -> None:
    ev = parse_event(valid(meta={"k": "ü"}, event_id="client:1"), received_at=RECEIVED)
    text = ev.to_json()
    body = json.loads(text)
    assert body == {"app_id": "checkout", "message_id": "order-1", "event": "MESSAGE_CREATED",
                    "created_at": "2024-05-01T11:59:58.250000Z", "event_id": "client:1",
                    "received_at": RECEIVED, "meta": {"k": "ü"}}
    assert Event.from_json(text) == ev
    assert "ü" in text  # compact UTF-8, not \u escapes


def test_round_trip_keeps_derived_id_and_received_time() -> None:
    ev = parse_event(valid(created_at=_DROP), received_at=RECEIVED)
    back = Event.from_json(ev.to_json())
    assert back == ev and back.created_at == RECEIVED


@pytest.mark.parametrize("raw", ["[]", "null", '"x"', '{"app_id": "a"}',
                                 '{"app_id":"a","message_id":"m","event":"E","extra":1}'])
def test_from_json_revalidates(raw: str) -> None:
    with pytest.raises(ValidationError):
        Event.from_json(raw)


def test_from_json_rejects_bad_json() -> None:
    with pytest.raises(ValueError):
        Event.from_json("{not json")
