"""What a moto patch is: the moto version it was written for, the attributes it replaces, and a check.

A patch replaces private moto internals, so a moto upgrade could silently install a method nobody
calls any more (moto renamed it) or overwrite one whose body changed. Each ``Patch`` therefore names
the moto version it was written against and every attribute it replaces, with how that attribute is
expected to exist; ``check`` compares that with the installed moto before anything is installed, and
``PatchMismatchError`` names the patch and what differs, so the emulator refuses to start instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import moto

# The moto every patch here was read against and tested with (constraints.txt pins it).
MOTO_VERSION = "5.2.5"

# "method": defined in the class's own body (replaced; the original is kept for ``revert``).
# "inherited": not in the class's body but reachable through a base class (shadowed).
# "instance": an instance attribute the class's ``__init__`` assigns (a class-level property takes over).
# "added": defined by neither the class nor its bases (the patch adds it; ``revert`` deletes it).
Kind = Literal["method", "inherited", "instance", "added"]


@dataclass(frozen=True)
class Replacement:
    owner: type
    name: str
    kind: Kind
    # Given moto's original (None unless kind == "method"), returns what is installed in its place.
    build: Callable[[Any], Any]

    @property
    def label(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"


@dataclass(frozen=True)
class Patch:
    name: str  # e.g. "sqs.message_store"; named in every error about it
    why: str
    replacements: tuple[Replacement, ...]
    moto_version: str = MOTO_VERSION


class PatchMismatchError(RuntimeError):
    """The installed moto is not the one a patch was written for; nothing was installed."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems  # (patch name, what differs)
        names = sorted({name for name, _ in problems})
        detail = "; ".join(f"patch {name}: {what}" for name, what in problems)
        super().__init__(f"moto patches {', '.join(names)} do not fit the installed moto ({detail})")


def installed_moto_version() -> str:
    return str(getattr(moto, "__version__", "unknown"))


def _attribute_problem(replacement: Replacement) -> str | None:
    owner, name = replacement.owner, replacement.name
    if replacement.kind == "method":
        if name not in owner.__dict__:
            return f"{replacement.label} is no longer defined by moto"
    elif replacement.kind == "inherited":
        if name in owner.__dict__:
            return f"{replacement.label} is now defined by the class itself (was inherited)"
        if not hasattr(owner, name):
            return f"{replacement.label} no longer exists"
    elif replacement.kind == "added":
        if hasattr(owner, name):
            return f"{replacement.label} is now defined by moto (the patch would replace it unseen)"
    else:
        init = owner.__dict__.get("__init__")
        code = getattr(init, "__code__", None)
        if code is None or name not in code.co_names:
            return f"{replacement.label} is no longer assigned by {owner.__qualname__}.__init__"
    return None


def check(patch: Patch, version: str | None = None) -> list[tuple[str, str]]:
    """Everything about the installed moto that differs from what ``patch`` was written for."""
    version = installed_moto_version() if version is None else version
    problems: list[tuple[str, str]] = []
    if version != patch.moto_version:
        problems.append((patch.name, f"written for moto {patch.moto_version}, moto {version} is installed"))
    for replacement in patch.replacements:
        problem = _attribute_problem(replacement)
        if problem is not None:
            problems.append((patch.name, problem))
    return problems
