"""Checks a request's AWS Signature Version 4 the way AWS's front door does, for the local endpoints
that AWS guards with IAM (the websocket API's `@connections`).

The canonical request, string to sign and signature are botocore's own (`SigV4Auth`, the code every
Python SDK call is signed with); this module only rebuilds the request the client signed and compares.
Answers are AWS's: 403 with `MissingAuthenticationTokenException`, `UnrecognizedClientException` or
`InvalidSignatureException` and AWS's message text.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SIGV4_TIMESTAMP, UNSIGNED_PAYLOAD, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

MAX_SKEW_SECONDS = 300  # AWS refuses a signature more than 5 minutes from its clock

_AUTH = re.compile(r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
                   r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*")


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, as AWS answers it."""
    error_type: str
    message: str
    status: int = 403


MISSING = Refusal("MissingAuthenticationTokenException", "Missing Authentication Token")
UNRECOGNIZED = Refusal("UnrecognizedClientException", "The security token included in the request is invalid.")
MISMATCH = Refusal("InvalidSignatureException",
                   "The request signature we calculated does not match the signature you provided. Check your AWS "
                   "Secret Access Key and signing method. Consult the service documentation for details.")


def _invalid(message: str) -> Refusal:
    return Refusal("InvalidSignatureException", message)


def verify(method: str, url: str, headers: Mapping[str, str], body: bytes, *, credentials: Credentials,
           service: str, region: str, now: datetime | None = None) -> Refusal | None:
    """None when `headers["Authorization"]` is a valid SigV4 signature of this request by `credentials`
    for `service` in `region`; else the refusal. `url` is the scheme, Host and the path as received
    (still percent-encoded: the client signed that form)."""
    lower = {k.lower(): v for k, v in headers.items()}
    match = _AUTH.fullmatch(lower.get("authorization", ""))
    if match is None:
        return MISSING if "authorization" not in lower else _invalid(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters (AWS4-HMAC-SHA256).")
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        return _invalid("Credential should be scoped to a valid region, like 'us-east-1'.")
    access_key, day, scope_region, scope_service = parts[:4]
    if access_key != credentials.access_key:
        return UNRECOGNIZED
    if credentials.token is not None and not hmac.compare_digest(lower.get("x-amz-security-token", ""),
                                                                 credentials.token):
        return UNRECOGNIZED
    if scope_service != service or scope_region != region:
        return _invalid(f"Credential should be scoped to correct service: '{service}' in region '{region}'.")
    amz_date = lower.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        return _invalid("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    if amz_date[:8] != day:
        return _invalid("Credential should be scoped to a valid date.")
    if abs(((now or datetime.now(UTC)) - signed_at).total_seconds()) > MAX_SKEW_SECONDS:
        return _invalid(f"Signature expired: {amz_date} is now earlier or later than the server's time by more "
                        "than 5 minutes.")
    declared = lower.get("x-amz-content-sha256")
    if declared not in (None, UNSIGNED_PAYLOAD) and declared != hashlib.sha256(body).hexdigest():
        return _invalid("The provided 'x-amz-content-sha256' header does not match what was computed.")
    signed = match["signed"].split(";")
    if "host" not in signed or any(name not in lower for name in signed):
        return _invalid("'Host' or another header named in SignedHeaders is missing from the request.")
    # The request as the client signed it: the headers it named, the body it sent.
    request = AWSRequest(method=method, url=url, data=body, headers={name: lower[name] for name in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, service, region)
    to_sign = signer.headers_to_sign(request)
    if signer.signed_headers(to_sign) != match["signed"]:  # a header botocore never signs (e.g. user-agent)
        return MISMATCH
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return None if hmac.compare_digest(expected, match["signature"]) else MISMATCH
