"""OtlpFunction: `POST /v1/traces` (OTLP/HTTP) on MarsApi — spans in, Mars events out to the queues.

A plain handler of API Gateway's proxy event (not Chalice): the body is bytes (BinaryMediaTypes
bring protobuf and gzip base64-encoded) and every answer is OTLP's — an ExportTraceServiceResponse
on 200, a `google.rpc.Status` otherwise — in the request's content type (JSON when that is unknown).
The mapping is mars_common.otlp's, shared with the gRPC shim's TraceService.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from mars_common import auth, otlp
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import utc_now
from mars_common.queues import enqueue

logger = Logger(service="mars-otlp")
metrics, tracer = m.for_service("mars-otlp")
# HTTP status → the google.rpc code OTLP's Status body carries
CODES = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
         404: code_pb2.NOT_FOUND, 405: code_pb2.UNIMPLEMENTED, 413: code_pb2.RESOURCE_EXHAUSTED,
         415: code_pb2.INVALID_ARGUMENT, 503: code_pb2.UNAVAILABLE}


class OtlpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _answer(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A proxy result; protobuf travels base64-encoded (API Gateway decodes it for a client whose
    Accept is application/x-protobuf; an empty body needs nothing)."""
    binary = content_type == otlp.PROTOBUF and bool(body)
    return {"statusCode": status, "headers": {"Content-Type": content_type, **(headers or {})},
            "isBase64Encoded": binary, "body": base64.b64encode(body).decode() if binary else body.decode()}


def _status(err: OtlpError, content_type: str) -> dict[str, Any]:
    status = status_pb2.Status(code=CODES.get(err.status, code_pb2.UNKNOWN), message=err.message)
    if content_type == otlp.PROTOBUF:
        return _answer(err.status, status.SerializeToString(), content_type, err.headers)
    return _answer(err.status, json.dumps(json_format.MessageToDict(status)).encode(), otlp.JSON, err.headers)


def _headers(event: dict[str, Any]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}


def _body(event: dict[str, Any]) -> bytes:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise OtlpError(400, f"the body is not valid base64: {exc}") from exc
    return raw.encode("utf-8")


def _content_type(headers: dict[str, str]) -> str:
    media = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if media not in (otlp.PROTOBUF, otlp.JSON):
        raise OtlpError(415, f"send {otlp.PROTOBUF} or {otlp.JSON} (OTLP/HTTP), not {media or 'no Content-Type'}")
    return media


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    headers = _headers(event)
    reply_type = otlp.JSON
    try:
        if event.get("httpMethod", "POST") != "POST":
            raise OtlpError(405, "only POST is served on /v1/traces")
        reply_type = _content_type(headers)
        return _export(headers, _body(event), reply_type)
    except OtlpError as err:
        logger.warning("otlp request refused", extra={"status": err.status, "error": err.message[:300]})
        m.count_by(metrics, m.INGEST_REJECTED, "reason", f"HTTP_{err.status}")
        return _status(err, reply_type)
    except auth.AuthError as err:
        logger.warning("otlp request refused", extra={"status": err.status, "error": err.message})
        m.count_by(metrics, m.INGEST_REJECTED, "reason", f"HTTP_{err.status}")
        return _status(OtlpError(err.status, err.message), reply_type)
    except Exception:  # AWS unreachable (a key or a mapping not readable): retryable, and in the logs
        logger.exception("otlp request failed")
        return _status(OtlpError(503, "Mars could not process the request now; retry it (the request id is in "
                                      "the logs)", {"Retry-After": "1"}), reply_type)


def _export(headers: dict[str, str], raw: bytes, content_type: str) -> dict[str, Any]:
    cfg = settings()
    principal = auth.authenticate(cfg.keys_table, cfg.auth_required, headers.get(auth.HEADER))
    try:
        request = otlp.decode_request(otlp.inflate(raw, headers.get("content-encoding")), content_type)
    except otlp.TooLargeError as exc:
        raise OtlpError(413, str(exc)) from exc
    except otlp.DecodeError as exc:
        raise OtlpError(400, str(exc)) from exc
    result = otlp.to_events(request, principal, lambda app: otlp.cached_mapping(cfg.apps_table, app), utc_now())
    failures = enqueue(result.events, cfg.events_queue_urls) if result.events else []
    if failures:
        # Retryable for the exporter (OTLP: 503), and safe to retry: the event ids are the spans', so
        # what was enqueued is stored once whatever is sent again.
        logger.error("otlp enqueue failed", extra={**result.log_fields(), "failed": len(failures),
                                                   "first_error": failures[0].code})
        raise OtlpError(503, f"{len(failures)} of {len(result.events)} event(s) were not enqueued; retry the request",
                        {"Retry-After": "1"})
    m.count(metrics, m.EVENTS_ACCEPTED, len(result.events))
    for outcome, n in (("accepted", result.spans - result.skipped_spans - result.rejected_spans),
                       ("skipped", result.skipped_spans), ("rejected", result.rejected_spans)):
        if n:
            m.count_by(metrics, m.OTLP_SPANS, "outcome", outcome, n)
    if result.rejected_spans or result.skipped_spans:
        logger.info("otlp spans skipped or rejected", extra={**result.log_fields(),
                                                             "reasons": result.reasons})
    return _answer(200, otlp.encode_response(result, content_type), content_type)
