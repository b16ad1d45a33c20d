"""Aggregator logic: group an SQS FIFO batch by message, and map store results back to records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .events import Event, ValidationError


@dataclass
class MessageGroup:
    app_id: str
    message_id: str
    events: list[Event] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "message_id": self.message_id,
                "events": [e.as_dict() for e in self.events]}


@dataclass
class Batch:
    groups: list[MessageGroup]
    poison: dict[str, str]  # record id → why it cannot be stored
    order: list[tuple[str, str | None]]  # (record id, FIFO group id) in delivery order


def group_records(records: list[dict[str, Any]]) -> Batch:
    """One MessageGroup per (app_id, message_id), events in delivery order."""
    groups: dict[tuple[str, str], MessageGroup] = {}
    poison: dict[str, str] = {}
    order: list[tuple[str, str | None]] = []
    poisoned_groups: set[str] = set()
    for record in records:
        rid = record["messageId"]
        fifo_group = record.get("attributes", {}).get("MessageGroupId")
        order.append((rid, fifo_group))
        if fifo_group is not None and fifo_group in poisoned_groups:
            continue  # behind a poison record of its FIFO group: not processed (skip_group_on_error)
        try:
            ev = Event.from_json(record["body"])
        except (ValidationError, json.JSONDecodeError, TypeError, KeyError) as exc:
            poison[rid] = str(exc)[:500]
            if fifo_group is not None:
                poisoned_groups.add(fifo_group)
            continue
        key = (ev.app_id, ev.message_id)
        group = groups.get(key)
        if group is None:
            group = groups[key] = MessageGroup(ev.app_id, ev.message_id)
        group.events.append(ev)
        group.record_ids.append(rid)
    return Batch(list(groups.values()), poison, order)


def batch_item_failures(batch: Batch, failed_groups: set[int]) -> list[dict[str, str]]:
    """FIFO-safe failures: once a record of a FIFO group fails, every later record of that group
    fails too (Powertools' skip_group_on_error), so a group is never stored out of order."""
    failed_records = set(batch.poison)
    for i in failed_groups:
        failed_records.update(batch.groups[i].record_ids)
    broken_groups: set[str] = set()
    out: list[dict[str, str]] = []
    for rid, fifo_group in batch.order:
        if rid in failed_records or (fifo_group is not None and fifo_group in broken_groups):
            out.append({"itemIdentifier": rid})
            if fifo_group is not None:
                broken_groups.add(fifo_group)
    return out
