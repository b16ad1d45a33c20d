"""Reading a SAM template: a real CloudFormation YAML loader, parameters, conditions, intrinsics.

Nothing here knows which app it runs: names come from the template and the stack name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-east-1"
# Until the stack learns the account from its endpoint (STS GetCallerIdentity, LocalRuntime.start): moto's
# default, which is what a Stack used under moto's mock_aws (unit tests) gets.
ACCOUNT_ID = "123456789012"


class TemplateError(Exception):
    """The template asks for something this runtime cannot resolve."""


def _plain(value: Any) -> Any:
    """cfn-lint's node classes → plain dicts/lists/str (they carry line marks we don't need)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


# path → (mtime, size, the parsed template marshalled): a process that reads one template again (each unit
# test's mocked stack) gets a fresh copy in ~1 ms instead of a ~150 ms YAML parse.
_parsed: dict[str, tuple[int, int, bytes]] = {}


def load(path: str | Path) -> dict[str, Any]:
    """Parses with cfn-lint's loader, which understands every intrinsic short form (!Ref, !Sub …)."""
    import marshal

    from cfnlint.decode import cfn_yaml  # heavy: imported only by the process that reads templates

    key, stat = str(Path(path).resolve()), Path(path).stat()
    cached = _parsed.get(key)
    if cached and cached[:2] == (stat.st_mtime_ns, stat.st_size):
        return marshal.loads(cached[2])
    template = _plain(cfn_yaml.load(str(path)))
    try:
        _parsed[key] = (stat.st_mtime_ns, stat.st_size, marshal.dumps(template))
    except ValueError:
        pass  # a value marshal cannot copy (a YAML date, say): this template is parsed each time
    return template


