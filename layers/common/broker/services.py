"""The object graph of one container: built on first use from settings and boto3 clients,
then reused while the container is warm. Tests call reset() to rebuild it.

The connect flows (OAuth and API-key) and the Insightly proxy are imported by the factories
that build them: the functions that never use them do not load them in their cold start
(the proxy function imports the proxy in its handler module: every invocation uses it)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from broker.credentials.client_credentials import ClientCredentialSource
from broker.credentials.data_key_cache import DataKeyCache
from broker.credentials.insightly import InsightlyApi
from broker.credentials.provider import ProviderClient
from broker.credentials.tokens import TokenService
from broker.credentials.vault import TokenVault
from broker.platform import aws, observability
from broker.platform.config import settings
from broker.platform.lifecycle import LifecycleEvents
from broker.store.connections import ConnectionStore

if TYPE_CHECKING:
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


@lru_cache(maxsize=1)
def connection_listing():
    from broker.store.listing import ConnectionListing, cursor_key_from_secret

    cfg = settings()
    return ConnectionListing(_shared()["connections"], list_tag_key=cfg.list_tag_key,
                             cursor_key=cursor_key_from_secret(cfg.list_cursor_secret_arn, aws.get_secret),
                             reserve_percent=cfg.background_quota_reserve_percent)


def reset() -> None:
    if data_key_cache.cache_info().currsize:  # overwrite the keys, not only forget them
        data_key_cache().wipe()
    for cached in (settings, data_key_cache, _shared, connection_listing,
                   connect_flow, insightly_api, token_service, api_key_connect, insightly_proxy):
        cached.cache_clear()
    aws.reset()
    observability.reset()
