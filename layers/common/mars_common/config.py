"""Settings from the function's environment (template Globals): the only place names are read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Settings:
    events_queue_urls: tuple[str, ...]
    dead_letter_queue_url: str
    ingest_dead_letter_queue_url: str
    messages_table: str
    apps_table: str
    store_function: str
    retention_days: int
    allow_test_routes: bool
    stage: str
    connections_table: str = ""
    websocket_url: str = ""
    websocket_management_url: str = ""
    keys_table: str = ""
    auth_required: bool = True
    events_table: str = ""
    dashboard_url: str = ""  # the REST API's URL: the only Origin a browser may open the websocket from
    # alert destinations (mars_common.destinations / .delivery)
    destinations_table: str = ""
    destination_secrets_table: str = ""
    alert_delivery_queue_url: str = ""
    alert_delivery_dead_letter_queue_url: str = ""
    allow_loopback_destinations: bool = False
    delivery_retry_seconds: int = 86400
    delivery_backoff_seconds: int = 30
    alerts_table: str = ""  # AlertsTable: one record per (message, rule), mars_common.alerts
    funnel_table: str = ""  # FunnelTable: per app, day and step counters and sketches, mars_common.funnel
    # where failed alert notifications, live pushes, alert deliveries and trace exports end (ApiFunction only)
    failure_queue_urls: tuple[str, ...] = ()

    @property
    def dead_letter_queue_urls(self) -> tuple[str, ...]:
        """Every dead-letter queue Mars counts: the event queues' and the producers' (ingest) first, then
        the stream consumers' and the alert delivery's failure queues."""
        return tuple(u for u in (self.dead_letter_queue_url, self.ingest_dead_letter_queue_url,
                                 *self.failure_queue_urls) if u)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def auth_required(value: str | None) -> bool:
    """Fails closed: only an explicit `false` turns keys off (a missing or mistyped value keeps them on)."""
    return (value or "").strip().lower() != "false"


@lru_cache(maxsize=1)
def settings() -> Settings:
    env = os.environ
    urls = tuple(u for u in env.get("EVENTS_QUEUE_URLS", "").split(",") if u)
    return Settings(
        events_queue_urls=urls,
        dead_letter_queue_url=env.get("DEAD_LETTER_QUEUE_URL", ""),
        ingest_dead_letter_queue_url=env.get("INGEST_DEAD_LETTER_QUEUE_URL", ""),
        messages_table=env.get("MESSAGES_TABLE", ""),
        apps_table=env.get("APPS_TABLE", ""),
        store_function=env.get("STORE_FUNCTION_NAME", ""),
        retention_days=int(env.get("RETENTION_DAYS", "30")),
        allow_test_routes=_flag(env.get("ALLOW_TEST_ROUTES")),
        stage=env.get("STAGE", "dev"),
        connections_table=env.get("CONNECTIONS_TABLE", ""),
        websocket_url=env.get("WEBSOCKET_URL", ""),
        websocket_management_url=env.get("WEBSOCKET_MANAGEMENT_URL", ""),
        keys_table=env.get("KEYS_TABLE", ""),
        auth_required=auth_required(env.get("AUTH_REQUIRED")),
        events_table=env.get("EVENTS_TABLE", ""),
        dashboard_url=env.get("DASHBOARD_URL", ""),
        destinations_table=env.get("DESTINATIONS_TABLE", ""),
        destination_secrets_table=env.get("DESTINATION_SECRETS_TABLE", ""),
        alert_delivery_queue_url=env.get("ALERT_DELIVERY_QUEUE_URL", ""),
        alert_delivery_dead_letter_queue_url=env.get("ALERT_DELIVERY_DEAD_LETTER_QUEUE_URL", ""),
        allow_loopback_destinations=_flag(env.get("ALLOW_LOOPBACK_DESTINATIONS")),
        delivery_retry_seconds=int(env.get("DELIVERY_RETRY_SECONDS", "86400")),
        delivery_backoff_seconds=int(env.get("DELIVERY_BACKOFF_SECONDS", "30")),
        alerts_table=env.get("ALERTS_TABLE", ""),
        funnel_table=env.get("FUNNEL_TABLE", ""),
        failure_queue_urls=tuple(u for u in env.get("FAILURE_QUEUE_URLS", "").split(",") if u),
    )
