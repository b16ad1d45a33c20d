"""The local stack: emulator, resources, functions and their triggers, from one template.

    stack = LocalRuntime(Config(template=Path("template.yaml")))
    stack.start(); ...; stack.stop()
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from . import apigw_rest, apigw_websocket, awscalls, lambda_api, tls
from .httpserver import Server
from .invoker import Fault, FunctionPool, Invoker
from .lambdas import FUNCTION_TYPES, build_spec
from .resources import provision
from .template import Stack, load
from .triggers import sns
from .triggers.base import EventSourceMapping, Trigger
from .triggers.dynamodb import StreamPoller, StreamWait
from .triggers.schedule import Scheduler
from .triggers.sns import SnsPoller
from .triggers.sqs import LongPoll, SqsPoller

log = logging.getLogger("samlocal.stack")


def function_credentials() -> Credentials:
    """What the runtime's functions sign with, as a Lambda execution role's session would be. The
    emulators accept any credentials (the key id "testing" keeps their default account); the secret is
    new for each runtime, so only its functions can sign a call to @connections, which checks SigV4."""
    return Credentials("testing", secrets.token_urlsafe(30), "testing")


_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE")


@dataclass
class Config:
    template: Path
    stack_name: str = "local"
    host: str = "127.0.0.1"
    api_port: int = 4000
    ws_port: int = 4001  # websocket APIs; their @connections endpoints take free ports
    emulator_port: int = 4566
    endpoint: str | None = None  # an already running emulator (LocalStack…): no embedded moto
    # With `endpoint`: services that stay on an embedded emulator anyway (one the endpoint cannot serve
    # offline, e.g. LocalStack's DynamoDB, which downloads Java at first use); boto3 service names.
    embedded: tuple[str, ...] = ()
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    state_dir: Path = Path(".mars-local")
    faults: dict[str, Fault] = field(default_factory=dict)
    fault_seed: int | None = None
    # Target=rate:ErrorCode: the emulators fail that fraction of those AWS calls (throttling, 5xx)
    emulator_faults: list[str] = field(default_factory=list)
    warm: int = 1
    patched_emulator: bool = True
    # Services served by a second emulator process (its own GIL, the machine's other core); empty: one process.
    split_services: tuple[str, ...] = ("dynamodb",)


def endpoint_variable(service: str) -> str:
    """boto3's service-specific endpoint variable: AWS_ENDPOINT_URL_ + the serviceId, upper snake case."""
    service_id = botocore.session.get_session().get_service_model(service).service_id
    return "AWS_ENDPOINT_URL_" + re.sub(r"[\s-]+", "_", str(service_id)).upper()


# Services that live together: a table's stream is served where the table is.
_COMPANIONS = {"dynamodb": ("dynamodbstreams",), "dynamodbstreams": ("dynamodb",)}


def embedded_services(names: Any) -> tuple[str, ...]:
    """`--embedded dynamodb,…` → boto3 service names, validated, with their companions (a table's stream
    lives where the table does); raises ValueError on a name boto3 does not know."""
    items = names.split(",") if isinstance(names, str) else list(names)
    known = set(botocore.session.get_session().get_available_services())
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in known:
            raise ValueError(f"--embedded: {name!r} is not an AWS service name boto3 knows (e.g. dynamodb, sqs, sns)")
        out += [name, *_COMPANIONS.get(name, ())]
    return tuple(dict.fromkeys(out))


