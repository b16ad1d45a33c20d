"""The emulator's fixes to moto, one module per patched service; ``apply`` checks, then installs them all.

``apply()`` first checks every patch against the installed moto (``base.check``: its version and each
attribute the patch replaces); on any mismatch it raises ``PatchMismatchError`` naming the patches and
installs nothing, so the emulator refuses to start rather than run half-patched. ``revert()`` puts
moto's own attributes (and its SQS storage layout) back, for comparisons with stock moto.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from samlocal.emulator.patches import dynamodb, dynamodbstreams, sqs
from samlocal.emulator.patches.base import MOTO_VERSION, Patch, PatchMismatchError, check

__all__ = ["MOTO_VERSION", "ORIGINALS", "PATCHES", "Patch", "PatchMismatchError", "apply", "check_all", "is_applied", "revert"]

logger = logging.getLogger(__name__)

PATCHES: tuple[Patch, ...] = sqs.PATCHES + dynamodb.PATCHES + dynamodbstreams.PATCHES

_apply_lock = threading.Lock()
_applied = False
# The moto attributes we replaced, keyed "Class.attr" (None: was inherited or an instance attribute).
ORIGINALS: dict[str, Any] = {}
_replaced: list[tuple[type, str, Any]] = []


def check_all(version: str | None = None) -> None:
    """Raises ``PatchMismatchError`` naming every patch that does not fit the installed moto."""
    problems = [problem for patch in PATCHES for problem in check(patch, version)]
    if problems:
        raise PatchMismatchError(problems)


def apply() -> None:
    """Check, then install every patch into moto's classes. Idempotent."""
    global _applied
    with _apply_lock:
        if _applied:
            return
        check_all()
        for patch in PATCHES:
            for replacement in patch.replacements:
                cls, name = replacement.owner, replacement.name
                original = cls.__dict__.get(name)
                ORIGINALS[f"{cls.__name__}.{name}"] = original
                _replaced.append((cls, name, original))
                setattr(cls, name, replacement.build(original))
        _applied = True
    logger.debug("moto patches applied", extra={"patches": [patch.name for patch in PATCHES]})


def is_applied() -> bool:
    return _applied


def revert() -> None:
    """Undo ``apply()``: restore moto's methods and its storage layout on every queue.

    For comparisons (the depth benchmark switches a server back to stock moto after
    prefilling it).  Only safe while no request is being served.  Deduplication
    history and the bound on remembered deleted receipt handles are lost.
    """
    global _applied
    with _apply_lock:
        if not _applied:
            return
        layouts = sqs.snapshot_layouts()
        for cls, name, original in reversed(_replaced):
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        _replaced.clear()
        ORIGINALS.clear()
        sqs.restore_layouts(layouts)
        _applied = False
    logger.debug("moto patches reverted")
