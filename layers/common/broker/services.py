"""The object graph of one container: built on first use from settings and boto3 clients,
then reused while the container is warm. Tests call reset() to rebuild it.

Handlers reach the broker through here (and broker.http for the HTTP shape, broker.platform
for the deadline and observability), never a part directly: this module is the one place
that knows how the parts fit together.

The connect flows (OAuth and API-key), the Insightly proxy and the background work are
imported by the factories that use them: the functions that never use them do not load them
in their cold start, and a function whose every invocation uses one loads it in its Init
(the load_...() calls below)."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from broker.credentials.client_credentials import ClientCredentialSource
from broker.credentials.data_key_cache import DataKeyCache
from broker.credentials.insightly import InsightlyApi
from broker.credentials.provider import ProviderClient
from broker.credentials.tokens import TokenService
from broker.credentials.vault import TokenVault
from broker.platform import aws, deadline, observability
from broker.platform.config import settings
from broker.platform.lifecycle import LifecycleEvents
from broker.store import labels
from broker.store.connections import Connection, ConnectionStore

if TYPE_CHECKING:
    from broker.background.webhooks import WebhookSender
    from broker.connect.api_keys import ApiKeyConnect
    from broker.connect.oauth_flow import ConnectFlow
    from broker.proxy.call import InsightlyProxy


@lru_cache(maxsize=1)
def data_key_cache() -> DataKeyCache:
    """The data keys KMS opened for this container, reused while it is warm."""
    return DataKeyCache()


@lru_cache(maxsize=1)
def _shared():
    cfg = settings()
    return dict(
        connections=ConnectionStore(aws.client("dynamodb"), cfg.connections_table, shards=cfg.due_index_shards,
                                    list_tag_key=cfg.list_tag_key),
        vault=TokenVault(aws.client("kms"), cfg.token_key_id, cache=data_key_cache()),
        provider=ProviderClient(cfg.provider, timeout=(cfg.http_connect_timeout, cfg.http_read_timeout)),
        credentials=ClientCredentialSource(cfg.client_secret_arn),
        events=LifecycleEvents(aws.client("events"), cfg.event_bus_name),
    )


@lru_cache(maxsize=1)
def connect_flow() -> ConnectFlow:
    from broker.connect.flowstore import FlowStore
    from broker.connect.oauth_flow import ConnectFlow

    return ConnectFlow(settings(), flows=FlowStore(aws.client("dynamodb"), settings().flow_table), **_shared())


@lru_cache(maxsize=1)
def insightly_api() -> InsightlyApi:
    cfg = settings()
    return InsightlyApi(timeout=(cfg.http_connect_timeout, cfg.http_read_timeout))


@lru_cache(maxsize=1)
def token_service() -> TokenService:
    return TokenService(settings(), insightly=insightly_api(), **_shared())


@lru_cache(maxsize=1)
def api_key_connect() -> ApiKeyConnect:
    from broker.connect.api_keys import ApiKeyConnect

    return ApiKeyConnect(settings(), flow=connect_flow(), api=insightly_api())


@lru_cache(maxsize=1)
def insightly_proxy() -> InsightlyProxy:
    from broker.proxy.call import InsightlyProxy

    return InsightlyProxy(token_service(), quota_backoff_seconds=settings().quota_backoff_seconds)


# A function loads the part every one of its invocations uses in its Init (Lambda gives Init
# the whole CPU), not in its first call; the factories above import it lazily for the others.
def load_proxy() -> None:
    import broker.proxy.call  # noqa: F401


def load_connect_flow() -> None:
    import broker.connect.oauth_flow  # noqa: F401


def load_key_page() -> None:
    import broker.connect.api_keys  # noqa: F401


def load_scheduler() -> None:
    import broker.background.scheduler  # noqa: F401


def load_worker() -> None:
    import broker.background.worker  # noqa: F401


def load_webhooks() -> None:
    import broker.background.webhooks  # noqa: F401


@lru_cache(maxsize=1)
def connection_listing():
    from broker.store.listing import ConnectionListing, cursor_key_from_secret

    cfg = settings()
    return ConnectionListing(_shared()["connections"], list_tag_key=cfg.list_tag_key,
                             cursor_key=cursor_key_from_secret(cfg.list_cursor_secret_arn, aws.get_secret),
                             reserve_percent=cfg.background_quota_reserve_percent)


def update_connection(connection_id: str, body: Any) -> Connection:
    """PATCH /connections/{id}: new tags, metadata or quota group."""
    return labels.update_labels(token_service().connections, connection_id, body, now=int(time.time()))


def refresh_batch(event: dict[str, Any]) -> dict[str, Any]:
    """The refresh worker's SQS batch."""
    from broker.background import worker

    return worker.refresh_batch(event, token_service())


def scheduled_run(request_id: str) -> dict[str, Any]:
    """One EventBridge run, one at a time (a lease): enqueue every connection whose refresh is
    due, then revoke and delete the pending completions nobody completed in time."""
    from broker.background.scheduler import enqueue_due, one_run_at_a_time

    cfg, flow = settings(), connect_flow()

    def run() -> dict[str, int]:
        enqueued = enqueue_due(token_service().connections, aws.client("sqs"), cfg.refresh_queue_url,
                               shards=cfg.due_index_shards, now=int(time.time()), seconds_left=deadline.seconds_left)
        flow.sweep_expired_completions(seconds_left=deadline.seconds_left)
        return enqueued

    return one_run_at_a_time(flow.flows, request_id, run, now=int(time.time()), seconds_left=deadline.seconds_left)


WEBHOOK_SECRET_CACHE_SECONDS = 60  # a rotated signing secret signs within a minute


@lru_cache(maxsize=1)
def _webhook_session():
    import requests

    return requests.Session()  # kept warm: the receiver's connection is reused


def webhook_sender() -> WebhookSender:
    """The webhook function's sender, from its own environment (it serves no connection)."""
    from broker.background.webhooks import WebhookSender, WebhookSettings

    cfg = WebhookSettings.from_env()
    return WebhookSender(cfg, sqs=aws.client("sqs"), session=_webhook_session(), read_secret=lambda: aws.get_secret(
        cfg.secret_arn, transform="json", max_age=WEBHOOK_SECRET_CACHE_SECONDS))


def reset() -> None:
    if data_key_cache.cache_info().currsize:  # overwrite the keys, not only forget them
        data_key_cache().wipe()
    for cached in (settings, data_key_cache, _shared, connection_listing,
                   connect_flow, insightly_api, token_service, api_key_connect, insightly_proxy, _webhook_session):
        cached.cache_clear()
    aws.reset()
    observability.reset()
