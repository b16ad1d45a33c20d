"""API Gateway REST API (proxy integration, payload v1) in front of the template's functions.

Each request becomes the event API Gateway would send: `resource` is the template's path pattern
(so frameworks like Chalice route exactly as deployed), path parameters are decoded, the stage is
in requestContext but not in the local URL (as behind a custom domain, `requestContext.path` is the
path without it).

What API Gateway enforces on the way back is enforced here too, so a function that works locally
works deployed: a proxy result whose `body` is not a string is a 502, the integration times out
after 29 s whatever the function's own Timeout, and base64 crosses the gateway only as the API's
`BinaryMediaTypes` say (the request's Content-Type; the response's first Accept type).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .httpserver import Handler, Server
from .invoker import FunctionPool, Invoker, InvokeResult
from .template import ACCOUNT_ID

log = logging.getLogger("samlocal.apigw")
# API Gateway's maximum integration timeout for REST APIs: the client gets a 504 then, even if the
# function (whose Timeout may be up to 15 min) is still running. A module constant so tests lower it.
INTEGRATION_TIMEOUT_SECONDS = 29.0
INTERNAL_ERROR = b'{"message": "Internal server error"}'
TIMED_OUT = b'{"message": "Endpoint request timed out"}'
_BREAKS = re.compile(r"[\r\n\0]")


@dataclass
class Route:
    path: str  # the template's pattern, e.g. /api/messages/{message_id}
    method: str  # upper case, or ANY
    function: str  # logical id
    regex: re.Pattern[str]
    params: tuple[str, ...] = ()  # the path parameters' names, in the order of the regex's groups

    @classmethod
    def make(cls, path: str, method: str, function: str) -> "Route":
        pattern = ""
        for part in re.split(r"(\{[^}]+\})", path):
            if part.startswith("{") and part.endswith("+}"):
                pattern += f"(?P<{_group(part[1:-2])}>.+)"
            elif part.startswith("{"):
                pattern += f"(?P<{_group(part[1:-1])}>[^/]+)"
            else:
                pattern += re.escape(part)
        return cls(path, method.upper(), function, re.compile(f"^{pattern}/?$" if path != "/" else "^/$"),
                   tuple(re.findall(r"\{([^}+]+)\+?\}", path)))

    def specificity(self) -> tuple[int, int, int]:
        literal = len([p for p in self.path.split("/") if p and not p.startswith("{")])
        greedy = 1 if "+}" in self.path else 0
        return (-greedy, literal, 0 if self.method == "ANY" else 1)


def _group(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)


def media_type(value: str | None) -> str:
    """`Image/PNG; q=0.9` → `image/png`: the part binary media types are matched against."""
    return (value or "").split(",")[0].split(";")[0].strip().lower()


def matches(media: str, patterns: tuple[str, ...]) -> bool:
    """Whether a media type is one of the API's binary media types (`image/*` and `*/*` wildcards)."""
    kind, _, sub = media.partition("/")
    for pattern in patterns:
        p_kind, _, p_sub = pattern.partition("/")
        if p_kind in ("*", kind) and p_sub in ("*", sub):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def resource_id(api_id: str, path: str) -> str:
    """A resource's id as API Gateway shapes it (10 lowercase alphanumerics are ids of APIs; resources
    get 6, e.g. `a1b2c3`): stable per API and path, and never the path itself. The root's is the API's
    RootResourceId, as `resources.py` gives it."""
    if path == "/":
        return api_id[:6]
    n = int.from_bytes(hashlib.sha256(f"{api_id} {path}".encode()).digest()[:8], "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(6):
        n, r = divmod(n, 36)
        out += digits[r]
    return out


@dataclass
class RestApi:
    logical_id: str
    api_id: str
    stage: str
    routes: list[Route]
    # BinaryMediaTypes of the API (and Globals.Api), `~1` read as `/` as SAM writes them, lower case
    binary_types: tuple[str, ...] = field(default_factory=tuple)
    account_id: str = ACCOUNT_ID  # the stack's, learned from its endpoint (requestContext.accountId)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            m = route.regex.match(path)
            if m and route.method in (method, "ANY"):
                return route, {n: unquote(v) for n, v in zip(route.params, m.groups())}
        return None


def _binary_types(stack: Any, props: dict[str, Any]) -> tuple[str, ...]:
    """SAM merges lists of Globals by prepending the global ones; `~1` stands for `/` in SAM's syntax."""
    declared = [*(stack.resolve(stack.globals("Api").get("BinaryMediaTypes")) or []),
                *(stack.resolve(props.get("BinaryMediaTypes")) or [])]
    return tuple(dict.fromkeys(str(t).replace("~1", "/").strip().lower() for t in declared))


def build_apis(stack: Any) -> list[RestApi]:
    """Every REST API of the template, with the routes its functions' Api events declare."""
    apis: dict[str, RestApi] = {}
    for lid, spec in stack.of_type("AWS::Serverless::Api").items():
        props = spec.get("Properties", {})
        apis[lid] = RestApi(lid, stack.ref(lid), str(stack.resolve(props.get("StageName", "Prod"))), [],
                            _binary_types(stack, props), stack.account_id)
    for fn_lid, fn in stack.of_type("AWS::Serverless::Function").items():
        for _name, event in fn.get("Properties", {}).get("Events", {}).items():
            if event.get("Type") != "Api":
                continue
            props = event.get("Properties", {})
            api_ref = props.get("RestApiId")
            api_lid = str(api_ref.get("Ref")) if isinstance(api_ref, dict) else "ServerlessRestApi"
            if api_lid not in apis:  # SAM's implicit API, stage Prod, shaped by Globals.Api
                apis[api_lid] = RestApi(api_lid, stack.ref(api_lid), "Prod", [], _binary_types(stack, {}),
                                        stack.account_id)
            apis[api_lid].routes.append(Route.make(str(props["Path"]), str(props["Method"]), fn_lid))
    for api in apis.values():
        api.routes.sort(key=lambda r: r.specificity(), reverse=True)
    return list(apis.values())


def proxy_event(api: RestApi, route: Route, params: dict[str, str], method: str, raw_path: str,
                headers: list[tuple[str, str]], body: bytes, source_ip: str, host: str) -> dict[str, Any]:
    split = urlsplit(raw_path)
    query = parse_qsl(split.query, keep_blank_values=True)
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for k, v in query:
        single[k] = v
        multi.setdefault(k, []).append(v)
    hdrs: dict[str, str] = {}
    mhdrs: dict[str, list[str]] = {}
    for k, v in headers:
        hdrs[k] = v
        mhdrs.setdefault(k, []).append(v)
    ctype = next((v for k, v in headers if k.lower() == "content-type"), None)
    # As API Gateway: base64 exactly when the Content-Type is one of the API's binary media types;
    # anything else reaches the function as text (bytes that are not UTF-8 are mangled there too).
    binary = bool(body) and matches(media_type(ctype), api.binary_types)
    text: str | None
    if not body:
        text = None
    elif binary:
        text = base64.b64encode(body).decode()
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("request body is not UTF-8 and its Content-Type is not one of the API's BinaryMediaTypes: "
                        "the function gets it mangled, as deployed", extra={"content_type": ctype, "path": raw_path,
                                                                             "binary_media_types": list(api.binary_types)})
            text = body.decode("utf-8", errors="replace")
    now = time.time()
    request_id = str(uuid.uuid4())
    path = unquote(split.path)
    return {
        "resource": route.path,
        "path": path,
        "httpMethod": method,
        "headers": hdrs or None,
        "multiValueHeaders": mhdrs or None,
        "queryStringParameters": single or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": params or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": resource_id(api.api_id, route.path), "resourcePath": route.path,
            "httpMethod": method,
            "extendedRequestId": request_id, "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            # The path as the client asked for it: on an execute-api host that starts with the stage, on a
            # custom domain (and locally, where URLs carry no stage) it does not. Apps derive their base
            # URL from the difference (the dashboard's <base href>).
            "path": path, "accountId": api.account_id, "protocol": "HTTP/1.1",
            "stage": api.stage, "domainPrefix": host.split(".")[0], "requestTimeEpoch": int(now * 1000),
            "requestId": request_id, "domainName": host, "apiId": api.api_id,
            "identity": {"sourceIp": source_ip, "userAgent": hdrs.get("User-Agent") or hdrs.get("user-agent"),
                         "apiKey": hdrs.get("x-api-key") or hdrs.get("X-Api-Key"), "cognitoIdentityPoolId": None,
                         "accountId": None, "caller": None, "user": None, "userArn": None, "accessKey": None},
        },
        "body": text,
        "isBase64Encoded": binary,
    }


