"""The emulator's fixes to moto, one module per patched service; ``apply`` checks, then installs them all.

``installed(*patches)`` puts some of them in for a block and then moto's own code back (or, with
``stock=True``, moto's own code in their place for the block): for a process that runs moto in-process —
a unit test on the stack's fixes, a benchmark comparing one patch with stock moto.

``apply()`` first checks every patch against the installed moto (``base.check``: its version and each
attribute the patch replaces); on any mismatch it raises ``PatchMismatchError`` naming the patches and
installs nothing, so the emulator refuses to start rather than run half-patched. ``revert()`` puts
moto's own attributes (and its SQS storage layout) back, for comparisons with stock moto.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from samlocal.emulator.patches import dynamodb, dynamodbstreams, sqs
from samlocal.emulator.patches.base import MOTO_VERSION, Patch, PatchMismatchError, check

__all__ = ["MOTO_VERSION", "ORIGINALS", "PATCHES", "Patch", "PatchMismatchError", "apply", "check_all", "installed", "is_applied",
           "revert"]

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


def _own(replacement: Any) -> Any:
    """moto's own attribute behind `replacement`, whether or not ``apply()`` replaced it (None: inherited
    or absent)."""
    key = f"{replacement.owner.__name__}.{replacement.name}"
    if _applied and key in ORIGINALS:
        return ORIGINALS[key]
    return replacement.owner.__dict__.get(replacement.name)


def _put(owner: type, name: str, value: Any) -> None:
    if value is not None:
        setattr(owner, name, value)
    elif name in owner.__dict__:
        delattr(owner, name)


@contextmanager
def installed(*chosen: Patch, stock: bool = False) -> Iterator[None]:
    """`chosen` patches in for the block (checked first), or moto's own code in their place (`stock`);
    afterwards every attribute they touch is as it was. Not thread-safe against requests in flight:
    for in-process moto (mock_aws), between calls."""
    # once apply() has checked them, the classes hold the patches: check() would see moto changed
    problems = [] if _applied else [problem for patch in chosen for problem in check(patch)]
    if problems:
        raise PatchMismatchError(problems)
    before = [(r, r.owner.__dict__.get(r.name)) for patch in chosen for r in patch.replacements]
    try:
        for r, _ in before:
            _put(r.owner, r.name, _own(r) if stock else r.build(_own(r)))
        yield
    finally:
        for r, was in reversed(before):
            _put(r.owner, r.name, was)
