"""Alert destinations per app (issue 14 part 3): validation, the URL policy (SSRF), storage.

Two tables. DestinationsTable (`app_id`, `destination_id`) holds what may be listed: the type, the
format, an SNS topic ARN, and a webhook URL *redacted* to its origin and first path segment (Slack's
incoming-webhook URLs are credentials). DestinationSecretsTable (`destination_id`) holds the full URL
and the signing secret: ApiFunction may only put and delete there (never read), DeliveryFunction may
only read. So no API call, and no bug in the API's code, can return a secret after the 201 that made it.

The URL policy runs when a destination is created and again before every delivery (resolve, check every
address, then connect to the checked address: a DNS answer cannot change between check and connect).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from boto3.dynamodb.conditions import Key

from . import aws
from .events import FieldError, ValidationError, utc_now

TYPES = ("webhook", "sns")
FORMATS = ("standard", "slack")
MAX_URL = 2048
MAX_PER_APP = 20  # bounds one alert's fan-out (one SQS message per destination)
DESTINATION_ID_RE = re.compile(r"^dst_[0-9a-f]{16}$")
# Same-account topics (DeliveryFunction's role may publish to no other account's); FIFO topics allowed.
TOPIC_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
SECRET_PREFIX = "whsec_"

Resolver = Callable[[str, int], list[str]]


class UrlRefusedError(ValueError):
    """A destination URL the policy refuses (the message says why)."""


def new_destination_id() -> str:
    return f"dst_{secrets.token_hex(8)}"


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes (the spec asks 24-64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA), as text."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def address_allowed(address: str, loopback_only: bool) -> bool:
    """Deployed: public unicast only — private, loopback, link-local (cloud metadata 169.254.169.254),
    shared (100.64/10), reserved, multicast and unspecified never. The local stack: loopback only (it has
    no network, and a test must never reach past the machine)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if loopback_only:
        return ip.is_loopback
    return ip.is_global and not ip.is_multicast


