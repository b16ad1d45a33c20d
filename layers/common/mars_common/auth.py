"""API keys scoped to apps (DESIGN §2 auth): create, look up, revoke.

A key is `mk_<key_id>_<secret>` (characters `[A-Za-z0-9_-]`; 8-character id, 256-bit secret).
KeysTable stores only `sha256(key)` — the secret is random and 256 bits long, so a fast hash is
enough (no password stretching needed: there is nothing to guess) — with the apps the key may write
and read (`admin`: every app), its id (to list and revoke without the secret) and a note.
The same check runs on every way in: HTTP (`x-api-key`), gRPC (`x-api-key` metadata), websocket
connect (`?api_key=`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Key

from . import aws
from .events import APP_ID_RE, utc_now

KEY_RE = re.compile(r"^mk_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{43})$")
BY_KEY_ID_INDEX = "ByKeyId"
# A revoked key stops working everywhere within this many seconds (each execution environment
# remembers a lookup that long, so a busy API does not read KeysTable on every request).
CACHE_SECONDS = 30.0
HEADER = "x-api-key"


@dataclass(frozen=True)
class Principal:
    key_id: str
    apps: frozenset[str]
    admin: bool = False

    def can(self, app_id: str) -> bool:
        return self.admin or app_id in self.apps

    def denied(self, app_ids: Iterable[str]) -> list[str]:
        """The apps of `app_ids` this key may not touch, sorted, each once."""
        return sorted({a for a in app_ids if not self.can(a)})


# Auth off (local default): every request acts as this.
ANONYMOUS_ADMIN = Principal(key_id="-", apps=frozenset(), admin=True)


class AuthError(Exception):
    """`status` 401 (no or unknown key) or 403 (a key, but not for that app)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key_id, key). Only the caller ever sees the key; the table keeps its hash."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    key_id = "".join(secrets.choice(alphabet) for _ in range(8))
    return key_id, f"mk_{key_id}_{secrets.token_urlsafe(32)}"


def usage_key_value(key_id: str) -> str:
    """The value of a key's API Gateway key (deployed, in the usage plan): derived from the key id, so
    it is no secret and API Gateway never holds the Mars key. It is not a credential: the REST API
    takes usage keys only from its authorizer (ApiKeySourceType AUTHORIZER), never from a client."""
    return f"mars-usage-key-{key_id}"


def create_key(table: str, apps: list[str], *, admin: bool = False, note: str = "") -> tuple[str, str]:
    """Stores a new key for `apps` (or every app with admin); returns (key_id, key)."""
    bad = [a for a in apps if not APP_ID_RE.fullmatch(a)]
    if bad:
        raise ValueError(f"not valid app ids: {', '.join(bad)}")
    if not apps and not admin:
        raise ValueError("a key needs at least one app (or admin)")
    key_id, key = new_key()
    aws.table(table).put_item(Item={"key_hash": key_hash(key), "key_id": key_id, "apps": sorted(set(apps)),
                                    "admin": admin, "note": note[:200], "created_at": utc_now()},
                              ConditionExpression="attribute_not_exists(key_hash)")
    return key_id, key


def list_keys(table: str) -> list[dict[str, Any]]:
    """Every key's id, apps, admin flag, note, created/revoked times (never the hash)."""
    out = [{"key_id": i["key_id"], "apps": list(i.get("apps", [])), "admin": bool(i.get("admin")),
            "note": i.get("note", ""), "created_at": i.get("created_at"), "revoked_at": i.get("revoked_at")}
           for i in aws.items(table, "scan")]
    return sorted(out, key=lambda k: (k["created_at"] or "", k["key_id"]))


def revoke_key(table: str, key_id: str) -> bool:
    """Marks the key revoked (kept, for the record); False when no key has that id."""
    resp = aws.table(table).query(IndexName=BY_KEY_ID_INDEX, KeyConditionExpression=Key("key_id").eq(key_id))
    items = resp.get("Items", [])
    for item in items:
        aws.table(table).update_item(Key={"key_hash": item["key_hash"]}, UpdateExpression="SET #r = :r",
                                     ExpressionAttributeNames={"#r": "revoked_at"},
                                     ExpressionAttributeValues={":r": utc_now()})
    return bool(items)


# Two caches: valid keys, and (apart, bounded) digests that are unknown or revoked. Random well-formed
# keys then cost one table read each at most once per window and can only evict each other, never
# the valid keys a busy API depends on.
MAX_CACHED_KEYS = 10_000
MAX_CACHED_MISSES = 10_000
_cache: dict[str, tuple[float, Principal]] = {}
_misses: dict[str, float] = {}
_cache_lock = threading.Lock()


def lookup(table: str, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None otherwise. Cached for CACHE_SECONDS."""
    if not KEY_RE.fullmatch(key):
        return None  # not even shaped like a key: no table read (cheap to refuse garbage)
    return lookup_hash(table, key_hash(key))


def lookup_hash(table: str, digest: str) -> Principal | None:
    """As `lookup`, by the key's SHA-256 (what a websocket connection keeps of its key)."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(digest)
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        missed = _misses.get(digest)
        if missed is not None and now - missed < CACHE_SECONDS:
            return None
    item = aws.table(table).get_item(Key={"key_hash": digest}).get("Item")
    principal = None
    if item and not item.get("revoked_at"):
        principal = Principal(key_id=str(item["key_id"]), apps=frozenset(item.get("apps", [])),
                              admin=bool(item.get("admin")))
    with _cache_lock:
        if principal is None:
            _cache.pop(digest, None)
            _remember(_misses, digest, now, MAX_CACHED_MISSES)
        else:
            _misses.pop(digest, None)
            _remember(_cache, digest, (now, principal), MAX_CACHED_KEYS)
    return principal


def _remember(cache: dict[str, Any], digest: str, value: Any, bound: int) -> None:
    """Inserts as the newest entry; a full cache drops its oldest (dicts keep insertion order). The caller holds the lock."""
    cache.pop(digest, None)
    while len(cache) >= bound:
        del cache[next(iter(cache))]
    cache[digest] = value


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _misses.clear()


def authenticate(table: str, required: bool, key: str | None) -> Principal:
    """The caller's principal; raises AuthError(401) when a key is required and missing or invalid.
    With auth off, a request acts as admin (local default: every server binds loopback only)."""
    if not required:
        return ANONYMOUS_ADMIN
    if not key:
        raise AuthError(401, "UNAUTHORIZED", f"an API key is required: send it in the {HEADER} header")
    principal = lookup(table, key)
    if principal is None:
        raise AuthError(401, "UNAUTHORIZED", "the API key is not valid (unknown or revoked)")
    return principal


def require_apps(principal: Principal, app_ids: Iterable[str]) -> None:
    denied = principal.denied(app_ids)
    if denied:
        raise AuthError(403, "FORBIDDEN", f"this API key may not use app(s) {', '.join(denied)}")
