"""API Gateway websocket APIs (`AWS::ApiGatewayV2::Api`, ProtocolType WEBSOCKET) and their
`@connections` management API, from the template.

- Connect, disconnect and every frame become the events API Gateway sends (`requestContext.routeKey`,
  `eventType`, `connectionId`, `domainName`, `stage` …), routed by the API's RouteSelectionExpression
  to the Lambda integration of the matching route, else `$default`, else API Gateway's
  `{"message": "Forbidden"}`.
- `$connect` decides: a non-2xx answer (or an error) rejects the handshake with that status; the
  headers of a 2xx answer (`Sec-WebSocket-Protocol` …) go out in the handshake response.
- The management API (`POST`/`GET`/`DELETE /@connections/{id}`) answers like AWS, `410 GoneException`
  for a closed or unknown connection included, so boto3's `apigatewaymanagementapi` works against it.
  It listens on ports of its own (the `websockets` server speaks only GET): plain HTTP, where the
  runtime rewrites the template's `https://{api}.execute-api…/{stage}` URLs to; and TLS (a local CA,
  see `tls.py`) at `requestContext.domainName`, so a function that builds its endpoint as
  `https://{domainName}/{stage}`, as AWS's samples do, reaches it. A call that fails logs an ERROR.
- Limits as in AWS: 32 KB per frame and 128 KB per message (a bigger client frame or message closes
  the socket with 1009, bigger posts get 413), outgoing messages sent in frames of at most 32 KB,
  10 minutes idle and 2 hours per connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from socket import SHUT_RDWR
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from botocore.credentials import Credentials
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import sigv4
from .httpserver import Handler, Server
from .invoker import FunctionPool, Invoker
from .lambdas import FUNCTION_TYPES

log = logging.getLogger("samlocal.websocket")
MAX_MESSAGE_BYTES = 128 * 1024
MAX_FRAME_BYTES = 32 * 1024  # a client sending a longer message must fragment it, as for API Gateway
FRAME_CHARS = 8 * 1024  # ≤ 32 KB per frame even if every character takes 4 bytes in UTF-8
IDLE_TIMEOUT_SECONDS = 600
MAX_CONNECTION_SECONDS = 7200
# Headers of a $connect answer that the handshake owns (the rest, e.g. Sec-WebSocket-Protocol, go out)
_HANDSHAKE_HEADERS = {"connection", "upgrade", "sec-websocket-accept", "sec-websocket-extensions",
                      "content-length", "transfer-encoding", "date", "server"}


@dataclass
class WsRoute:
    key: str
    function: str  # logical id of the integration's function
    two_way: bool = False  # has a RouteResponse: the function's body goes back to the client


@dataclass
class WebSocketApi:
    logical_id: str
    api_id: str
    stage: str
    selection_path: list[str]  # $request.body.action → ["action"]
    routes: dict[str, WsRoute] = field(default_factory=dict)

    def route_key(self, body: str) -> str | None:
        """The route a frame selects: the selection expression's value if a route has that key,
        else $default (None when the API has no $default)."""
        try:
            value: Any = json.loads(body)
            for part in self.selection_path:
                value = value.get(part) if isinstance(value, dict) else None
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            value = None
        if isinstance(value, str) and value in self.routes and not value.startswith("$"):
            return value
        return "$default" if "$default" in self.routes else None


def _selection_path(expression: str) -> list[str]:
    m = re.fullmatch(r"\$\{?request\.body\.([A-Za-z0-9_.]+)\}?", expression.strip())
    if not m:
        raise ValueError(f"unsupported RouteSelectionExpression {expression!r} (use $request.body.<field>)")
    return m.group(1).split(".")


def build_apis(stack: Any) -> list[WebSocketApi]:
    """Every websocket API in the template with its routes, integrations and stage."""
    apis: dict[str, WebSocketApi] = {}
    for lid, spec in stack.of_type("AWS::ApiGatewayV2::Api").items():
        props = spec.get("Properties", {})
        if str(props.get("ProtocolType", "")).upper() != "WEBSOCKET":
            continue
        apis[stack.ref(lid)] = WebSocketApi(lid, stack.ref(lid), "$default",
                                            _selection_path(str(props.get("RouteSelectionExpression", ""))))
    for spec in stack.of_type("AWS::ApiGatewayV2::Stage").values():
        props = stack.resolve(spec.get("Properties", {}))
        if props.get("ApiId") in apis:
            apis[props["ApiId"]].stage = str(props.get("StageName"))
    integrations = {stack.ref(lid): stack.resolve(spec.get("Properties", {}))
                    for lid, spec in stack.of_type("AWS::ApiGatewayV2::Integration").items()}
    functions = {stack.get_att(lid, "Arn"): lid for lid in stack.of_type(*FUNCTION_TYPES)}
    two_way = {stack.resolve(spec.get("Properties", {})).get("RouteId")
               for spec in stack.of_type("AWS::ApiGatewayV2::RouteResponse").values()}
    for lid, spec in stack.of_type("AWS::ApiGatewayV2::Route").items():
        props = stack.resolve(spec.get("Properties", {}))
        api = apis.get(props.get("ApiId"))
        if api is None:
            continue
        target = str(props.get("Target", ""))
        integration = integrations.get(target.removeprefix("integrations/"))
        if integration is None:
            raise ValueError(f"{lid}: target {target!r} is not an integration of this template")
        uri = str(integration.get("IntegrationUri", ""))
        m = re.search(r"functions/(arn:[^/]+)/invocations", uri) or re.fullmatch(r"(arn:aws:lambda:[^/]+)", uri)
        function = functions.get(m.group(1)) if m else None
        if function is None:
            raise ValueError(f"{lid}: integration {uri!r} is not a Lambda function of this template")
        key = str(props["RouteKey"])
        api.routes[key] = WsRoute(key, function, stack.ref(lid) in two_way)
    return list(apis.values())


def connection_id() -> str:
    """Shaped like API Gateway's: 16 base64 characters."""
    return base64.b64encode(os.urandom(10)).decode()[:15] + "="


