"""`mars` — run the local stack and talk to it.  `mars --help` lists every command."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from mars import stacks

# The runtime is imported inside the commands: worker processes re-import this module as their
# __main__, and a cold start should not pay for the template loader.

# Locally Mars's load-test route is on (DESIGN §2), webhook receivers may be on loopback and deliveries
# retry for minutes; everything else is the template's defaults.
# Auth is off unless asked for (`--auth`, `make up AUTH=1`): every local server binds loopback only.
LOCAL_PARAMETERS = {"AllowTestRoutes": "true", "Stage": "dev", "AuthRequired": "false",
                    # webhook receivers on loopback; retries over minutes, not a day (docs/DESTINATIONS.md)
                    "AllowLoopbackDestinations": "true", "DeliveryRetrySeconds": "300", "DeliveryBackoffSeconds": "2"}

log = logging.getLogger("mars")


def _overrides(items: list[str], declared: set[str], auth: bool = False) -> dict[str, str]:
    """The stack's parameter values: Mars's local defaults for the parameters the template declares
    (another SAM app gets none of them), `--auth`, then the user's own, which must be declared."""
    out = {k: v for k, v in LOCAL_PARAMETERS.items() if k in declared}
    if auth:
        if "AuthRequired" not in declared:
            raise SystemExit("mars: --auth needs a template with an AuthRequired parameter (Mars's template.yaml)")
        out["AuthRequired"] = "true"
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"mars: bad --parameter-overrides {item!r}: use Name=Value")
        out[key] = value
    return out


