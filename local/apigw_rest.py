"""API Gateway REST API (proxy integration, payload v1) in front of the template's functions.

Each request becomes the event API Gateway would send: `resource` is the template's path pattern
(so frameworks like Chalice route exactly as deployed), path parameters are decoded, the stage is
in requestContext but not in the local URL (as behind a custom domain, `requestContext.path` is the
path without it).
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .httpserver import Handler, Server
from .invoker import Invoker

log = logging.getLogger("local.apigw")
BINARY_TYPES = ("image/", "application/octet-stream", "application/pdf", "font/")


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


@dataclass
class RestApi:
    logical_id: str
    api_id: str
    stage: str
    routes: list[Route]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            m = route.regex.match(path)
            if m and route.method in (method, "ANY"):
                return route, {n: unquote(v) for n, v in zip(route.params, m.groups())}
        return None


def build_apis(stack: Any) -> list[RestApi]:
    """Every REST API of the template, with the routes its functions' Api events declare."""
    apis: dict[str, RestApi] = {}
    for lid, spec in stack.of_type("AWS::Serverless::Api").items():
        props = spec.get("Properties", {})
        apis[lid] = RestApi(lid, stack.ref(lid), str(stack.resolve(props.get("StageName", "Prod"))), [])
    for fn_lid, fn in stack.of_type("AWS::Serverless::Function").items():
        for _name, event in fn.get("Properties", {}).get("Events", {}).items():
            if event.get("Type") != "Api":
                continue
            props = event.get("Properties", {})
            api_ref = props.get("RestApiId")
            api_lid = api_ref.get("Ref") if isinstance(api_ref, dict) else "ServerlessRestApi"
            if api_lid not in apis:  # SAM's implicit API, stage Prod
                apis[api_lid] = RestApi(api_lid, stack.ref(api_lid), "Prod", [])
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
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
    binary = bool(body) and any(ctype.startswith(t) for t in BINARY_TYPES)
    text: str | None
    if not body:
        text = None
    elif binary:
        text = base64.b64encode(body).decode()
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, binary = base64.b64encode(body).decode(), True
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
            "resourceId": route.path, "resourcePath": route.path, "httpMethod": method,
            "extendedRequestId": request_id, "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            # The path as the client asked for it: on an execute-api host that starts with the stage, on a
            # custom domain (and locally, where URLs carry no stage) it does not. Apps derive their base
            # URL from the difference (the dashboard's <base href>).
            "path": path, "accountId": "123456789012", "protocol": "HTTP/1.1",
            "stage": api.stage, "domainPrefix": host.split(".")[0], "requestTimeEpoch": int(now * 1000),
            "requestId": request_id, "domainName": host, "apiId": api.api_id,
            "identity": {"sourceIp": source_ip, "userAgent": hdrs.get("User-Agent") or hdrs.get("user-agent"),
                         "apiKey": hdrs.get("x-api-key") or hdrs.get("X-Api-Key"), "cognitoIdentityPoolId": None,
                         "accountId": None, "caller": None, "user": None, "userArn": None, "accessKey": None},
        },
        "body": text,
        "isBase64Encoded": binary,
    }


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
        gateway: Gateway = self.server.app
        api = gateway.api
        method = self.command
        body = self.read_body()
        path = urlsplit(self.path).path
        found = api.match(method, path)
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
        event = proxy_event(api, route, params, method, self.path, list(self.headers.items()), body,
                            self.client_address[0], self.headers.get("Host", "localhost"))
        result = pool.invoke(event, trigger="api", source=f"{method} {route.path}")
        if not result.ok:
            if result.error_type == "Sandbox.Timedout":
                self.reply(504, b'{"message": "Endpoint request timed out"}')
            else:
                self.reply(502, b'{"message": "Internal server error"}')
            return
        self._respond(result.payload)

    def _respond(self, payload: Any) -> None:
        if not isinstance(payload, dict) or "statusCode" not in payload:
            self.reply(502, b'{"message": "Internal server error"}')
            return
        body = payload.get("body") or ""
        data = base64.b64decode(body) if payload.get("isBase64Encoded") else str(body).encode("utf-8")
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
class Gateway:
    api: RestApi
    invoker: Invoker
    ready: threading.Event  # set once every function behind the API can be invoked


def serve(api: RestApi, invoker: Invoker, host: str, port: int, ready: threading.Event | None = None) -> Server:
    if ready is None:
        ready = threading.Event()
        ready.set()
    server = Server(host, port, RestHandler, Gateway(api, invoker, ready))
    server.start(f"apigw:{api.logical_id}")
    return server
