"""Issue 12, item 7: meta keys and values follow the printable-text rule of the other fields."""

from __future__ import annotations

from typing import Any

import pytest
from mars_common.events import ValidationError, parse_event

BASE = {"app_id": "shop", "message_id": "m1", "event": "CREATED"}


@pytest.mark.parametrize("meta", [
    {"k": "\x1b[2J\x1b[31mred"},                # ANSI escape (ESC)
    {"k": "\x1b]0;owned\x07"},                  # OSC: sets a terminal's title
    {"k": "a\nb"}, {"k": "\x00"}, {"k": "\u202e"},  # newline, NUL, right-to-left override
    {"\x1b[1m": "v"},                           # the key, too
    {"": "v"},                                  # an empty key
    {"k" * 129: "v"},                           # a key over 128 characters
    {"a\tb": "v"},
], ids=["esc", "osc", "newline", "nul", "rlo", "esc-key", "empty-key", "long-key", "tab-key"])
def test_meta_refuses_control_characters_and_bad_keys(meta: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        parse_event({**BASE, "meta": meta})
    assert [e.field for e in err.value.errors] == ["meta"]


def test_printable_meta_is_kept() -> None:
    meta = {"k" * 128: "v", "region": "eu-west-1", "note": "ü 日本 with spaces", "empty": ""}
    assert parse_event({**BASE, "meta": meta}).meta == meta