def cmd_up(args: argparse.Namespace) -> int:
    from samlocal import logs
    from samlocal.invoker import Fault
    from samlocal.stack import Config, LocalRuntime, embedded_services
    from samlocal.template import TemplateError, load

    logs.setup(args.log_level)
    if args.template is None:
        here = Path("template.yaml")
        args.template = str(here if here.exists() else Path(__file__).resolve().parent.parent / "template.yaml")
    try:
        declared = set(load(args.template).get("Parameters") or {})
    except (OSError, TemplateError, ValueError) as exc:
        print(f"mars: cannot read the template {args.template}: {exc}", file=sys.stderr)
        return 2
    faults = dict(Fault.parse(f) for f in args.fault)
    try:
        embedded = embedded_services(args.embedded or "")
    except ValueError as exc:
        print(f"mars: {exc}", file=sys.stderr)
        return 2
    if embedded and not args.endpoint:
        print("mars: --embedded names the services kept on the embedded emulator beside --endpoint URL; "
              "without --endpoint every service is embedded already", file=sys.stderr)
        return 2
    config = Config(template=Path(args.template), stack_name=args.stack_name, host=args.host,
                    api_port=args.api_port, ws_port=args.ws_port, emulator_port=args.emulator_port,
                    endpoint=args.endpoint, embedded=embedded,
                    parameter_overrides=_overrides(args.parameter_overrides, declared, args.auth),
                    state_dir=stacks.state_dir(args),
                    faults=faults, fault_seed=args.fault_seed, warm=args.warm, emulator_faults=args.emulator_fault)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalRuntime(config)
    shim = None
    try:
        # The gateways answer 503 until everything below listens: "up" means every server is.
        stack.start(open_gateways=False)
    except Exception as exc:  # start() has stopped what it started
        log.error("stack failed to start", extra={"error": str(exc), "error_type": type(exc).__name__})
        print(f"mars: the local stack did not start: {exc}", file=sys.stderr)
        return 1
    try:
        if args.grpc_port and "EventsQueueUrls" in stack.outputs():  # Mars's own template: its gRPC way in
            shim = _start_grpc_shim(args, stack)
            stack.add_outputs({"GrpcEndpoint": f"{args.host}:{args.grpc_port}"})
        stack.open_gateways()
    except Exception as exc:
        log.error("stack failed to start", extra={"error": str(exc), "error_type": type(exc).__name__})
        print(f"mars: the local stack did not start: {exc}", file=sys.stderr)
        if shim is not None:
            from samlocal.stack import terminate

            terminate(shim)
        stack.stop()
        return 1
    outputs = stack.outputs()
    first = outputs.get("ApiUrl") or next(iter(stack.api_urls.values()), None)
    print(f"{'Mars' if shim else 'The stack'} is up{f': API {first}' if first else ''}  "
          "(Ctrl-C stops it; `mars outputs` prints every output)", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        log.info("stopping")
        if shim is not None:
            from samlocal.stack import terminate

            terminate(shim)  # the shim drains its in-flight calls before the queues go away
        stack.stop()
    return 0


def _start_grpc_shim(args: argparse.Namespace, stack: Any) -> Any:
    """The shim is a container in AWS; locally the same entrypoint runs as a process."""
    import os
    import subprocess

    from samlocal.stack import wait_for_port

    outputs = stack.outputs()
    root = Path(__file__).resolve().parent.parent  # the checkout that holds grpc_shim/ and the layer
    from samlocal.stack import endpoint_variable

    env = {**os.environ, "PYTHONPATH": str(root), "EVENTS_QUEUE_URLS": outputs["EventsQueueUrls"],
           "KEYS_TABLE": outputs.get("KeysTableName", ""), "APPS_TABLE": outputs.get("AppsTableName", ""),
           "AUTH_REQUIRED": str(stack.stack.parameters.get("AuthRequired", "false")),
           **{endpoint_variable(svc): url for svc, url in stack.service_endpoints.items()},
           "AWS_ENDPOINT_URL": stack.endpoint, "AWS_REGION": stack.stack.region,
           "AWS_DEFAULT_REGION": stack.stack.region, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    env["METRICS_INTERVAL_SECONDS"] = "10"  # its EMF lines reach the stack's log within 10 s (AWS: a minute)
    process = subprocess.Popen([sys.executable, "-m", "grpc_shim", "--host", args.host, "--port", str(args.grpc_port),
                                "--parent-pid", str(os.getpid())],
                               env=env, cwd=root, start_new_session=True, stdout=subprocess.PIPE)
    from samlocal.logs import copy_lines

    # the shim is a container in AWS, its stdout in CloudWatch Logs; locally it joins the functions' in the stack's log
    threading.Thread(target=copy_lines, args=(process.stdout, stack.log_file), name="grpc-shim-stdout",
                     daemon=True).start()
    wait_for_port(args.host, args.grpc_port, 30)
    return process


def cmd_outputs(args: argparse.Namespace) -> int:
    outputs = stacks.outputs(args)
    if outputs is None:
        return 2
    print(json.dumps(outputs, indent=2))
    return 0


def cmd_stacks(args: argparse.Namespace) -> int:
    directory = stacks.state_dir(args)
    found = stacks.running(directory)
    if args.json:
        print(json.dumps([{"stack": s.get("stack"), "pid": s.get("pid"), "template": s.get("template"),
                           "apis": s.get("apis"), "state": str(directory / f"{s.get('stack')}.json")} for s in found]))
        return 0
    if not found:
        print(f"mars: no local stack is running (state in {directory}); start one with `make up`", file=sys.stderr)
        return 0
    rows = [("STACK", "PID", "API", "TEMPLATE")]
    rows += [(str(s.get("stack")), str(s.get("pid")), next(iter((s.get("apis") or {}).values()), "-"),
              str(s.get("template"))) for s in found]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def cmd_bench_grpc(args: argparse.Namespace) -> int:
    from mars import bench_grpc

    target = args.target or stacks.output(args, "GrpcEndpoint", "--target host:port")
    if not target:
        return 2
    figures = bench_grpc.report(target, args.count, args.concurrency)
    if args.json:
        print(json.dumps(figures))
    return 0 if set(figures["statuses"]) == {"OK"} else 1


def cmd_tail(args: argparse.Namespace) -> int:
    from mars import tail

    url = args.url or stacks.output(args, "WebSocketUrl", "--url ws://…")
    if not url:
        return 2
    # the HTTP API pages what a long timeline's frames leave out: the stack's, unless --url names another
    api_url = args.api_url or (None if args.url else stacks.output(args, "ApiUrl", "--api-url http://…"))
    try:
        return tail.run(url, args.app, args.message, as_json=args.json, api_key=args.api_key, api_url=api_url,
                        alerts_only=args.alerts)
    except KeyboardInterrupt:
        return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import requests

    if args.metrics or args.log:
        return _metrics_stats(args)
    state = None if args.url else stacks.find(args, "--url")
    if state is None and not args.url:
        return 2
    if state is not None and "EventsQueueUrls" not in state["outputs"]:
        stats = _queue_stats(state)  # another SAM app: its queues, straight from the emulator
    else:
        base = args.url or state["outputs"].get("ApiUrl")  # type: ignore[index]
        if not base:
            print(f"mars: the local stack {args.stack_name!r} has no ApiUrl output; pass --url", file=sys.stderr)
            return 2
        resp = requests.get(base.rstrip("/") + "/api/q/stats",
                            headers={"x-api-key": args.api_key} if args.api_key else {}, timeout=30)
        if resp.status_code != 200:
            print(f"mars: {resp.status_code} from /api/q/stats: {resp.text[:300]}"
                  + (" (pass --api-key)" if resp.status_code == 401 else ""), file=sys.stderr)
            return 1
        stats = resp.json()
    if args.json:
        print(json.dumps(stats))
        return 0
    rows = [("QUEUE", "VISIBLE", "IN FLIGHT", "OLDEST")]
    for kind in ("queues", "dead_letter"):
        for q in stats[kind]:
            age = q["oldest_age_seconds"]
            rows.append((q["name"], str(q["visible"]), str(q["in_flight"]), "-" if age is None else f"{age:.0f} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    dead = sum(q["visible"] + q["in_flight"] for q in stats["dead_letter"])
    if dead:
        print(f"warning: {dead} message(s) in dead-letter queues; see them with the AWS CLI, move them back with "
              "`mars redrive --dry-run` then `mars redrive`", file=sys.stderr)
    return 0


def _metrics_stats(args: argparse.Namespace) -> int:
    """The EMF lines of the running stack's log (or of --log FILE, e.g. a CloudWatch Logs export),
    summed per metric and dimension set."""
    from mars import emf

    if args.log:
        path = Path(args.log)
    else:
        state = stacks.find(args, "--log FILE", err=sys.stderr)
        if state is None:
            return 2
        if not state.get("log"):
            print(f"mars: the local stack {args.stack_name!r} records no log file (started by an older mars); "
                  "restart it, or pass --log FILE", file=sys.stderr)
            return 2
        path = Path(state["log"])
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            rows = emf.summarize(lines)
    except OSError as exc:
        print(f"mars: cannot read the log {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([s.as_dict() for s in rows]))
        return 0
    if not rows:
        print(f"mars: no metrics (EMF lines) in {path} yet: they appear once a function has run", file=sys.stderr)
        return 0
    for line in emf.table(rows):
        print(line)
    return 0


def _queue_stats(state: dict[str, Any]) -> dict[str, Any]:
    """Every queue of a running local stack, in /api/q/stats's shape: a queue that another queue's
    RedrivePolicy names is a dead-letter queue. SQS has no oldest-age attribute (AWS publishes it as a
    CloudWatch metric), so it is left out."""
    sqs = stacks.aws_client(state, "sqs")
    rows, dead_arns = [], set()
    for url in sorted((state.get("queues") or {}).values()):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        if attrs.get("RedrivePolicy"):
            dead_arns.add(json.loads(attrs["RedrivePolicy"]).get("deadLetterTargetArn"))
        rows.append((attrs.get("QueueArn"), {"name": url.rsplit("/", 1)[-1],
                                             "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
                                             "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                                             "oldest_age_seconds": None}))
    return {"queues": [row for arn, row in rows if arn not in dead_arns],
            "dead_letter": [row for arn, row in rows if arn in dead_arns]}


def cmd_send(args: argparse.Namespace) -> int:
    from mars.client import MarsClient, MarsError, MarsValidationError

    if args.file:
        raw = json.loads(Path(args.file).read_text() if args.file != "-" else sys.stdin.read())
        events = raw["events"] if isinstance(raw, dict) and "events" in raw else raw if isinstance(raw, list) else [raw]
    else:
        if not (args.app and args.message and args.event):
            print("mars: send needs --app, --message and --event (or --file events.json)", file=sys.stderr)
            return 2
        event: dict[str, Any] = {"app_id": args.app, "message_id": args.message, "event": args.event}
        if args.created_at:
            event["created_at"] = args.created_at
        if args.event_id:
            event["event_id"] = args.event_id
        if args.meta:
            event["meta"] = dict(item.partition("=")[::2] for item in args.meta)
        events = [event]
    state = None if args.url and args.transport in ("http", "grpc") else stacks.find(args, "--url")
    if state is None and not args.url:
        return 2
    outputs = state["outputs"] if state is not None else None
    if args.transport == "http":
        client = MarsClient.http(args.url or outputs["ApiUrl"], api_key=args.api_key)  # type: ignore[index]
    elif args.transport == "grpc":
        client = MarsClient.grpc(args.url or outputs["GrpcEndpoint"], api_key=args.api_key)  # type: ignore[index]
    else:
        if state is None:  # --url names an API or a gRPC target, not a topic or queue
            print(f"mars: --transport {args.transport} sends through the running stack's "
                  f"{'IngestTopicArn' if args.transport == 'sns' else 'IngestQueueUrl'}; --url is for http/grpc",
                  file=sys.stderr)
            return 2
        # the stack's recorded endpoints (embedded moto, LocalRuntime, or a mix with --embedded)
        client = (MarsClient.sns(state["outputs"]["IngestTopicArn"], stacks.aws_client(state, "sns"))
                  if args.transport == "sns"
                  else MarsClient.sqs(state["outputs"]["IngestQueueUrl"], stacks.aws_client(state, "sqs")))
    try:
        ids = client.send_many(events)
    except MarsValidationError as err:
        print(f"mars: not sent, the event is not valid: {err}", file=sys.stderr)
        return 1
    except MarsError as err:
        print(f"mars: not sent: {err}", file=sys.stderr)
        return 1
    for event_id in ids:
        print(event_id)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Every export page of an app to stdout (a progress line on stderr when it is a terminal)."""
    from mars.client import MarsClient, MarsError

    base = args.url or stacks.output(args, "ApiUrl", "--url http://…")
    if not base:
        return 2
    client = MarsClient.http(base, api_key=args.api_key)
    progress = sys.stderr.isatty()
    pages = lines = size = 0
    try:
        for body in client.iter_export(args.app, frm=args.frm, to=args.to, fmt=args.format, events=args.events):
            sys.stdout.write(body)
            pages, lines, size = pages + 1, lines + body.count("\n"), size + len(body.encode())
            if progress:
                sys.stderr.write(f"\r{_bar(pages)} {pages} page(s), {lines} line(s), {size / 1e6:.1f} MB")
                sys.stderr.flush()
        sys.stdout.flush()
    except MarsError as err:
        if progress:
            sys.stderr.write("\n")
        print(f"mars: export of {args.app!r} failed after {pages} page(s) ({lines} line(s) written): {err}",
              file=sys.stderr)
        return 1
    if progress:
        sys.stderr.write(f"\r{_bar(pages, done=True)} {pages} page(s), {lines} line(s), {size / 1e6:.1f} MB\n")
    return 0


def _bar(pages: int, *, done: bool = False) -> str:
    """The total is unknown until the last page (the cursor says only "more"): a moving bar, full at the end."""
    width = 20
    if done:
        return "[" + "#" * width + "]"
    at = pages % width
    return "[" + "." * at + "#" + "." * (width - at - 1) + "]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mars", description="Mars: message lifecycle and acknowledgement tracing.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack_args = stacks.stack_args
    up = sub.add_parser("up", help="run a SAM template locally: Mars's template.yaml, or any app's (Ctrl-C stops it)")
    up.add_argument("--template", default=None,
                    help="the SAM template (default: ./template.yaml if there is one, else Mars's own)")
    up.add_argument("--host", default="127.0.0.1", help="bind address (loopback only by default)")
    up.add_argument("--api-port", type=int, default=4000)
    up.add_argument("--ws-port", type=int, default=4001, help="websocket API (its @connections endpoint takes a free port)")
    up.add_argument("--emulator-port", type=int, default=4566)
    up.add_argument("--grpc-port", type=int, default=4025, help="the gRPC shim's port (0: do not start it)")
    up.add_argument("--endpoint", metavar="URL",
                    help="use this AWS-compatible endpoint (e.g. LocalStack) instead of embedded moto")
    up.add_argument("--embedded", metavar="SERVICE[,SERVICE…]", default="",
                    help="with --endpoint: keep these services (boto3 names) on the embedded emulator, e.g. "
                         "dynamodb,dynamodbstreams for LocalRuntime, whose DynamoDB needs Java and a download")
    up.add_argument("--parameter-overrides", nargs="*", default=[], metavar="Name=Value")
    up.add_argument("--auth", action="store_true", help="require API keys (mars keys create), as deployed")
    up.add_argument("--fault", action="append", default=[], metavar="Function=rate[:before|after|kill]",
                    help="inject failures into a function's invocations (testing)")
    up.add_argument("--emulator-fault", action="append", default=[], metavar="Target=rate:ErrorCode",
                    help="the emulator fails that fraction of an AWS API's calls, e.g. "
                         "DynamoDB_20120810.UpdateItem=0.05:ProvisionedThroughputExceededException")
    up.add_argument("--fault-seed", type=int, help="seed for --fault, for reproducible runs")
    up.add_argument("--warm", type=int, default=1, help="execution environments started per function (default 1)")
    up.add_argument("--log-level", default="INFO")
    stack_args(up)
    up.set_defaults(func=cmd_up)

    bench = sub.add_parser("bench", help="benchmarks against the running stack (make bench runs them all)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    grpc_bench = bench_sub.add_parser("grpc", help="ghz-style load on the gRPC shim, beside a no-op gRPC server")
    grpc_bench.add_argument("--target", help="host:port (default: the running stack's GrpcEndpoint)")
    grpc_bench.add_argument("-n", "--count", type=int, default=5000)
    grpc_bench.add_argument("-c", "--concurrency", type=int, default=50)
    grpc_bench.add_argument("--json", action="store_true")
    stack_args(grpc_bench)
    grpc_bench.set_defaults(func=cmd_bench_grpc)

    tail_cmd = sub.add_parser("tail", help="live tail of an app's (or one message's) events over the websocket")
    tail_cmd.add_argument("--app", required=True, help="the app_id to follow")
    tail_cmd.add_argument("--message", help="follow only this message_id (prints its timeline so far first)")
    tail_cmd.add_argument("--url", help="websocket URL (default: the running stack's WebSocketUrl)")
    tail_cmd.add_argument("--api-url", help="the HTTP API's base URL, to read what a long timeline's frames leave out "
                                            "(default: the running stack's ApiUrl when --url is not given)")
    tail_cmd.add_argument("--api-key", help="API key, when the stack requires one")
    tail_cmd.add_argument("--json", action="store_true", help="one JSON object per event (or alert)")
    tail_cmd.add_argument("--alerts", action="store_true",
                          help="only alerts: a rule firing or resolving (docs/ALERTS.md), one line each")
    stack_args(tail_cmd)
    tail_cmd.set_defaults(func=cmd_tail)

    from mars import keys, redrive

    keys.register(sub, stack_args)
    redrive.register(sub, stack_args)

    stats = sub.add_parser("stats", help="depth, in-flight and oldest age of every queue and dead-letter queue; "
                                         "--metrics: the functions' metrics (EMF) summed from the stack's log")
    stats.add_argument("--url", help="the API's base URL (default: the running stack's ApiUrl)")
    stats.add_argument("--api-key")
    stats.add_argument("--metrics", action="store_true",
                       help="sum the EMF metric lines of the running stack's log, per metric and dimensions")
    stats.add_argument("--log", metavar="FILE", help="with --metrics: read this log instead (any file of EMF lines)")
    stats.add_argument("--json", action="store_true")
    stack_args(stats)
    stats.set_defaults(func=cmd_stats)

    send = sub.add_parser("send", help="report events (the event ids print one per line)")
    send.add_argument("--app")
    send.add_argument("--message")
    send.add_argument("--event")
    send.add_argument("--created-at", help="RFC 3339; default: now")
    send.add_argument("--event-id", help="your idempotency key (default: derived from the event)")
    send.add_argument("--meta", nargs="*", metavar="KEY=VALUE")
    send.add_argument("--file", help="JSON file of events (a list, or {\"events\": [...]}); - for stdin")
    send.add_argument("--transport", choices=["http", "grpc", "sns", "sqs"], default="http")
    send.add_argument("--url", help="API base URL (http) or host:port (grpc); default: the running stack")
    send.add_argument("--api-key")
    stack_args(send)
    send.set_defaults(func=cmd_send)

    export = sub.add_parser("export", help="an app's messages (or events) as NDJSON or CSV on stdout, every page "
                                           "(GET /api/apps/{app}/export); a progress line on stderr at a terminal")
    export.add_argument("--app", required=True)
    export.add_argument("--from", dest="frm", metavar="TIME", help="last update at or after (RFC 3339)")
    export.add_argument("--to", metavar="TIME", help="last update at or before (RFC 3339)")
    export.add_argument("--events", action="store_true", help="one line per event instead of per message")
    export.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    export.add_argument("--url", help="the API's base URL (default: the running stack's ApiUrl)")
    export.add_argument("--api-key")
    stack_args(export)
    export.set_defaults(func=cmd_export)

    running = sub.add_parser("stacks", help="list the local stacks running (any folder), with their template and API")
    running.add_argument("--json", action="store_true")
    running.add_argument("--state-dir", type=Path, default=None, help="where running stacks record their outputs")
    running.set_defaults(func=cmd_stacks)

    outputs = sub.add_parser("outputs", help="print the running local stack's Outputs as JSON")
    stack_args(outputs)
    outputs.set_defaults(func=cmd_outputs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