@dataclass
class Stack:
    """A template bound to a stack name, parameter values and the physical ids of its resources."""

    template: dict[str, Any]
    root: Path
    name: str = "local"
    region: str = REGION
    account_id: str = ACCOUNT_ID
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    # logical id → {"Ref": ..., "Arn": ..., other attributes}, filled as resources are created
    physical: dict[str, dict[str, Any]] = field(default_factory=dict)
    # hook to rewrite deployed URLs (execute-api …) into local ones
    url_rewriter: Callable[[str], str] | None = None

    def __post_init__(self) -> None:
        self.parameters = self._parameters()
        self.conditions: dict[str, bool] = {}
        for name in self.template.get("Conditions", {}):
            self.condition(name)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template.get("Resources", {}).items()
                if "Condition" not in v or self.condition(v["Condition"])}

    def bind(self, account_id: str | None = None, region: str | None = None) -> None:
        """The account (and region) the resources live in, learned from the endpoint: `AWS::AccountId` and
        every ARN built from here on use them. Conditions are evaluated again (one may compare them)."""
        if account_id:
            self.account_id = account_id
        if region:
            self.region = region
        self.conditions = {}
        for name in self.template.get("Conditions", {}):
            self.condition(name)

    def of_type(self, *types: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v.get("Type") in types}

    def globals(self, section: str) -> dict[str, Any]:
        return self.template.get("Globals", {}).get(section, {})

    # --- parameters and conditions -------------------------------------------------------------
    def _parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in self.template.get("Parameters", {}).items():
            if name in self.parameter_overrides:
                value: Any = self.parameter_overrides[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise TemplateError(f"parameter {name} has no Default; pass --parameter-overrides {name}=...")
            allowed = spec.get("AllowedValues")
            if allowed and str(value) not in [str(a) for a in allowed]:
                raise TemplateError(f"parameter {name}={value!r} is not one of {allowed}")
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")]
            else:
                value = str(value)
            out[name] = value
        unknown = set(self.parameter_overrides) - set(out)
        if unknown:
            raise TemplateError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return out

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            spec = self.template.get("Conditions", {}).get(name)
            if spec is None:
                raise TemplateError(f"unknown condition {name}")
            self.conditions[name] = bool(self.resolve(spec))
        return self.conditions[name]

    # --- intrinsics ------------------------------------------------------------------------------
    def pseudo(self, name: str) -> Any:
        return {
            "AWS::Region": self.region, "AWS::AccountId": self.account_id, "AWS::StackName": self.name,
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/{self.name}/local",
            "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None,
            "AWS::NotificationARNs": [],
        }[name]

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]["Ref"]
        raise TemplateError(f"Ref {name}: not a parameter or a created resource")

    def get_att(self, logical: str, attribute: str) -> Any:
        attrs = self.physical.get(logical)
        if attrs is None or attribute not in attrs:
            raise TemplateError(f"GetAtt {logical}.{attribute}: not available (resource not created?)")
        return attrs[attribute]

    def resolve(self, value: Any) -> Any:
        """Resolves every intrinsic in a value; AWS::NoValue removes the key, as in CloudFormation."""
        if isinstance(value, list):
            return [r for r in (self.resolve(v) for v in value) if r is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            handler = _INTRINSICS.get(key)
            if handler is not None:
                return handler(self, arg)
        out = {}
        for k, v in value.items():
            r = self.resolve(v)
            if r is not _NO_VALUE:
                out[k] = r
        return out

    def references(self, value: Any) -> set[str]:
        """Logical ids a value refers to (for creation order)."""
        found: set[str] = set()
        if isinstance(value, list):
            for v in value:
                found |= self.references(v)
        elif isinstance(value, dict):
            for k, v in value.items():
                if k == "Ref" and isinstance(v, str):
                    found.add(v)
                elif k == "Fn::GetAtt":
                    target = v[0] if isinstance(v, list) else str(v).split(".", 1)[0]
                    found.add(target)
                elif k == "Fn::Sub":
                    text = v[0] if isinstance(v, list) else v
                    found |= {m.split(".", 1)[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                    if isinstance(v, list):
                        found |= self.references(v[1])
                else:
                    found |= self.references(v)
        return {f for f in found if f in self.template.get("Resources", {})}

    def output_values(self) -> dict[str, Any]:
        out = {}
        for name, spec in self.template.get("Outputs", {}).items():
            if "Condition" in spec and not self.condition(spec["Condition"]):
                continue
            try:
                value = self.resolve(spec["Value"])
            except TemplateError:
                continue  # an output of a resource this runtime does not emulate
            if isinstance(value, str) and self.url_rewriter:
                value = self.url_rewriter(value)
            out[name] = value
        return out


class _NoValue:
    pass


_NO_VALUE = _NoValue()


def _ref(stack: Stack, arg: str) -> Any:
    if arg == "AWS::NoValue":
        return _NO_VALUE
    return stack.ref(arg)


def _get_att(stack: Stack, arg: Any) -> Any:
    if isinstance(arg, str):
        logical, attribute = arg.split(".", 1)
    else:
        logical, attribute = arg[0], stack.resolve(arg[1])
    return stack.get_att(logical, attribute)


def _sub(stack: Stack, arg: Any) -> str:
    text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], stack.resolve(arg[1]))

    def repl(match: re.Match[str]) -> str:
        inner = match.group(1)
        if inner.startswith("!"):
            return "${" + inner[1:] + "}"
        if inner in variables:
            return str(variables[inner])
        if "." in inner and not inner.startswith("AWS::"):
            logical, attribute = inner.split(".", 1)
            return str(stack.get_att(logical, attribute))
        return str(stack.ref(inner))

    return re.sub(r"\$\{([^}]+)\}", repl, text)


def _join(stack: Stack, arg: Any) -> str:
    sep, items = arg
    values = stack.resolve(items)
    return str(sep).join(str(v) for v in values)


def _select(stack: Stack, arg: Any) -> Any:
    return stack.resolve(arg[1])[int(stack.resolve(arg[0]))]


def _split(stack: Stack, arg: Any) -> list[str]:
    return str(stack.resolve(arg[1])).split(arg[0])


def _if(stack: Stack, arg: Any) -> Any:
    name, yes, no = arg
    return stack.resolve(yes if stack.condition(name) else no)


def _equals(stack: Stack, arg: Any) -> bool:
    a, b = stack.resolve(arg)
    return str(a) == str(b)


_INTRINSICS: dict[str, Callable[[Stack, Any], Any]] = {
    "Ref": _ref,
    "Fn::GetAtt": _get_att,
    "Fn::Sub": _sub,
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
    "Fn::If": _if,
    "Fn::Equals": _equals,
    "Fn::Not": lambda s, a: not s.resolve(a[0]),
    "Fn::And": lambda s, a: all(s.resolve(x) for x in a),
    "Fn::Or": lambda s, a: any(s.resolve(x) for x in a),
    "Condition": lambda s, a: s.condition(a),
    "Fn::GetAZs": lambda s, a: [f"{s.region}a", f"{s.region}b", f"{s.region}c"],
    "Fn::Base64": lambda s, a: __import__("base64").b64encode(str(s.resolve(a)).encode()).decode(),
}


def topological(stack: Stack, logical_ids: list[str]) -> list[str]:
    """Creation order: every resource after the resources it references."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            raise TemplateError("circular reference: " + " -> ".join(path + (node,)))
        state[node] = 1
        spec = stack.template["Resources"][node]
        for dep in sorted(stack.references(spec.get("Properties", {})) | set(_depends_on(spec))):
            if dep in logical_ids:
                visit(dep, path + (node,))
        state[node] = 2
        order.append(node)

    for lid in logical_ids:
        visit(lid, ())
    return order


def _depends_on(spec: dict[str, Any]) -> list[str]:
    dep = spec.get("DependsOn", [])
    return [dep] if isinstance(dep, str) else list(dep)
