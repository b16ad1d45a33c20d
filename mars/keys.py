"""`mars keys create|list|revoke`: API keys scoped to apps (DESIGN §2, docs/SECURITY.md).

Against the running local stack by default; against a deployed one with `--stack-outputs FILE` (the
stack's Outputs as JSON, e.g. `aws cloudformation describe-stacks --query 'Stacks[0].Outputs'`),
using the normal AWS credentials. Deployed, the key's usage identifier (never the key) is also
registered as an API Gateway key of the REST API's usage plan: the API's authorizer checks the key
and names that identifier, so API Gateway throttles per key; the app checks the key's apps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _auth() -> Any:
    from mars_common import auth  # the one implementation of keys lives in the layer

    return auth


def _outputs(args: argparse.Namespace) -> tuple[dict[str, Any], bool] | None:
    """(outputs, deployed). Locally the process talks to the stack's emulators (dummy credentials)."""
    if args.stack_outputs:
        from mars.stacks import read_outputs_file  # one reader of every form of a stack's Outputs (or UsageError)

        return read_outputs_file(Path(args.stack_outputs)), True
    from mars import stacks
    from samlocal.stack import endpoint_variable

    state = stacks.find(args, "--stack-outputs FILE for a deployed stack", start="make up AUTH=1")
    if state is None:
        return None
    os.environ.update({"AWS_ENDPOINT_URL": state["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": state.get("region") or "us-east-1"})
    for service, url in state.get("service_endpoints", {}).items():
        os.environ[endpoint_variable(service)] = url
    return state["outputs"], False


def _register_in_usage_plan(outputs: dict[str, Any], key_id: str) -> None:
    """API Gateway gets the key's usage identifier, never the key: the REST API's authorizer checks
    the key and names this identifier (docs/SECURITY.md), so throttling stays per key."""
    import boto3

    apigw = boto3.client("apigateway")
    created = apigw.create_api_key(name=f"mars-{key_id}", value=_auth().usage_key_value(key_id), enabled=True,
                                   description="mars keys create: usage identifier of Mars key "
                                               f"{key_id} (not a credential; scopes in KeysTable)")
    apigw.create_usage_plan_key(usagePlanId=outputs["UsagePlanId"], keyId=created["id"], keyType="API_KEY")


def _disable_in_api_gateway(key_id: str) -> None:
    import boto3

    apigw = boto3.client("apigateway")
    for item in apigw.get_api_keys(nameQuery=f"mars-{key_id}").get("items", []):
        apigw.update_api_key(apiKey=item["id"], patchOperations=[{"op": "replace", "path": "/enabled",
                                                                   "value": "false"}])


def _api_keys(apigw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"includeValues": True, "nameQuery": "mars-", "limit": 500}
    while True:
        page = apigw.get_api_keys(**kwargs)
        out.extend(page.get("items", []))
        if not page.get("position"):
            return out
        kwargs["position"] = page["position"]


def _sync_api_gateway(outputs: dict[str, Any], keys: list[dict[str, Any]]) -> tuple[int, int]:
    """Makes API Gateway hold each key's usage identifier and nothing else: an API Gateway key of an
    older `mars keys create` holds the Mars key itself (plaintext) and is deleted; the identifier is
    registered in its place (disabled for a revoked key). Returns (created, deleted)."""
    import boto3

    apigw = boto3.client("apigateway")
    existing = _api_keys(apigw)
    created = deleted = 0
    for key in keys:
        want = _auth().usage_key_value(key["key_id"])
        mine = [k for k in existing if k.get("name") == f"mars-{key['key_id']}"]
        for old in mine:
            if old.get("value") != want:
                try:  # AWS drops a deleted key from its usage plans; said explicitly, for any emulator
                    apigw.delete_usage_plan_key(usagePlanId=outputs["UsagePlanId"], keyId=old["id"])
                except apigw.exceptions.NotFoundException:
                    pass
                apigw.delete_api_key(apiKey=old["id"])
                deleted += 1
        if not any(k.get("value") == want for k in mine):
            _register_in_usage_plan(outputs, key["key_id"])
            created += 1
            if key.get("revoked_at"):
                _disable_in_api_gateway(key["key_id"])
    return created, deleted


def cmd_keys(args: argparse.Namespace) -> int:
    from mars.stacks import UsageError

    try:
        found = _outputs(args)
    except UsageError as exc:  # an unreadable --stack-outputs file
        print(f"mars: {exc}", file=sys.stderr)
        return 2
    if found is None:  # stacks.find has said which stacks do run
        return 2
    outputs, deployed = found
    table = outputs.get("KeysTableName")
    if not table:
        print("mars: the stack has no KeysTableName output (an older template?)", file=sys.stderr)
        return 2
    auth = _auth()
    if args.keys == "create":
        try:
            key_id, key = auth.create_key(table, args.app or [], admin=args.admin, note=args.note or "")
        except ValueError as exc:
            print(f"mars: {exc}", file=sys.stderr)
            return 2
        if deployed and outputs.get("UsagePlanId"):
            _register_in_usage_plan(outputs, key_id)
        scope = "every app (admin)" if args.admin else ", ".join(sorted(set(args.app)))
        print(f"key {key_id} for {scope}; shown once, only its hash is stored:", file=sys.stderr)
        print(key)  # alone on the last line of stdout (DESIGN §3)
        return 0
    if args.keys == "sync":
        if not (deployed and outputs.get("UsagePlanId")):
            print("mars: keys sync is for a deployed stack: pass --stack-outputs FILE (with UsagePlanId)",
                  file=sys.stderr)
            return 2
        created, deleted = _sync_api_gateway(outputs, auth.list_keys(table))
        print(f"API Gateway keys: {created} usage identifier(s) registered, {deleted} key(s) holding a Mars key "
              "deleted", file=sys.stderr)
        return 0
    if args.keys == "list":
        keys = auth.list_keys(table)
        if args.json:
            print(json.dumps(keys))
            return 0
        rows = [("KEY ID", "APPS", "CREATED", "REVOKED", "NOTE")]
        rows += [(k["key_id"], "* (admin)" if k["admin"] else ",".join(k["apps"]), k["created_at"] or "",
                  k["revoked_at"] or "-", k["note"]) for k in keys]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        return 0
    if not auth.revoke_key(table, args.key_id):
        print(f"mars: no key with id {args.key_id!r} (`mars keys list` shows them)", file=sys.stderr)
        return 1
    if deployed:
        _disable_in_api_gateway(args.key_id)
    if outputs.get("ConnectionsTableName"):  # open websockets of the key: no more pushes from now on
        from mars_common import live

        sockets, subs = live.drop_key_subscriptions(outputs["ConnectionsTableName"], args.key_id)
        if sockets:
            print(f"removed {subs} subscription(s) of {sockets} open websocket(s) of key {args.key_id}", file=sys.stderr)
    print(f"key {args.key_id} revoked (it stops working within {int(auth.CACHE_SECONDS)} s)", file=sys.stderr)
    return 0


def register(sub: Any, stack_args: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="API keys scoped to apps: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="a new key for --app A [--app B …] (or --admin); printed once")
    create.add_argument("--app", action="append", help="an app the key may write and read (repeat for more)")
    create.add_argument("--admin", action="store_true", help="every app, and the admin routes")
    create.add_argument("--note", help="who or what the key is for")
    listing = keys_sub.add_parser("list", help="every key: id, apps, created, revoked (never the key)")
    listing.add_argument("--json", action="store_true")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    sync = keys_sub.add_parser("sync", help="deployed: API Gateway holds each key's usage identifier, never the key "
                                            "(run once after upgrading from a version that registered keys themselves)")
    for p in (create, listing, revoke, sync):
        stack_args(p)
        p.add_argument("--stack-outputs", help="a deployed stack's Outputs as JSON (default: the local stack)")
        p.set_defaults(func=cmd_keys)
