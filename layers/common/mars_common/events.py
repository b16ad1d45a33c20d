"""The event contract (DESIGN §2): validation, normalisation and the idempotency key.

Every ingress path (HTTP, gRPC, SNS/SQS) calls `parse_event`, so a rule lives here once.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

APP_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_MESSAGE_ID = 256
MAX_EVENT = 128
MAX_META_BYTES = 2048
MAX_META_KEY = 128
MAX_BULK = 500
ALLOWED_FIELDS = frozenset({"app_id", "message_id", "event", "created_at", "event_id", "meta"})


@dataclass(frozen=True)
class FieldError:
    """One precise complaint about one field; `index` is set for bulk items."""

    field: str
    message: str
    index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.index is not None:
            out["index"] = self.index
        return out


class ValidationError(Exception):
    """Raised with every field error found, not only the first."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Event:
    app_id: str
    message_id: str
    event: str
    created_at: str  # RFC 3339, UTC, microseconds: sorts as a string
    event_id: str
    received_at: str
    meta: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"), ensure_ascii=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "app_id": self.app_id,
            "message_id": self.message_id,
            "event": self.event,
            "created_at": self.created_at,
            "event_id": self.event_id,
            "received_at": self.received_at,
        }
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, raw: str) -> "Event":
        """Reads an event already validated at ingress (queue bodies); re-checks its shape."""
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: Any) -> "Event":
        """`as_dict()` back into an Event (received_at kept), validated again."""
        if not isinstance(data, dict):
            raise ValidationError([FieldError("body", "must be a JSON object")])
        data = dict(data)
        received = data.pop("received_at", None)
        return parse_event(data, received_at=received if isinstance(received, str) else None)