def _is_loopback_name(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def check_url(url: Any, *, allow_loopback: bool, resolver: Resolver = resolve) -> list[str]:
    """The addresses a webhook URL may be delivered to; raises UrlRefusedError with the reason.

    Deployed: https only, to a host whose every address is public. Where `allow_loopback` (the local
    stack): loopback receivers only, http or https, and no name but localhost (nothing is resolved). No
    user:password@ (credentials belong in the secret), no fragment."""
    if not isinstance(url, str) or not url:
        raise UrlRefusedError("must be a non-empty string")
    if len(url) > MAX_URL or not url.isprintable() or any(c.isspace() for c in url):
        raise UrlRefusedError(f"must be at most {MAX_URL} printable characters without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefusedError(f"is not a valid URL: {exc}") from exc
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http"):
        raise UrlRefusedError("must be an https:// URL")
    if not host:
        raise UrlRefusedError("has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefusedError("must not carry user:password@ (Mars signs each delivery instead)")
    if parts.fragment:
        raise UrlRefusedError("must not have a #fragment")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None or _is_loopback_name(host):
        addresses = [str(literal)] if literal is not None else ["127.0.0.1"]
    elif allow_loopback:
        raise UrlRefusedError(f"host {host!r}: this stack delivers to loopback receivers only (127.0.0.1, localhost, "
                              "[::1]; parameter AllowLoopbackDestinations)")
    else:
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise UrlRefusedError(f"host {host!r} does not resolve ({exc})") from exc
        if not addresses:
            raise UrlRefusedError(f"host {host!r} does not resolve")
    refused = [a for a in addresses if not address_allowed(a, allow_loopback)]
    if refused:
        if allow_loopback:
            raise UrlRefusedError(f"host {host!r} is not a loopback address: this stack delivers to loopback receivers "
                                  "only (parameter AllowLoopbackDestinations)")
        raise UrlRefusedError(f"host {host!r} is (or resolves to) {', '.join(refused)}: private, loopback, link-local "
                              "and reserved addresses are refused (loopback only where the stack allows it: "
                              "parameter AllowLoopbackDestinations)")
    if parts.scheme == "http" and not allow_loopback:
        raise UrlRefusedError("must be an https:// URL")
    return addresses


def redact(url: str) -> str:
    """What a listing shows of a URL: scheme, host, port and the first path segment (Slack's
    hooks.slack.com/services/T…/B…/<token> is a credential; so may a query string be)."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    shown = "/" + segments[0] if segments else "/"
    more = len(segments) > 1 or bool(parts.query)
    return f"{parts.scheme}://{parts.netloc}{shown}{'/…' if more else ''}"


@dataclass(frozen=True)
class NewDestination:
    type: str
    url: str | None = None
    format: str | None = None
    topic_arn: str | None = None


def parse(body: Any, *, allow_loopback: bool, resolver: Resolver = resolve) -> NewDestination:
    """A create request's body, or ValidationError naming each bad field."""
    if not isinstance(body, dict):
        raise ValidationError([FieldError("body", "must be a JSON object")])
    kind = body.get("type")
    if kind not in TYPES:
        raise ValidationError([FieldError("type", "must be one of " + ", ".join(TYPES))])
    allowed = {"type", "url", "format"} if kind == "webhook" else {"type", "topic_arn"}
    errors = [FieldError(k, f"is not a known field of a {kind} destination (allowed: {', '.join(sorted(allowed))})")
              for k in sorted(set(body) - allowed)]
    if kind == "sns":
        arn = body.get("topic_arn")
        if not isinstance(arn, str) or not TOPIC_ARN_RE.fullmatch(arn):
            errors.append(FieldError("topic_arn", "must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)"))
        if errors:
            raise ValidationError(errors)
        return NewDestination(type="sns", topic_arn=str(arn))
    fmt = body.get("format", "standard")
    if fmt not in FORMATS:
        errors.append(FieldError("format", "must be one of " + ", ".join(FORMATS)))
    try:
        check_url(body.get("url"), allow_loopback=allow_loopback, resolver=resolver)
    except UrlRefusedError as exc:
        errors.append(FieldError("url", str(exc)))
    if errors:
        raise ValidationError(errors)
    return NewDestination(type="webhook", url=str(body["url"]), format=str(fmt))


class TooManyError(Exception):
    pass


def create(table: str, secrets_table: str, app_id: str, new: NewDestination) -> dict[str, Any]:
    """Stores a destination; returns its public view plus `secret` (a webhook's; None for SNS), the only
    time the secret leaves Mars. The secret row is written first: a destination is never listed (and
    so never delivered to) without its secret."""
    count = aws.table(table).query(KeyConditionExpression=Key("app_id").eq(app_id), Select="COUNT")["Count"]
    if count >= MAX_PER_APP:
        raise TooManyError(f"app {app_id!r} has {count} destinations; at most {MAX_PER_APP}")
    destination_id = new_destination_id()
    secret = new_secret() if new.type == "webhook" else None
    item: dict[str, Any] = {"app_id": app_id, "destination_id": destination_id, "type": new.type,
                            "created_at": utc_now()}
    if new.type == "webhook":
        assert new.url is not None and secret is not None
        aws.table(secrets_table).put_item(Item={"destination_id": destination_id, "app_id": app_id, "url": new.url,
                                                "secret": secret},
                                          ConditionExpression="attribute_not_exists(destination_id)")
        item.update(format=new.format, url=redact(new.url))
    else:
        item["topic_arn"] = new.topic_arn
    aws.table(table).put_item(Item=item, ConditionExpression="attribute_not_exists(destination_id)")
    return {**public(item), "secret": secret}


def public(item: dict[str, Any]) -> dict[str, Any]:
    """A destination as the API shows it: `id` and what is not a credential."""
    out = {"id": item["destination_id"], "type": item["type"], "created_at": item.get("created_at")}
    for key in ("url", "format", "topic_arn"):
        if key in item:
            out[key] = item[key]
    return out


def list_for(table: str, app_id: str) -> list[dict[str, Any]]:
    """An app's destinations (DestinationsTable items), oldest first."""
    items = list(aws.items(table, KeyConditionExpression=Key("app_id").eq(app_id)))
    return sorted(items, key=lambda i: (i.get("created_at") or "", i["destination_id"]))


def get(table: str, app_id: str, destination_id: str) -> dict[str, Any] | None:
    item = aws.table(table).get_item(Key={"app_id": app_id, "destination_id": destination_id}).get("Item")
    return dict(item) if item else None


def delete(table: str, secrets_table: str, app_id: str, destination_id: str) -> bool:
    """Removes a destination and its secret; False when the app has no such destination (its key is
    the app's: another app's id is simply not found). Deliveries already queued for it are dropped."""
    resp = aws.table(table).delete_item(Key={"app_id": app_id, "destination_id": destination_id},
                                        ReturnValues="ALL_OLD")
    if "Attributes" not in resp:
        return False
    aws.table(secrets_table).delete_item(Key={"destination_id": destination_id})
    return True


def secret_of(secrets_table: str, destination_id: str) -> dict[str, Any] | None:
    """The full URL and secret of a webhook (DeliveryFunction only: the API's role cannot read them)."""
    item = aws.table(secrets_table).get_item(Key={"destination_id": destination_id}, ConsistentRead=True).get("Item")
    return dict(item) if item else None
