"""Sums CloudWatch embedded metric format (EMF) lines, as CloudWatch would: `mars stats --metrics`.

An EMF line is a JSON object with `_aws.CloudWatchMetrics` directives; each directive names a
namespace, its metrics (name, unit) and dimension sets; a metric's value (a number or a list of
numbers) and each dimension's value are top-level members of the object. A metric is published once
per dimension set, so it is summed per (namespace, metric, dimension set and values). Lines that are
not EMF (the functions' other log lines, the runtime's) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Series:
    namespace: str
    metric: str
    unit: str
    dimensions: dict[str, str]
    values: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        n = len(self.values)
        return {"namespace": self.namespace, "metric": self.metric, "unit": self.unit, "dimensions": self.dimensions,
                "sum": _number(sum(self.values)), "samples": n,
                "average": _number(sum(self.values) / n) if n else None,
                "min": _number(min(self.values)) if n else None, "max": _number(max(self.values)) if n else None}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def _values(raw: Any) -> list[float]:
    items = raw if isinstance(raw, list) else [raw]
    return [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def parse(line: str) -> list[tuple[str, str, str, dict[str, str], list[float]]]:
    """(namespace, metric, unit, dimensions, values) for every metric and dimension set of one line;
    [] for a line that is not an EMF object."""
    text = line.strip()
    if not text.startswith("{") or '"_aws"' not in text:
        return []
    try:
        obj = json.loads(text)
        directives = obj["_aws"]["CloudWatchMetrics"]
    except (ValueError, KeyError, TypeError):
        return []
    out = []
    for directive in directives if isinstance(directives, list) else []:
        if not isinstance(directive, dict):
            continue
        namespace = str(directive.get("Namespace", ""))
        dimension_sets = directive.get("Dimensions") or [[]]
        for metric in directive.get("Metrics") or []:
            name = metric.get("Name") if isinstance(metric, dict) else None
            if not name or name not in obj:
                continue
            values = _values(obj[name])
            for keys in dimension_sets:
                dims = {str(k): str(obj.get(k, "")) for k in keys if isinstance(k, str)}
                out.append((namespace, str(name), str(metric.get("Unit", "None")), dims, values))
    return out


def summarize(lines: Iterable[str]) -> list[Series]:
    """Every series of the lines, summed, sorted by namespace, metric and dimensions."""
    series: dict[tuple[str, str, tuple[tuple[str, str], ...]], Series] = {}
    for line in lines:
        for namespace, metric, unit, dims, values in parse(line):
            key = (namespace, metric, tuple(sorted(dims.items())))
            if key not in series:
                series[key] = Series(namespace, metric, unit, dims)
            series[key].values.extend(values)
    return [series[k] for k in sorted(series)]


def table(rows: list[Series]) -> list[str]:
    """The series as an aligned text table (numbers right-aligned)."""
    head = ("NAMESPACE", "METRIC", "DIMENSIONS", "UNIT", "SUM", "SAMPLES", "AVERAGE", "MAX")
    body = []
    for s in rows:
        d = s.as_dict()
        dims = ",".join(f"{k}={v}" for k, v in sorted(s.dimensions.items())) or "-"
        body.append((s.namespace, s.metric, dims, s.unit, str(d["sum"]), str(d["samples"]),
                     "-" if d["average"] is None else str(d["average"]), "-" if d["max"] is None else str(d["max"])))
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return ["  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
            for r in [head, *body]]
