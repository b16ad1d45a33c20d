"""Counts every AWS API call a process makes, through botocore's own event hooks.

`install()` adds a `before-call` handler to botocore's built-in handler list, so every session and
client created afterwards (the runtime's pollers, every function's boto3 clients) reports to it.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import botocore.handlers

_counts: Counter[str] = Counter()
_lock = threading.Lock()
_installed = False


def _count(model: Any = None, **_: Any) -> None:
    if model is not None:
        key = f"{model.service_model.service_name}.{model.name}"
        with _lock:
            _counts[key] += 1


def install() -> None:
    global _installed
    if not _installed:
        botocore.handlers.BUILTIN_HANDLERS.append(("before-call", _count))
        _installed = True


def take() -> dict[str, int]:
    """The counts since the last take (a worker ships them with each invocation result)."""
    with _lock:
        out = dict(_counts)
        _counts.clear()
    return out


def peek() -> dict[str, int]:
    with _lock:
        return dict(_counts)
