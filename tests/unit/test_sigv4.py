"""samlocal.sigv4 against requests signed by botocore itself, the way every boto3 call is signed."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from samlocal import sigv4

CREDS = Credentials("testing", "s3cr3t", "token")
URL = "https://127.0.0.1:8443/dev/%40connections/abc%3D"


def signed(body: bytes = b'{"a": 1}', creds: Credentials = CREDS, service: str = "execute-api",
           url: str = URL) -> AWSRequest:
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(creds, service, "us-east-1").add_auth(request)
    return request


def check(request: AWSRequest, body: bytes | None = None, now: datetime | None = None,
          headers: dict[str, str] | None = None) -> sigv4.Refusal | None:
    sent = {"Host": "127.0.0.1:8443", **dict(request.headers.items()), **(headers or {})}
    return sigv4.verify("POST", URL, sent, request.body if body is None else body, credentials=CREDS,
                        service="execute-api", region="us-east-1", now=now)


def test_a_botocore_signature_passes() -> None:
    assert check(signed()) is None


def test_an_unsigned_request_is_missing_a_token() -> None:
    assert sigv4.verify("POST", URL, {"Host": "x"}, b"", credentials=CREDS, service="execute-api",
                        region="us-east-1") == sigv4.MISSING


def test_a_changed_body_path_or_header_breaks_the_signature() -> None:
    assert check(signed(), body=b'{"a": 2}') == sigv4.MISMATCH
    other_path = signed(url="https://127.0.0.1:8443/dev/%40connections/other")
    assert check(other_path) == sigv4.MISMATCH
    assert check(signed(), headers={"Host": "evil.example"}) == sigv4.MISMATCH


def test_another_secret_key_or_token_is_refused() -> None:
    assert check(signed(creds=Credentials("testing", "guess", "token"))) == sigv4.MISMATCH
    assert check(signed(creds=Credentials("AKIAOTHER", "s3cr3t", "token"))) == sigv4.UNRECOGNIZED
    assert check(signed(creds=Credentials("testing", "s3cr3t", "other"))) == sigv4.UNRECOGNIZED


def test_another_service_scope_or_a_stale_signature_is_refused() -> None:
    refusal = check(signed(service="sqs"))
    assert refusal is not None and refusal.error_type == "InvalidSignatureException"
    late = check(signed(), now=datetime.now(UTC) + timedelta(minutes=6))
    assert late is not None and "Signature expired" in late.message


def test_a_payload_hash_that_lies_is_refused() -> None:
    request = signed()
    refusal = check(request, headers={"X-Amz-Content-SHA256": "0" * 64})
    assert refusal is not None and "x-amz-content-sha256" in refusal.message