def terminate(*processes: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL whatever has not exited within `timeout` seconds."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"emulator exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class LocalRuntime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.endpoint = config.endpoint or f"http://{config.host}:{config.emulator_port}"
        self.stack = Stack(load(config.template), root=config.template.resolve().parent, name=config.stack_name,
                           parameter_overrides=config.parameter_overrides)
        self.invoker = Invoker()
        self.servers: list[Server] = []
        self.triggers: list[Trigger] = []  # every trigger of every function, in start order
        self.mappings: list[EventSourceMapping] = []  # the SQS and stream pollers, for the Lambda API
        # function → environments its triggers hold at once (SQS poller slots + one per stream)
        self._trigger_slots: Counter[str] = Counter()
        self.control = lambda_api.LambdaControl(self.invoker, self.mappings)
        self.lambda_endpoint = ""
        # Outputs of services run beside the stack (what a deployed stack's other resources would give)
        self.extra_outputs: dict[str, Any] = {}
        self.api_urls: dict[str, str] = {}
        # websocket api id → (ws:// URL, @connections management base URL)
        self.websocket_urls: dict[str, tuple[str, str]] = {}
        self.ws_gateways: list[apigw_websocket.WebSocketGateway] = []
        # the local CA behind the websocket APIs' TLS management endpoints (None: no websocket API)
        self.ca: tls.LocalCa | None = None
        self.stack.url_rewriter = self.rewrite_url
        self._emulators: list[subprocess.Popen[bytes]] = []
        # Set once the functions behind the gateways exist; until then they answer 503 (Retry-After).
        self.ready = threading.Event()
        # service → endpoint, for services not served by `self.endpoint`
        self.service_endpoints: dict[str, str] = {}
        self.credentials = function_credentials()
        self._session: boto3.session.Session | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._clients_lock = threading.Lock()

    # --- clients ---------------------------------------------------------------------------------
    def client(self, service: str) -> Any:
        """The runtime's client of a service (one per service and endpoint, shared: boto3 clients are
        thread-safe). Making one costs ~0.1 s of CPU (the service model is loaded and parsed); a stack
        start asked for ~40 — a client per queue and table provisioned — which was most of its CPU."""
        endpoint = self.service_endpoints.get(service, self.endpoint)
        with self._clients_lock:
            made = self._clients.get((service, endpoint))
            if made is None:
                if self._session is None:
                    self._session = boto3.session.Session(
                        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing",
                        region_name=self.stack.region)
                made = self._clients[(service, endpoint)] = self._session.client(
                    service, endpoint_url=endpoint,  # type: ignore[call-overload]
                    config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=64))
            return made

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, open_gateways: bool = True) -> "LocalRuntime":
        """Starts everything; the API gateways answer 503 until `open_gateways()` (called here unless
        the caller starts more servers first: "up" means every server accepts connections)."""
        started = time.monotonic()
        try:
            # before the first client: a client's session copies botocore's handler list when it is made
            awscalls.install()
            self._start_emulator()
            provision(self.stack, self.client)
            awscalls.take()  # the counts start with the stack's work, not its provisioning
            lambda_server = lambda_api.serve(self.control, self.config.host, 0)
            self.servers.append(lambda_server)
            self.lambda_endpoint = f"http://{self.config.host}:{lambda_server.port}"
            self._start_apis()  # before the functions: their environment holds the APIs' local URLs
            self._start_functions(self.lambda_endpoint)
            self._start_triggers()
        except BaseException:
            self.stop()
            raise
        log.info("stack ready", extra={"stack": self.stack.name, "endpoint": self.endpoint, "service_endpoints": self.service_endpoints,
                 "account_id": self.stack.account_id,
                 "lambda_endpoint": self.lambda_endpoint,
                 "apis": self.api_urls,
                                       "functions": sorted(self.invoker.pools),
                                       "seconds": round(time.monotonic() - started, 2)})
        if open_gateways:
            self.open_gateways()
        return self

    def open_gateways(self) -> None:
        """Every function behind the gateways is ready: requests are served, and the state file that
        `mars outputs` reads is written (so a stack with outputs is one that answers)."""
        self.ready.set()
        self._write_state()
        log.info("gateways open", extra={"stack": self.stack.name, "apis": self.api_urls,
                                         "websockets": {k: v[0] for k, v in self.websocket_urls.items()}})

    def _caller_account(self) -> str:
        """The account the endpoint serves (STS GetCallerIdentity): moto answers 123456789012, LocalRuntime
        000000000000. Every ARN the runtime builds and `AWS::AccountId` use it, so a RedrivePolicy names a
        dead-letter queue that exists."""
        try:
            identity = self.client("sts").get_caller_identity()
        except ClientError as exc:  # an endpoint without STS (an SQS-only emulator…): queue ARNs are still its own
            log.warning("the endpoint has no STS GetCallerIdentity; the account is assumed",
                        extra={"endpoint": self.endpoint, "account_id": self.stack.account_id, "error": str(exc)})
            return self.stack.account_id
        headers = identity.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if "x-localstack" in headers and "dynamodb" not in self.service_endpoints and "dynamodb" not in self.config.embedded \
                and self.stack.of_type("AWS::DynamoDB::Table"):
            # LocalStack's DynamoDB fetches Java and DynamoDB Local at first use: offline, every call hangs, then fails
            log.warning("DynamoDB on LocalStack needs Java and DynamoDB Local downloaded at first use; offline, "
                        "creating the tables fails after minutes: pass --embedded dynamodb,dynamodbstreams",
                        extra={"endpoint": self.endpoint})
        return str(identity["Account"])

    def _start_emulator(self) -> None:
        if self.config.endpoint:
            self.stack.bind(account_id=self._caller_account())
            if self.config.embedded:
                self._start_embedded()
            return
        self._start_embedded()
        self.stack.bind(account_id=self._caller_account())

    def _start_embedded(self) -> None:
        """The embedded moto servers: alone, the primary serves everything and a second one the
        `split_services`; beside an `endpoint`, one serves the `embedded` services only."""
        beside = bool(self.config.endpoint)
        split = () if beside else self.config.split_services[:1]
        first = self.config.emulator_port
        if beside and urlsplit(self.endpoint).port == first:  # LocalStack on 4566 too: take another port
            first = free_port(self.config.host)
        ports = [first] + [free_port(self.config.host) for _ in split]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        if beside:  # one account on both sides: ARNs from the embedded emulator (stream ARNs…) match the endpoint's
            env["MOTO_ACCOUNT_ID"] = self.stack.account_id
        for port in ports:
            cmd = [sys.executable, "-m", "samlocal.emulator", "--host", self.config.host, "--port", str(port),
                   "--parent-pid", str(os.getpid())]
            if not self.config.patched_emulator:
                cmd.append("--no-patches")
            for fault in self.config.emulator_faults:
                cmd += ["--fault", fault]
            if self.config.fault_seed is not None:
                cmd += ["--fault-seed", str(self.config.fault_seed)]
            # Its own session: Ctrl-C stops the runtime, which stops its pollers before the emulator.
            self._emulators.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        for port, process in zip(ports, self._emulators):
            wait_for_port(self.config.host, port, 30, process)
        if beside:
            embedded = f"http://{self.config.host}:{ports[0]}"
            services = embedded_services(self.config.embedded)  # with companions, whoever built the Config
            for service in services:
                self.service_endpoints[service] = embedded
            log.info("embedded services", extra={"endpoint": embedded, "services": list(services),
                                                 "account_id": self.stack.account_id})
        elif len(ports) > 1:
            second = f"http://{self.config.host}:{ports[1]}"
            for service in self.config.split_services:
                self.service_endpoints[service] = second
                if service == "dynamodb":  # a table's stream lives where the table does
                    self.service_endpoints["dynamodbstreams"] = second

    def _base_env(self, lambda_endpoint: str) -> dict[str, str]:
        """What Lambda puts in every environment, plus the endpoints: the only local difference."""
        env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
        env.update({"AWS_ACCESS_KEY_ID": self.credentials.access_key,
                    "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
                    "AWS_SESSION_TOKEN": self.credentials.token or ""})
        env.update({"AWS_REGION": self.stack.region, "AWS_DEFAULT_REGION": self.stack.region,
                    "AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_LAMBDA": lambda_endpoint,
                    **{endpoint_variable(svc): url for svc, url in self.service_endpoints.items()},
                    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_EXECUTION_ENV": "AWS_Lambda_local",
                    "PYTHONUNBUFFERED": "1"})
        if self.ca is not None:  # boto3 in the function trusts the local CA (and the public roots)
            env["AWS_CA_BUNDLE"] = str(self.ca.bundle.resolve())
        return env

    def _start_functions(self, lambda_endpoint: str) -> None:
        base = self._base_env(lambda_endpoint)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.write_bytes(b"")
        for lid in self.stack.of_type(*FUNCTION_TYPES):
            spec = build_spec(self.stack, lid, base)
            spec.environment.update({"AWS_LAMBDA_FUNCTION_NAME": spec.name,
                                     "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                                     "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                                     "LAMBDA_TASK_ROOT": str(spec.code_dir), "_HANDLER": spec.handler,
                                     # what `sam local` sets: libraries that need AWS's own services
                                     # (Powertools' Tracer: the X-Ray daemon) turn themselves off
                                     "AWS_SAM_LOCAL": "true"})
            spec.log_file = str(self.log_file)
            fault = self.config.faults.get(lid) or self.config.faults.get(spec.name)
            self.invoker.add(FunctionPool(spec, fault, self.config.fault_seed))
        unknown = set(self.config.faults) - {a for p in self.invoker.pools.values() for a in (p.spec.logical_id, p.spec.name)}
        if unknown:
            raise ValueError(f"--fault names unknown function(s): {', '.join(sorted(unknown))}")
        for pool in self.invoker.pools.values():
            pool.warm(self.config.warm)

    def _start_apis(self) -> None:
        for i, api in enumerate(apigw_rest.build_apis(self.stack)):
            port = self.config.api_port + i if self.config.api_port else 0
            server = apigw_rest.serve(api, self.invoker, self.config.host, port, self.ready)
            self.servers.append(server)
            self.api_urls[api.api_id] = f"http://{self.config.host}:{server.port}/"
        ws_apis = apigw_websocket.build_apis(self.stack)
        if ws_apis:
            # Functions reach @connections at https://{requestContext.domainName}/{stage}: a TLS server
            # with a certificate of a CA made now, for loopback names only.
            self.ca = tls.make_ca(self.config.state_dir / f"{self.stack.name}-ca",
                                  tuple(dict.fromkeys([*tls.LOOPBACK_NAMES, self.config.host])))
        context = self.ca.server_context() if self.ca else None
        for i, ws_api in enumerate(ws_apis):
            port = self.config.ws_port + i if self.config.ws_port else 0
            gateway, management = apigw_websocket.serve_api(ws_api, self.invoker, self.config.host, port, tls=context,
                                                                ready=self.ready, credentials=self.credentials,
                                                                region=self.stack.region)
            self.ws_gateways.append(gateway)
            self.servers.extend(management)
            # the plain endpoint: where the template's deployed @connections URLs are rewritten to
            self.websocket_urls[ws_api.api_id] = (f"ws://{self.config.host}:{gateway.port}",
                                                  f"http://{self.config.host}:{management[0].port}")
            log.info("websocket api", extra={"api": ws_api.logical_id, "url": self.websocket_urls[ws_api.api_id][0],
                                             "connections_endpoint": self.websocket_urls[ws_api.api_id][1],
                                             "domain_name": gateway.domain_name,
                                             "ca_bundle": str(self.ca.bundle) if self.ca else None,
                                             "routes": sorted(ws_api.routes)})

    @property
    def pollers(self) -> list[SqsPoller]:
        return [t for t in self.triggers if isinstance(t, SqsPoller)]

    def _start_triggers(self) -> None:
        """Every function's triggers, each kind read from the template the same way
        (`Trigger.sources_for`); all sources are read (and checked) before any trigger starts."""
        sqs, streams = self.client("sqs"), self.client("dynamodbstreams")
        long_poll, stream_wait = self._long_poll(), self._stream_wait()
        planned: list[tuple[str, FunctionPool, type[Trigger], Any]] = []
        kinds: tuple[type[Trigger], ...] = (SqsPoller, SnsPoller, StreamPoller, Scheduler)
        for kind in kinds:
            for lid, pool in self.invoker.pools.items():
                for source in kind.sources_for(self.stack, lid, pool.spec.events):
                    if kind is SqsPoller:
                        self._check_visibility(sqs, lid, pool, source)
                    planned.append((lid, pool, kind, source))
        for lid, pool, kind, source in planned:
            trigger: Trigger
            if kind is SqsPoller:
                self._reserve(lid, pool, source.max_concurrency)
                trigger = SqsPoller(sqs, pool, source, self.stack.region, long_poll)
            elif kind is SnsPoller:
                trigger = SnsPoller(sqs, pool, sns.subscribe(self.client, source), long_poll=long_poll)
            elif kind is StreamPoller:
                # an environment per stream mapping for its batch in flight, beside the function's other triggers
                self._reserve(lid, pool, 1)
                trigger = StreamPoller(streams, pool, source, self.stack.region, self.client, stream_wait)
            else:
                trigger = Scheduler(pool, source, self.stack.region, self.stack.account_id)
            trigger.start()
            self.triggers.append(trigger)
            if isinstance(trigger, EventSourceMapping):
                self.mappings.append(trigger)
            log.info("schedule" if kind is Scheduler else "event source",
                     extra=trigger.log_fields(function=lid, **self._describe_source(source)))

    def _long_poll(self) -> LongPoll:
        """20 s receives when SQS is the embedded patched emulator (it ends a wait when a mapping is disabled
        or the stack stops), else 1 s."""
        if self.config.patched_emulator and ("sqs" in self.service_endpoints or not self.config.endpoint):
            return LongPoll.wakeable(self.service_endpoints.get("sqs", self.endpoint), self.stack.region)
        return LongPoll()

    def _stream_wait(self) -> StreamWait:
        """Idle stream readers wait on the embedded patched emulator serving DynamoDB Streams for the next
        record; elsewhere (LocalStack…) they poll 4 times a second."""
        if self.config.patched_emulator and ("dynamodbstreams" in self.service_endpoints or not self.config.endpoint):
            return StreamWait(self.service_endpoints.get("dynamodbstreams", self.endpoint))
        return StreamWait()

    @staticmethod
    def _describe_source(source: Any) -> dict[str, Any]:
        fields = ("batch_size", "report_failures", "starting_position", "stream_arn", "topic_arn", "expression", "enabled")
        return {f: getattr(source, f) for f in fields if hasattr(source, f)}

    def _reserve(self, lid: str, pool: FunctionPool, slots: int) -> None:
        self._trigger_slots[lid] += slots
        pool.ensure_concurrency(self._trigger_slots[lid])

    @staticmethod
    def _check_visibility(sqs: Any, lid: str, pool: FunctionPool, source: Any) -> None:
        visibility = int(sqs.get_queue_attributes(QueueUrl=source.queue_url, AttributeNames=["VisibilityTimeout"])
                         ["Attributes"].get("VisibilityTimeout", 30))
        if visibility < pool.spec.timeout:
            # Lambda refuses this mapping (CreateEventSourceMapping fails, and the stack with it):
            # a batch could come back to another poller while the function still runs.
            raise ValueError(
                f"SQS event source of {lid} ({pool.spec.name}) refused, as Lambda does: queue {source.name} "
                f"has a visibility timeout of {visibility} s, less than the function timeout of "
                f"{pool.spec.timeout:g} s. Raise the queue's VisibilityTimeout or lower the function's Timeout.")

    def stop(self) -> None:
        for trigger in self.triggers:
            trigger._stop.set()  # every trigger stops taking work at once; then each is joined
        for trigger in reversed(self.triggers):  # Trigger.stop ends its long poll before joining
            trigger.stop(timeout=5)
        for gateway in self.ws_gateways:
            gateway.stop()  # $disconnect runs for every open socket while the functions still live
        for server in self.servers:
            server.stop()
        self.invoker.close()
        terminate(*self._emulators)
        state = self.state_file
        if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
            state.unlink()

    # --- outputs ---------------------------------------------------------------------------------
    def rewrite_url(self, value: str) -> str:
        """Deployed API URLs → local ones: https://{id}.execute-api.{region}.amazonaws.com/{stage}/…
        of a REST API → its local server; of a websocket API, wss:// → the gateway and https:// (the
        @connections endpoint) → its management server."""
        def repl(m: re.Match[str]) -> str:
            scheme, api_id, rest = m.group(1), m.group(2), (m.group(4) or "").lstrip("/")
            if api_id in self.websocket_urls:
                ws, management = self.websocket_urls[api_id]
                return (ws if scheme == "wss" else management) + ("/" + rest if rest else "")
            base = self.api_urls.get(api_id)
            return base + rest if base else m.group(0)
        return re.sub(r"(https|wss)://([a-z0-9]+)\.execute-api\.[a-z0-9-]+\.amazonaws\.com(/[^/\s,]*)?(/[^\s,]*)?",
                      repl, value)

    def outputs(self) -> dict[str, Any]:
        return {**self.stack.output_values(), **self.extra_outputs}

    def add_outputs(self, values: dict[str, Any]) -> None:
        self.extra_outputs.update(values)
        if self.ready.is_set():
            self._write_state()

    @property
    def state_file(self) -> Path:
        return self.config.state_dir / f"{self.stack.name}.json"

    @property
    def log_file(self) -> Path:
        """Every function's stdout and stderr, line by line (what CloudWatch Logs keeps in AWS), begun
        anew by each start; the terminal gets them too."""
        return self.config.state_dir / f"{self.stack.name}.log"

    def _write_state(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"pid": os.getpid(), "stack": self.stack.name, "template": str(self.config.template.resolve()),
                 "endpoint": self.endpoint, "service_endpoints": self.service_endpoints,
                 "lambda_endpoint": self.lambda_endpoint,
                 "apis": self.api_urls, "websockets": self.websocket_urls, "outputs": self.outputs(),
                 "region": self.stack.region, "account_id": self.stack.account_id, "log": str(self.log_file.resolve()),
                 # every queue of the template, so `mars stats` can show any SAM app's queues
                 "queues": {lid: a["QueueUrl"] for lid, a in self.stack.physical.items() if "QueueUrl" in a}}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)
