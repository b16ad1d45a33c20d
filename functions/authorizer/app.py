"""AuthorizerFunction: the REST API's Lambda authorizer (REQUEST type, identity: the x-api-key header).

It checks the Mars key (KeysTable, by its hash) and hands API Gateway the key's *usage identifier*
(`auth.usage_key_value`), the value of the API Gateway key `mars keys create --stack-outputs`
registered in the usage plan (the API's ApiKeySourceType is AUTHORIZER). So API Gateway throttles
each Mars key without ever storing the key itself; the function behind still checks the key's apps.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import auth
from mars_common import metrics as m
from mars_common.config import settings

logger = Logger(service="mars-authorizer")
metrics, tracer = m.for_service("mars-authorizer")


class UnauthorizedError(Exception):
    """API Gateway answers 401 when an authorizer raises exactly `Unauthorized`."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def _api_arn(method_arn: str) -> str:
    """Every method of the stage: API Gateway caches the answer per key (ReauthorizeEvery), for all routes."""
    arn, _, path = method_arn.partition("/")
    stage = path.split("/", 1)[0]
    return f"{arn}/{stage}/*"


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    key = headers.get(auth.HEADER)
    principal = auth.lookup(settings().keys_table, key) if key else None
    if principal is None:
        logger.info("key refused", extra={"method_arn": event.get("methodArn")})
        m.count_by(metrics, m.AUTHORIZER_DECISIONS, "decision", "deny")
        raise UnauthorizedError()
    m.count_by(metrics, m.AUTHORIZER_DECISIONS, "decision", "allow")
    return {
        "principalId": principal.key_id,
        "usageIdentifierKey": auth.usage_key_value(principal.key_id),
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": _api_arn(str(event.get("methodArn", "")))}]},
        "context": {"key_id": principal.key_id},
    }
