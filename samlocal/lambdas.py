"""Lambda functions as the template declares them: handler, code, layers, environment, triggers."""

from __future__ import annotations

import importlib.metadata
import re
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .template import Stack, TemplateError

FUNCTION_TYPES = ("AWS::Serverless::Function",)
LAYER_TYPES = ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion")


# Lambda's asynchronous invocation defaults (samlocal/triggers/async_invoke.py runs them).
MAX_RETRIES = 2
MAX_EVENT_AGE_SECONDS = 21600


@dataclass(frozen=True)
class AsyncConfig:
    """The template's async settings for one function (FunctionSpec.async_config)."""

    max_retries: int = MAX_RETRIES
    max_age: float = MAX_EVENT_AGE_SECONDS
    dead_letter: tuple[str, str] | None = None  # (SQS|SNS, target ARN)
    on_failure: tuple[str, str] | None = None  # (SQS|SNS|Lambda|EventBridge, destination ARN)

    @classmethod
    def from_properties(cls, props: dict[str, Any]) -> "AsyncConfig":
        """From a function's resolved `DeadLetterQueue` and `EventInvokeConfig` properties."""
        dlq = props.get("DeadLetterQueue") or {}
        config = props.get("EventInvokeConfig") or {}
        failure = ((config.get("DestinationConfig") or {}).get("OnFailure")) or {}
        return cls(max_retries=int(config.get("MaximumRetryAttempts", MAX_RETRIES)),
                   max_age=float(config.get("MaximumEventAgeInSeconds", MAX_EVENT_AGE_SECONDS)),
                   dead_letter=(str(dlq.get("Type", "SQS")), str(dlq["TargetArn"])) if dlq.get("TargetArn") else None,
                   on_failure=(str(failure.get("Type", "")), str(failure["Destination"]))
                   if failure.get("Destination") else None)


@dataclass
class FunctionSpec:
    logical_id: str
    name: str
    arn: str
    handler: str
    code_dir: Path
    layer_dirs: list[Path]
    runtime: str
    timeout: float
    memory_mb: int
    environment: dict[str, str]
    reserved_concurrency: int | None
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    # retries and failure destinations of asynchronous invokes (DeadLetterQueue, EventInvokeConfig)
    async_config: AsyncConfig = field(default_factory=AsyncConfig)
    # where the environment also appends its stdout and stderr, line by line (the stack's log: what
    # CloudWatch Logs keeps of a deployed function); None: the terminal only
    log_file: str | None = None

    # top-level modules of the distributions the function may import (computed once; see importable_modules)
    _importable: list[str] | None = field(default=None, repr=False, compare=False)

    def worker_spec(self) -> dict[str, Any]:
        if self._importable is None:
            self._importable = importable_modules([self.code_dir, *self.layer_dirs])
        return {"name": self.name, "arn": self.arn, "handler": self.handler, "code_dir": str(self.code_dir),
                "layer_dirs": [str(p) for p in self.layer_dirs], "memory_mb": self.memory_mb,
                "timeout": self.timeout, "environment": self.environment, "importable": self._importable,
                "log_file": self.log_file}


# What the Python Lambda runtime ships besides the standard library: the AWS SDK (and what it needs).
RUNTIME_DISTRIBUTIONS = ("boto3", "botocore")
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, frozenset[str]] | None:
    """`name[extra,…] …` → (normalised name, extras); None for comments, options and blanks."""
    text = text.split("#", 1)[0].strip()
    match = _NAME.match(text) if text and not text.startswith("-") else None
    if match is None:
        return None
    extras = frozenset(_normalise(e) for e in (match.group(2) or "").split(",") if e.strip())
    return _normalise(match.group(1)), extras


@cache
def _requires(name: str, extras: frozenset[str]) -> tuple[tuple[str, frozenset[str]], ...]:
    """A distribution's own requirements, those of its requested extras included."""
    try:
        lines = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return ()
    found = []
    for line in lines:
        requirement, _, marker = line.partition(";")
        extra = _EXTRA.search(marker)
        if extra and _normalise(extra.group(1)) not in extras:
            continue
        parsed = _requirement(requirement)
        if parsed:
            found.append(parsed)
    return tuple(found)


@cache
def _module_owners() -> dict[str, frozenset[str]]:
    """Top-level module → the installed distributions that provide it (~0.25 s: once per process)."""
    return {module: frozenset(_normalise(d) for d in dists)
            for module, dists in importlib.metadata.packages_distributions().items()}


