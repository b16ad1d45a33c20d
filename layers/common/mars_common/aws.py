"""boto3 clients, made once per execution environment and reused across invocations."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from functools import cache
from typing import Any

import boto3
import botocore
from botocore.config import Config

# A fixed User-Agent names Mars in CloudTrail and spares botocore rebuilding its default one from
# a dozen components twice per call (~80 µs of CPU per call, measured in docs/BENCHMARKS.md).
USER_AGENT = f"mars Boto3/{boto3.__version__} Botocore/{botocore.__version__} Python/{platform.python_version()}"
# Bounded retries keep a handler inside its timeout; the read timeout outlasts a synchronous Lambda invoke.
_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32,
                 connect_timeout=2, read_timeout=60, user_agent=USER_AGENT)


@cache
def client(service: str) -> Any:
    session: Any = boto3.session.Session()  # typed per literal service name; ours is a variable
    return session.client(service, config=_CONFIG)


@cache
def table(name: str) -> Any:
    return boto3.session.Session().resource("dynamodb", config=_CONFIG).Table(name)


@cache
def endpoint_client(service: str, endpoint_url: str) -> Any:
    """A client for an endpoint only known at run time (API Gateway's @connections)."""
    session: Any = boto3.session.Session()
    return session.client(service, endpoint_url=endpoint_url, config=_CONFIG)


def items(table_name: str, operation: str = "query", **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of a Query or Scan, page after page (DynamoDB returns at most 1 MB a call)."""
    call = getattr(table(table_name), operation)
    while True:
        resp = call(**kwargs)
        yield from resp.get("Items", [])
        if "LastEvaluatedKey" not in resp:
            return
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