def malformed(payload: Any) -> str | None:
    """Why API Gateway would refuse a proxy result ("Malformed Lambda proxy response"), or None."""
    if not isinstance(payload, dict):
        return f"the result is {type(payload).__name__}, not an object"
    status = payload.get("statusCode")
    if isinstance(status, bool) or not isinstance(status, (int, str)) or not str(status).isdigit():
        return f"statusCode is {status!r}, not an integer"
    if not 100 <= int(status) <= 599:
        return f"statusCode {status} is not an HTTP status"
    if payload.get("body") is not None and not isinstance(payload["body"], str):
        return f"body is {type(payload['body']).__name__}, not a string (serialise it, e.g. json.dumps)"
    for key in ("headers", "multiValueHeaders"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            return f"{key} is {type(payload[key]).__name__}, not an object"
    for key, values in (payload.get("multiValueHeaders") or {}).items():
        if not isinstance(values, list):
            return f"multiValueHeaders[{key!r}] is {type(values).__name__}, not a list"
    # A line break in a header would be a second header (or response) on the wire: never sent.
    for key, value in [*(payload.get("headers") or {}).items(),
                       *((k, v) for k, vs in (payload.get("multiValueHeaders") or {}).items() for v in vs)]:
        if _BREAKS.search(f"{key}{value}"):
            return f"header {key!r} holds a line break or NUL"
    return None


def invoke(pool: FunctionPool, event: dict[str, Any], source: str) -> InvokeResult | None:
    """The function's result, or None when API Gateway would have given up (after
    INTEGRATION_TIMEOUT_SECONDS). The invocation goes on, as in Lambda; its own line logs its end."""
    limit = INTEGRATION_TIMEOUT_SECONDS
    if pool.spec.timeout < limit:  # the function's own Timeout ends it first: no extra thread
        return pool.invoke(event, trigger="api", source=source, throttle=True)
    results: list[InvokeResult | BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            results.append(pool.invoke(event, trigger="api", source=source, throttle=True))
        except BaseException as exc:  # re-raised in the request's thread, as the direct call would
            results.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"apigw-invoke:{source}", daemon=True).start()
    if not done.wait(limit):
        return None
    if isinstance(results[0], BaseException):
        raise results[0]
    return results[0]


class RestHandler(Handler):
    def _handle(self) -> None:
        try:
            self._route()
        except Exception as exc:  # a gateway bug still answers, as API Gateway does, and says why in the log
            log.error("gateway failed to handle a request", exc_info=True,
                      extra={"method": self.command, "path": self.path, "error_type": type(exc).__name__})
            self.close_connection = True
            self.reply(500, b'{"message": "Internal server error"}')

    def _route(self) -> None:
        gateway: RestGateway = self.server.app
        api = gateway.api
        method = self.command
        path = urlsplit(self.path).path
        found = api.match(method, path)
        # The body is read only for a request that will be invoked: an unknown route or a stack still
        # starting is answered first (and the connection closed if a body is still on its way).
        if found is None:
            # API Gateway's answer for an unknown resource or method.
            self.reply(403, b'{"message":"Missing Authentication Token"}', [("x-amzn-ErrorType", "MissingAuthenticationTokenException")])
            return
        route, params = found
        pool = gateway.invoker.pools.get(route.function) if gateway.ready.is_set() else None
        if pool is None:
            # Still starting: API Gateway's answer while an integration cannot take requests yet.
            log.warning("request before the stack is ready", extra={"method": method, "path": path,
                                                                    "function": route.function})
            self.reply(503, b'{"message":"Service Unavailable"}',
                       [("x-amzn-ErrorType", "ServiceUnavailableException"), ("Retry-After", "1")])
            return
        body = self.read_body()
        event = proxy_event(api, route, params, method, self.path, list(self.headers.items()), body,
                            self.client_address[0], self.headers.get("Host", "localhost"))
        result = invoke(pool, event, f"{method} {route.path}")
        self._respond(api, route, result)

    def _respond(self, api: RestApi, route: Route, result: InvokeResult | None) -> None:
        """API Gateway's answer to the integration's: 504 past the timeout, 502 for a function error or
        a result API Gateway cannot map, each with an ERROR line that says which and why."""
        where: dict[str, Any] = {"function": route.function, "route": f"{self.command} {route.path}"}
        if result is None or result.error_type == "Sandbox.Timedout":
            limit = INTEGRATION_TIMEOUT_SECONDS if result is None else None
            log.error("integration timed out: 504", extra={**where, "integration_timeout_seconds": limit,
                                                          "request_id": result.request_id if result else None})
            self.reply(504, TIMED_OUT)
            return
        where["request_id"] = result.request_id
        if result.error_type == "TooManyRequestsException":  # Lambda refused the invoke: 500, not 502
            log.error("function throttled: 500", extra={**where, "error_type": result.error_type})
            self.reply(500, INTERNAL_ERROR)
            return
        if not result.ok:
            log.error("function error: 502", extra={**where, "error_type": result.error_type,
                                                    "error": (result.error or {}).get("errorMessage", "")[:500]})
            self.reply(502, INTERNAL_ERROR)
            return
        payload, problem = result.payload, malformed(result.payload)
        data = b""
        if problem is None and payload.get("isBase64Encoded") and payload.get("body"):
            # Decoded only when the request's first Accept type is a binary media type of the API, as
            # API Gateway decides; otherwise the client gets the base64 text, as deployed.
            if matches(media_type(self.headers.get("Accept")), api.binary_types):
                try:
                    data = base64.b64decode(payload["body"], validate=True)
                except ValueError:
                    problem = "isBase64Encoded is true but body is not base64"
            else:
                log.warning("base64 body sent undecoded: the request's Accept is not one of the API's "
                            "BinaryMediaTypes", extra={**where, "accept": self.headers.get("Accept"),
                                                       "binary_media_types": list(api.binary_types)})
                data = payload["body"].encode()
        elif problem is None:
            data = (payload.get("body") or "").encode("utf-8")
        if problem is not None:
            log.error("malformed Lambda proxy response: 502", extra={**where, "reason": problem})
            self.reply(502, INTERNAL_ERROR)
            return
        headers = [(k, str(v)) for k, v in (payload.get("headers") or {}).items()]
        for k, values in (payload.get("multiValueHeaders") or {}).items():
            headers += [(k, str(v)) for v in values if (k, str(v)) not in headers]
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        self.reply(int(payload["statusCode"]), data, headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle  # noqa: N815

    def __getattr__(self, name: str) -> Any:
        """Any other method (TRACE, QUERY, …) gets API Gateway's answer for an undeclared one, through
        the same routing (http.server would answer 501 in HTML)."""
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


@dataclass
class RestGateway:
    api: RestApi
    invoker: Invoker
    ready: threading.Event  # set once every function behind the API can be invoked


def serve(api: RestApi, invoker: Invoker, host: str, port: int, ready: threading.Event | None = None) -> Server:
    if ready is None:
        ready = threading.Event()
        ready.set()
    server = Server(host, port, RestHandler, RestGateway(api, invoker, ready))
    server.start(f"apigw:{api.logical_id}")
    return server