def _http_time(epoch: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch))


@dataclass
class Connection:
    id: str
    socket: ServerConnection
    connected_at: float
    source_ip: str
    user_agent: str
    headers: list[tuple[str, str]]
    last_active: float = field(default_factory=time.time)


class WebSocketGateway:
    """One websocket API served on one port, in its own asyncio loop thread."""

    def __init__(self, api: WebSocketApi, invoker: Invoker, host: str, port: int, *, credentials: Credentials,
                 region: str, idle_timeout: float = IDLE_TIMEOUT_SECONDS,
                 max_duration: float = MAX_CONNECTION_SECONDS) -> None:
        self.api, self.invoker, self.host = api, invoker, host
        # Who may call @connections: the credentials the runtime gives its functions (SigV4-checked)
        self.credentials, self.region = credentials, region
        self.requested_port = port
        self.idle_timeout, self.max_duration = idle_timeout, max_duration
        self.connections: dict[str, Connection] = {}
        # id(socket) → connection id, handshake request, headers of the $connect answer
        self._pending: dict[int, tuple[str, Request, list[tuple[str, str]]]] = {}
        # `host:port` of the TLS management endpoint: requestContext.domainName (else the Host header)
        self.domain_name: str | None = None
        self.loop = asyncio.new_event_loop()
        self._server: WsServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"websocket:{api.logical_id}", daemon=True)
        self.port = 0
        # Handshakes get 503 until every function behind the API can be invoked (set by the stack).
        self.ready = threading.Event()
        self.ready.set()

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self) -> WsServer:
        return await serve(self._handle, self.host, self.requested_port, process_request=self._on_handshake,
                           process_response=self._on_handshake_response,
                           max_size=(MAX_MESSAGE_BYTES, MAX_FRAME_BYTES), ping_interval=None, compression=None)

    def stop(self) -> None:
        if self._server is not None:
            async def close() -> None:
                assert self._server is not None
                self._server.close(close_connections=True)
                await asyncio.wait_for(self._server.wait_closed(), 5)
            try:
                asyncio.run_coroutine_threadsafe(close(), self.loop).result(8)
            except Exception as exc:  # stopping: nothing left to save
                log.warning("websocket gateway did not close cleanly", extra={"error": str(exc)})
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # --- events -----------------------------------------------------------------------------------
    def _context(self, route: str, event_type: str, conn_id: str, connected_at: float, source_ip: str,
                 user_agent: str | None, host: str) -> dict[str, Any]:
        now = time.time()
        request_id = str(uuid.uuid4())
        return {"routeKey": route, "eventType": event_type, "extendedRequestId": request_id,
                "requestTime": _http_time(now), "messageDirection": "IN", "stage": self.api.stage,
                "connectedAt": int(connected_at * 1000), "requestTimeEpoch": int(now * 1000),
                "identity": {"sourceIp": source_ip, **({"userAgent": user_agent} if user_agent else {})},
                "requestId": request_id, "domainName": self.domain_name or host, "connectionId": conn_id,
                "apiId": self.api.api_id}

    @staticmethod
    def _headers(headers: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for k, v in headers:
            single[k] = v
            multi.setdefault(k, []).append(v)
        return single, multi

    async def _invoke(self, route: str, event: dict[str, Any]) -> Any:
        pool: FunctionPool = self.invoker.pools[self.api.routes[route].function]
        # throttle: past a reserved concurrency the invoke fails at once (API Gateway's internal error), as
        # deployed, instead of waiting for an environment
        return await asyncio.to_thread(pool.invoke, event, trigger="websocket", source=f"{self.api.logical_id} {route}",
                                       throttle=True)

    async def _on_handshake(self, socket: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        if not self.ready.is_set():
            log.warning("websocket handshake before the stack is ready", extra={"api": self.api.logical_id})
            response = socket.respond(HTTPStatus.SERVICE_UNAVAILABLE, '{"message":"Service Unavailable"}\n')
            response.headers["Retry-After"] = "1"
            return response
        if split.path.rstrip("/") not in ("", f"/{self.api.stage}"):
            return socket.respond(HTTPStatus.FORBIDDEN, '{"message":"Forbidden"}\n')
        conn_id = connection_id()
        headers = list(request.headers.raw_items())
        host = request.headers.get("Host", f"{self.host}:{self.port}")
        source_ip = str(socket.remote_address[0]) if socket.remote_address else "127.0.0.1"
        self._pending[id(socket)] = (conn_id, request, [])
        if "$connect" not in self.api.routes:
            return None
        single, multi = self._headers(headers)
        query = parse_qsl(split.query, keep_blank_values=True)
        q_single, q_multi = self._headers(query)
        event: dict[str, Any] = {
            "headers": single, "multiValueHeaders": multi,
            **({"queryStringParameters": q_single, "multiValueQueryStringParameters": q_multi} if query else {}),
            "requestContext": self._context("$connect", "CONNECT", conn_id, time.time(), source_ip,
                                            request.headers.get("User-Agent"), host),
            "isBase64Encoded": False,
        }
        result = await self._invoke("$connect", event)
        status = int(result.payload.get("statusCode", 200)) if result.ok and isinstance(result.payload, dict) else 500
        if not 200 <= status < 300:
            self._pending.pop(id(socket), None)
            log.info("connection rejected by $connect", extra={"connection_id": conn_id, "status": status})
            try:
                http_status = HTTPStatus(status)
            except ValueError:
                http_status = HTTPStatus.FORBIDDEN
            return socket.respond(http_status, '{"message":"Forbidden"}\n' if status < 500 else
                                  '{"message":"Internal server error"}\n')
        self._pending[id(socket)] = (conn_id, request, self._answer_headers(result.payload))
        return None

    @staticmethod
    def _answer_headers(payload: dict[str, Any]) -> list[tuple[str, str]]:
        headers = [(str(k), str(v)) for k, v in (payload.get("headers") or {}).items()]
        for k, values in (payload.get("multiValueHeaders") or {}).items():
            headers += [(str(k), str(v)) for v in values if (str(k), str(v)) not in headers]
        return [(k, v) for k, v in headers if k.lower() not in _HANDSHAKE_HEADERS]

    def _on_handshake_response(self, socket: ServerConnection, request: Request, response: Response) -> None:
        """The $connect answer's headers (a chosen subprotocol …) join the 101, as API Gateway sends them."""
        pending = self._pending.get(id(socket))
        if pending is None or response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            return
        for name, value in pending[2]:
            if name in response.headers:
                del response.headers[name]
            response.headers[name] = value

    async def _handle(self, socket: ServerConnection) -> None:
        conn_id, request, _ = self._pending.pop(id(socket))
        host = request.headers.get("Host", f"{self.host}:{self.port}")
        conn = Connection(conn_id, socket, time.time(),
                          str(socket.remote_address[0]) if socket.remote_address else "127.0.0.1",
                          request.headers.get("User-Agent", ""), list(request.headers.raw_items()))
        self.connections[conn_id] = conn
        watchdog = asyncio.create_task(self._watchdog(conn))
        try:
            async for message in socket:
                conn.last_active = time.time()
                await self._on_message(conn, message, host)
        except ConnectionClosed:
            pass
        finally:
            watchdog.cancel()
            self.connections.pop(conn_id, None)
            await self._on_disconnect(conn, host)

    async def _on_message(self, conn: Connection, message: str | bytes, host: str) -> None:
        binary = isinstance(message, bytes)
        body = base64.b64encode(message).decode() if isinstance(message, bytes) else message
        route = "$default" if binary and "$default" in self.api.routes else (
            None if binary else self.api.route_key(str(message)))
        context = self._context(route or "$default", "MESSAGE", conn.id, conn.connected_at, conn.source_ip,
                                conn.user_agent, host)
        context["messageId"] = base64.b64encode(os.urandom(10)).decode()[:15] + "="
        if route is None:
            await self._send(conn, json.dumps({"message": "Forbidden", "connectionId": conn.id,
                                               "requestId": context["requestId"]}))
            return
        result = await self._invoke(route, {"requestContext": context, "body": body, "isBase64Encoded": binary})
        if not result.ok:
            await self._send(conn, json.dumps({"message": "Internal server error", "connectionId": conn.id,
                                               "requestId": context["requestId"]}))
        elif self.api.routes[route].two_way and isinstance(result.payload, dict) and result.payload.get("body"):
            await self._send(conn, str(result.payload["body"]))

    async def _on_disconnect(self, conn: Connection, host: str) -> None:
        if "$disconnect" not in self.api.routes:
            return
        single, multi = self._headers(conn.headers)
        context = self._context("$disconnect", "DISCONNECT", conn.id, conn.connected_at, conn.source_ip,
                                conn.user_agent, host)
        code = conn.socket.close_code if conn.socket.close_code is not None else 1006
        context.update({"disconnectStatusCode": code, "disconnectReason": conn.socket.close_reason or ""})
        try:
            await self._invoke("$disconnect", {"headers": single, "multiValueHeaders": multi,
                                               "requestContext": context, "isBase64Encoded": False})
        except Exception as exc:  # the runtime is stopping
            log.warning("$disconnect not delivered", extra={"connection_id": conn.id, "error": str(exc)})

    async def _watchdog(self, conn: Connection) -> None:
        while True:
            now = time.time()
            idle_left = conn.last_active + self.idle_timeout - now
            life_left = conn.connected_at + self.max_duration - now
            if idle_left <= 0 or life_left <= 0:
                await conn.socket.close(1001, "Going away")
                return
            await asyncio.sleep(min(idle_left, life_left) + 0.01)

    @staticmethod
    async def _send(conn: Connection, text: str) -> None:
        if len(text) <= FRAME_CHARS:
            await conn.socket.send(text)
        else:  # one message, fragmented into frames of at most 32 KB, as API Gateway does
            await conn.socket.send([text[i:i + FRAME_CHARS] for i in range(0, len(text), FRAME_CHARS)])

    # --- @connections (called from the management server's threads) -------------------------------
    def post(self, conn_id: str, data: bytes) -> int:
        conn = self.connections.get(conn_id)
        if conn is None:
            return 410
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        try:
            coro = self._send(conn, text) if text is not None else conn.socket.send(data)
            asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)
        except (ConnectionClosed, OSError):
            return 410
        conn.last_active = time.time()
        return 200

    def describe(self, conn_id: str) -> dict[str, Any] | None:
        conn = self.connections.get(conn_id)
        if conn is None:
            return None
        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        # the wire names of GetConnection (rest-json: lower camel case)
        return {"connectedAt": iso(conn.connected_at), "lastActiveAt": iso(conn.last_active),
                "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent}}

    def close(self, conn_id: str) -> bool:
        conn = self.connections.get(conn_id)
        if conn is None:
            return False
        asyncio.run_coroutine_threadsafe(conn.socket.close(1000, "Closed by the server"), self.loop).result(10)
        return True


class ManagementHandler(Handler):
    """`/@connections/{id}`, with or without the stage prefix of the deployed URL."""

    def _target(self) -> str | None:
        gateway: WebSocketGateway = self.server.app
        path = urlsplit(self.path).path
        m = re.fullmatch(rf"(?:/{re.escape(gateway.api.stage)})?/@connections/([^/]+)", path)
        return unquote(m.group(1)) if m else None

    def _error(self, status: int, kind: str, message: str | None = None) -> None:
        # Never silent: the function that called sees an exception, the runtime's log says which call failed.
        gateway: WebSocketGateway = self.server.app
        log.error("@connections call failed", extra={"api": gateway.api.logical_id, "method": self.command,
                                                     "path": self.path, "status": status, "error_type": kind,
                                                     "error": message})
        self.reply(status, json.dumps({"message": message}).encode(), [("x-amzn-ErrorType", kind)])

    def _refused(self, body: bytes = b"") -> bool:
        """AWS lets only IAM-signed calls (SigV4 for `execute-api`) manage connections: an unsigned
        one, e.g. from a web page, or one signed with other credentials than the functions' is
        answered 403 as AWS answers it, and logged."""
        gateway: WebSocketGateway = self.server.app
        scheme = "https" if isinstance(self.server, TlsServer) else "http"
        refusal = sigv4.verify(self.command, f"{scheme}://{self.headers.get('Host', '')}{self.path}",
                               dict(self.headers.items()), body, credentials=gateway.credentials,
                               service="execute-api", region=gateway.region)
        if refusal is not None:
            self._error(refusal.status, refusal.error_type, refusal.message)
        return refusal is not None

    def do_POST(self) -> None:  # noqa: N802
        gateway: WebSocketGateway = self.server.app
        if "Authorization" not in self.headers and self._refused():  # before reading a body
            return
        data = self.read_body()
        conn_id = self._target()
        if self._refused(data):
            return
        if conn_id is None:
            self._error(404, "NotFoundException", "unknown path")
        elif len(data) > MAX_MESSAGE_BYTES:
            self._error(413, "PayloadTooLargeException", f"Data must be at most {MAX_MESSAGE_BYTES} bytes")
        elif gateway.post(conn_id, data) == 410:
            self._error(410, "GoneException")
        else:
            self.reply(200, b"")

    def do_GET(self) -> None:  # noqa: N802
        gateway: WebSocketGateway = self.server.app
        if self._refused(self.read_body()):
            return
        conn_id = self._target()
        info = gateway.describe(conn_id) if conn_id else None
        if info is None:
            self._error(410 if conn_id else 404, "GoneException" if conn_id else "NotFoundException")
        else:
            self.reply(200, json.dumps(info).encode())

    def do_DELETE(self) -> None:  # noqa: N802
        gateway: WebSocketGateway = self.server.app
        if self._refused(self.read_body()):
            return
        conn_id = self._target()
        if conn_id is None:
            self._error(404, "NotFoundException", "unknown path")
        elif not gateway.close(conn_id):
            self._error(410, "GoneException")
        else:
            self.reply(204, b"")


class TlsServer(Server):
    """The management API over TLS; each connection's handshake runs in its own thread (not in the
    one that accepts), and one that fails is logged: a function that does not trust the local CA
    (no AWS_CA_BUNDLE) would otherwise fail with nothing in the runtime's log."""

    def __init__(self, host: str, port: int, handler: type[Handler], app: Any, context: ssl.SSLContext) -> None:
        super().__init__(host, port, handler, app)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.error("TLS handshake with the @connections endpoint failed (does the client trust the local "
                      "CA? functions get it as AWS_CA_BUNDLE)",
                      extra={"api": self.app.api.logical_id, "client": client_address[0], "error": str(exc)})
            return
        try:
            tls.settimeout(None)
            handler: Any = self.RequestHandlerClass  # typeshed wants socketserver's Self, which this is
            handler(tls, client_address, self)
        finally:
            try:
                tls.shutdown(SHUT_RDWR)
            except OSError:
                pass
            tls.close()


def serve_api(api: WebSocketApi, invoker: Invoker, host: str, port: int, management_port: int = 0,
              tls: ssl.SSLContext | None = None, ready: threading.Event | None = None, *,
              credentials: Credentials, region: str) -> tuple[WebSocketGateway, list[Server]]:
    """The gateway and its management servers: plain HTTP first, then (given a TLS context) the one
    at `requestContext.domainName`. Both take only calls signed with `credentials` (SigV4)."""
    gateway = WebSocketGateway(api, invoker, host, port, credentials=credentials, region=region)
    if ready is not None:
        gateway.ready = ready
    gateway.start()
    servers = [Server(host, management_port, ManagementHandler, gateway)]
    servers[0].start(f"connections:{api.logical_id}")
    if tls is not None:
        servers.append(TlsServer(host, 0, ManagementHandler, gateway, tls))
        servers[1].start(f"connections-tls:{api.logical_id}")
        # Where `https://{domainName}/{stage}` reaches the TLS server (an IPv6 literal needs brackets)
        gateway.domain_name = f"[{host}]:{servers[1].port}" if ":" in host else f"{host}:{servers[1].port}"
    return gateway, servers
