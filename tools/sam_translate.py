"""template.yaml through the SAM transform (aws-sam-translator, offline), for checkov: `make lint`
scans the SAM template as written and this output too, so the resources SAM generates (each function's
IAM role and permissions, the REST API's stage and deployment …) are scanned as CloudFormation would
create them. A SAM resource's checkov skips (Metadata) carry over to what it generates (logical ids
that start with its own), so a reason is written once, on the resource a reader sees.

usage: python tools/sam_translate.py template.yaml build/template.translated.json"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


class _NoManagedPolicies:
    """The translator asks IAM for managed policy ARNs by name; the template names none, so no AWS call."""

    def load(self) -> dict[str, str]:
        return {}


def translate(source: Path) -> dict[str, Any]:
    from cfnlint.decode import decode
    from samtranslator.translator.transform import transform

    template, errors = decode(str(source))
    if errors or template is None:
        raise SystemExit(f"{source}: cannot be read: {errors}")
    sam = json.loads(json.dumps(template, default=str))
    for resource in sam.get("Resources", {}).values():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):  # local folders: what `sam package` would upload
            if isinstance(props.get(key), str):
                props[key] = "s3://mars-lint/placeholder.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    out: dict[str, Any] = transform(sam, {}, _NoManagedPolicies())
    skips = {lid: r["Metadata"]["checkov"] for lid, r in sam["Resources"].items()
             if isinstance(r.get("Metadata"), dict) and "checkov" in r["Metadata"]}
    for lid, resource in out["Resources"].items():
        if lid in sam["Resources"]:
            continue
        owner = max((s for s in skips if lid.startswith(s)), key=len, default=None)
        if owner is not None:
            resource.setdefault("Metadata", {}).setdefault("checkov", skips[owner])
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[2])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(translate(Path(argv[1])), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
