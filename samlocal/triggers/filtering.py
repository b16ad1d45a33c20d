"""Lambda event filtering (an event source mapping's FilterCriteria), shared by every poller.

The pattern syntax is EventBridge's, as Lambda documents it for event source mappings: exact values,
`exists`, `prefix`, `suffix`, `equals-ignore-case`, `anything-but`, `numeric`; the filters are ORed,
the fields of one pattern ANDed. Each poller decides what the record looks like when it is matched
(SQS: `body` parsed as JSON when it is JSON) and what happens to a record that does not match.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def parse_filters(criteria: Any) -> list[dict[str, Any]]:
    """FilterCriteria (`{"Filters": [{"Pattern": "<json>"}]}`, the pattern as text or object) → patterns,
    each checked: a pattern Lambda would reject fails the start."""
    patterns = []
    for f in (criteria or {}).get("Filters", []):
        pattern = f.get("Pattern", {})
        parsed = json.loads(pattern) if isinstance(pattern, str) else pattern
        check_pattern(parsed)
        patterns.append(parsed)
    return patterns


_MISSING = object()
_OPERATORS = ("exists", "prefix", "suffix", "equals-ignore-case", "anything-but", "numeric")
_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "=": lambda a, b: a == b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def check_pattern(pattern: Any) -> None:
    """Raises ValueError for a pattern Lambda would reject or that this runtime does not emulate."""
    if not isinstance(pattern, dict):
        raise ValueError(f"filter pattern must be a JSON object, not {pattern!r}")
    for key, rule in pattern.items():
        if isinstance(rule, dict):
            check_pattern(rule)
        elif isinstance(rule, list):
            for item in rule:
                if isinstance(item, dict):
                    if len(item) != 1 or next(iter(item)) not in _OPERATORS:
                        raise ValueError(f"filter rule {item!r} at {key!r}: supported operators are {', '.join(_OPERATORS)}")
                    op, arg = next(iter(item.items()))
                    if op == "numeric" and (not isinstance(arg, list) or len(arg) % 2
                                            or any(o not in _NUMERIC_OPS for o in arg[::2])):
                        raise ValueError(f"filter rule {item!r} at {key!r}: numeric takes [op, number, ...]")
        else:
            raise ValueError(f"filter pattern at {key!r}: values must be arrays or objects, not {rule!r}")


def matches(filters: list[dict[str, Any]], record: dict[str, Any]) -> bool:
    """Lambda event filtering: no filters → everything; otherwise any pattern (OR) matching the record."""
    return not filters or any(_match_object(p, record) for p in filters)


def _match_object(pattern: dict[str, Any], value: Any) -> bool:
    obj = value if isinstance(value, dict) else {}
    for key, rule in pattern.items():
        found = obj.get(key, _MISSING)
        if isinstance(rule, dict):
            if found is not _MISSING and not isinstance(found, dict):
                return False
            if not _match_object(rule, found):
                return False
        elif not _match_leaf(rule, found):
            return False
    return True


def _match_leaf(rules: list[Any], found: Any) -> bool:
    # Rules apply to leaf values only: an object where a leaf is expected counts as absent (so
    # `{"OldImage": [{"exists": true}]}` never matches, as in AWS). Arrays match if any element does.
    if found is _MISSING or isinstance(found, dict):
        values: list[Any] = [_MISSING]
    elif isinstance(found, list):
        values = found
    else:
        values = [found]
    for rule in rules:
        if isinstance(rule, dict):
            if any(_match_operator(rule, v) for v in values):
                return True
        elif any(v is not _MISSING and _equal(rule, v) for v in values):
            return True
    return False


def _equal(expected: Any, value: Any) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(expected, bool) and isinstance(value, bool) and expected == value
    return bool(expected == value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _match_operator(rule: dict[str, Any], value: Any) -> bool:
    op, arg = next(iter(rule.items()))
    if op == "exists":
        return (value is not _MISSING) == bool(arg)
    if value is _MISSING:
        return False
    if op == "anything-but":
        if isinstance(arg, dict):
            return not _match_operator(arg, value)
        return not any(_equal(a, value) for a in (arg if isinstance(arg, list) else [arg]))
    if op == "numeric":
        return _is_number(value) and all(_NUMERIC_OPS[o](value, float(n)) for o, n in zip(arg[::2], arg[1::2]))
    if not isinstance(value, str):
        return False
    if op == "equals-ignore-case":
        return value.lower() == str(arg).lower()
    if isinstance(arg, dict):  # {"prefix": {"equals-ignore-case": "x"}}
        text, value = str(arg.get("equals-ignore-case", "")).lower(), value.lower()
    else:
        text = str(arg)
    return value.startswith(text) if op == "prefix" else value.endswith(text)
