"""Is a browser's `Origin` the dashboard's own? Browsers send `Origin` on every websocket handshake and
nothing else stops a page of another site from opening one (cookies are not needed, and with auth off
locally no key either): such a page could subscribe to every app."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_LOOPBACK_NAMES = {"localhost"}


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _site(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        return parts.scheme, parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed port or bracket
        return None


def is_own_origin(origin: str, own_url: str) -> bool:
    """`origin` is the scheme, host and port of `own_url` (the dashboard, i.e. the REST API's URL). A
    dashboard on a loopback address may be opened under any loopback name (`localhost`, `127.0.0.1`,
    `[::1]`) with the same port: a DNS-rebinding page sends its own name and is refused.
    `Origin: null` (sandboxed frames, file: pages) and non-http(s) origins are never the dashboard."""
    page, own = _site(origin), _site(own_url)
    if page is None or own is None:
        return False
    if page == own:
        return True
    return page[0] == own[0] and page[2] == own[2] and _loopback(page[1]) and _loopback(own[1])
