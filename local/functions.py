"""Lambda functions as the template declares them: handler, code, layers, environment, triggers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .async_invoke import AsyncConfig
from .template import Stack, TemplateError

FUNCTION_TYPES = ("AWS::Serverless::Function",)
LAYER_TYPES = ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion")


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

    def worker_spec(self) -> dict[str, Any]:
        return {"name": self.name, "arn": self.arn, "handler": self.handler, "code_dir": str(self.code_dir),
                "layer_dirs": [str(p) for p in self.layer_dirs], "memory_mb": self.memory_mb,
                "timeout": self.timeout, "environment": self.environment}


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
