"""The embedded AWS emulator: moto server (``server``) with its fixes to moto (``patches``, one module
per patched service), the SQS CloudWatch metrics AWS publishes (``metrics``), the DynamoDB TTL sweeper
(``ttl``) and fault injection (``faults``). ``python -m samlocal.emulator`` runs it."""

from __future__ import annotations

from samlocal.emulator.server import Emulator, serve

__all__ = ["Emulator", "serve"]