def importable_modules(dirs: list[Path]) -> list[str]:
    """The top-level modules a deployed function could import beside the standard library and its own
    code: the distributions its CodeUri's and its layers' `requirements.txt` declare, what the Python
    runtime ships (boto3, botocore), and everything those require, transitively."""
    wanted: deque[tuple[str, frozenset[str]]] = deque((name, frozenset()) for name in RUNTIME_DISTRIBUTIONS)
    for directory in dirs:
        # a layer whose content holds python/ keeps its requirements.txt beside it
        root = directory.parent if directory.name == "python" else directory
        if (root / "requirements.txt").is_file():
            wanted.extend(r for r in map(_requirement, (root / "requirements.txt").read_text().splitlines()) if r)
    seen: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        item = wanted.popleft()
        if item not in seen:
            seen.add(item)
            wanted.extend(_requires(*item))
    names = {name for name, _ in seen}
    return sorted(module for module, owners in _module_owners().items() if owners & names)


def physical_name(stack: Stack, logical_id: str) -> str:
    return f"{stack.name}-{logical_id}"


def function_properties(stack: Stack, logical_id: str) -> dict[str, Any]:
    """Function properties with Globals applied as SAM does: maps merge, lists prepend, scalars override."""
    props = dict(stack.resources[logical_id].get("Properties", {}))
    merged: dict[str, Any] = {}
    for key, gval in stack.globals("Function").items():
        fval = props.get(key)
        if fval is None:
            merged[key] = gval
        elif key == "Environment":
            variables = {**gval.get("Variables", {}), **fval.get("Variables", {})}
            merged[key] = {"Variables": variables}
        elif isinstance(gval, list) and isinstance(fval, list):
            merged[key] = gval + fval
        elif isinstance(gval, dict) and isinstance(fval, dict):
            merged[key] = {**gval, **fval}
        else:
            merged[key] = fval
    return {**props, **merged}


def layer_dir(stack: Stack, logical_id: str) -> Path:
    """Where a layer's importable code is: with a BuildMethod SAM builds ContentUri into python/;
    without one, the content already holds python/."""
    spec = stack.resources[logical_id]
    props = spec.get("Properties", {})
    root = stack.root / str(props.get("ContentUri") or props.get("Content", ""))
    if spec.get("Metadata", {}).get("BuildMethod"):
        return root
    return root / "python" if (root / "python").is_dir() else root


def build_spec(stack: Stack, logical_id: str, base_env: dict[str, str]) -> FunctionSpec:
    props = function_properties(stack, logical_id)
    if props.get("PackageType", "Zip") != "Zip":
        raise TemplateError(f"{logical_id}: only Zip functions run locally")
    name = stack.ref(logical_id)
    layers: list[Path] = []
    arn_to_layer = {stack.physical[lid]["Ref"]: lid for lid in stack.of_type(*LAYER_TYPES) if lid in stack.physical}
    for layer in stack.resolve(props.get("Layers", [])):
        if layer in arn_to_layer:
            layers.append(layer_dir(stack, arn_to_layer[layer]))
        else:
            raise TemplateError(f"{logical_id}: layer {layer} is not defined in this template")
    variables = stack.resolve(props.get("Environment", {}).get("Variables", {}))
    rewrite = stack.url_rewriter or (lambda value: value)
    # Deployed API URLs in the environment (execute-api …) point at the local servers instead.
    env = {**base_env, **{k: rewrite(_env_str(v)) for k, v in variables.items()}}
    return FunctionSpec(
        logical_id=logical_id, name=name, arn=stack.get_att(logical_id, "Arn"),
        handler=str(props["Handler"]), code_dir=stack.root / str(props.get("CodeUri", ".")),
        layer_dirs=layers, runtime=str(props.get("Runtime", "")),
        timeout=float(stack.resolve(props.get("Timeout", 3))), memory_mb=int(stack.resolve(props.get("MemorySize", 128))),
        environment=env,
        reserved_concurrency=(int(stack.resolve(props["ReservedConcurrentExecutions"]))
                              if props.get("ReservedConcurrentExecutions") is not None else None),
        events=props.get("Events", {}),
        async_config=AsyncConfig.from_properties(stack.resolve(
            {key: props[key] for key in ("DeadLetterQueue", "EventInvokeConfig") if props.get(key)})),
    )


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