def format_ts(moment: datetime) -> str:
    """One fixed-width UTC form, so stored timestamps sort lexically (strftime's %Y does not pad)."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_ts(datetime.now(UTC))


def parse_timestamp(value: str) -> str:
    """ISO-8601 / RFC 3339 → canonical UTC; no offset means UTC. Raises ValueError."""
    text = value.strip()
    if not text:
        raise ValueError("empty timestamp")
    # fromisoformat accepts 'Z' and most ISO forms on 3.11; a lowercase 'z' or 't' is RFC 3339 too.
    text = re.sub(r"[zZ]$", "+00:00", text)
    if len(text) > 10 and text[10] in "t ":
        text = text[:10] + "T" + text[11:]
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_ts(moment)  # may raise OverflowError near year 1 or 9999


def derive_event_id(app_id: str, message_id: str, event: str, created_at: str, meta: dict[str, str]) -> str:
    """Deterministic id: the same event submitted twice gets the same id, so it is stored once."""
    canonical = json.dumps([app_id, message_id, event, created_at, sorted(meta.items())], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def check_text(data: dict[str, Any], name: str, max_len: int, errors: list[FieldError]) -> str | None:
    if name not in data or data[name] is None:
        errors.append(FieldError(name, "is required"))
        return None
    value = data[name]
    if not isinstance(value, str):
        errors.append(FieldError(name, f"must be a string, got {type(value).__name__}"))
        return None
    if not value:
        errors.append(FieldError(name, "must not be empty"))
        return None
    if len(value) > max_len:
        errors.append(FieldError(name, f"must be at most {max_len} characters, got {len(value)}"))
        return None
    if not value.isprintable():
        errors.append(FieldError(name, "must not contain control characters"))
        return None
    return value


def parse_event(data: Any, *, received_at: str | None = None, index: int | None = None) -> Event:
    """Validates one event as received from a producer and returns it normalised."""
    if not isinstance(data, dict):
        raise ValidationError([FieldError("event" if index is None else f"events[{index}]",
                                          "must be a JSON object", index)])
    errors: list[FieldError] = []
    for unknown in sorted(set(data) - ALLOWED_FIELDS):
        errors.append(FieldError(unknown, "is not a known field (allowed: " + ", ".join(sorted(ALLOWED_FIELDS)) + ")"))

    app_id = check_text(data, "app_id", 128, errors)
    if app_id is not None and not APP_ID_RE.fullmatch(app_id):
        errors.append(FieldError("app_id", "may contain only letters, digits and . _ : -"))
        app_id = None
    message_id = check_text(data, "message_id", MAX_MESSAGE_ID, errors)
    event = check_text(data, "event", MAX_EVENT, errors)

    received = received_at or utc_now()
    created_raw = data.get("created_at")
    created_at: str | None = None
    if created_raw is None or created_raw == "":
        created_at = received
    elif not isinstance(created_raw, str):
        errors.append(FieldError("created_at", f"must be an ISO-8601 string, got {type(created_raw).__name__}"))
    else:
        try:
            created_at = parse_timestamp(created_raw)
        except (ValueError, OverflowError):  # overflow: a valid form whose UTC time leaves years 1-9999
            errors.append(FieldError("created_at", f"is not an ISO-8601 / RFC 3339 timestamp: {created_raw[:64]!r}"))

    meta = _check_meta(data.get("meta"), errors)

    event_id = data.get("event_id")
    if event_id is not None and event_id != "":
        if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
            errors.append(FieldError("event_id", "must be 1-128 characters of letters, digits and . _ : -"))
            event_id = None
    else:
        event_id = None

    if errors:
        if index is not None:
            errors = [FieldError(e.field, e.message, index) for e in errors]
        raise ValidationError(errors)
    assert app_id and message_id and event and created_at is not None and meta is not None
    if event_id is None:
        event_id = derive_event_id(app_id, message_id, event, created_at, meta)
    return Event(app_id, message_id, event, created_at, event_id, received, meta)


def _check_meta(meta: Any, errors: list[FieldError]) -> dict[str, str] | None:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        errors.append(FieldError("meta", "must be an object of string values"))
        return None
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        errors.append(FieldError("meta", f"values must be strings (not: {', '.join(sorted(bad)[:5])})"))
        return None
    # The dashboard and `mars tail` print meta: the same printable-text rule as the other fields, so
    # no terminal escape (ESC, OSC) or invisible key reaches a screen.
    if any(not 0 < len(k) <= MAX_META_KEY or not k.isprintable() for k in meta):
        errors.append(FieldError("meta", f"keys must be printable strings of 1-{MAX_META_KEY} characters"))
        return None
    if any(not v.isprintable() for v in meta.values()):
        errors.append(FieldError("meta", "values must not contain control characters"))
        return None
    size = len(json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    if size > MAX_META_BYTES:
        errors.append(FieldError("meta", f"must be at most {MAX_META_BYTES} bytes as JSON, got {size}"))
        return None
    return dict(meta)


def parse_events(payload: Any, *, received_at: str | None = None) -> list[Event]:
    """A single event, or `{"events": [...]}` (≤ 500): all valid, or every error with its index."""
    if isinstance(payload, dict) and "events" in payload:
        extra = sorted(set(payload) - {"events"})
        if extra:
            raise ValidationError([FieldError(k, "is not a known field of a bulk request") for k in extra])
        items = payload["events"]
        if not isinstance(items, list):
            raise ValidationError([FieldError("events", "must be a list of events")])
        if not items:
            raise ValidationError([FieldError("events", "must hold at least one event")])
        if len(items) > MAX_BULK:
            raise ValidationError([FieldError("events", f"must hold at most {MAX_BULK} events, got {len(items)}")])
        received = received_at or utc_now()
        events: list[Event] = []
        errors: list[FieldError] = []
        for i, item in enumerate(items):
            try:
                events.append(parse_event(item, received_at=received, index=i))
            except ValidationError as exc:
                errors.extend(exc.errors)
        if errors:
            raise ValidationError(errors)
        return events
    return [parse_event(payload, received_at=received_at)]
