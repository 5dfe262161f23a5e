"""The refresh engine under concurrency, against the moto server and the stand-in (rotation on).

Each "container" is a TokenService of its own, with its own clients and its own in-process
single-flight, so only the DynamoDB lease and the version fence stand between them, as
between Lambda containers."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from broker import services
from broker.credentials.client_credentials import ClientCredentialSource
from broker.credentials.provider import ProviderClient
from broker.credentials.tokens import IN_PROGRESS, NOT_DUE, REFRESHED, TokenService
from broker.credentials.vault import TokenVault
from broker.platform.config import settings
from broker.platform.lifecycle import LifecycleEvents
from broker.store.connections import ConnectionStore
from tests.e2e.test_http import connect

pytestmark = pytest.mark.e2e


def container() -> TokenService:
    cfg = settings()
    client = boto3.session.Session().client
    return TokenService(cfg, connections=ConnectionStore(client("dynamodb"), cfg.connections_table,
                                                         shards=cfg.due_index_shards),
                        vault=TokenVault(client("kms"), cfg.token_key_id), provider=ProviderClient(cfg.provider),
                        credentials=ClientCredentialSource(cfg.client_secret_arn),
                        events=LifecycleEvents(client("events"), cfg.event_bus_name))


def make_due(local, connection_id: str, seconds_left: int = 30) -> None:
    now = int(time.time())
    local.session.client("dynamodb").update_item(
        TableName=local.env["CONNECTIONS_TABLE"], Key={"connection_id": {"S": connection_id}},
        UpdateExpression="SET expires_at = :e, refresh_due_at = :d",
        ExpressionAttributeValues={":e": {"N": str(now + seconds_left)}, ":d": {"N": str(now - 1)}})


def stored(connection_id: str):
    service = services.token_service()
    conn = service.connections.get(connection_id)
    return conn, service.vault.open(connection_id, conn.credentials)


def refresh_calls(local) -> int:
    return local.provider.calls["refresh_token"]


@pytest.fixture
def slow_provider(standin):
    standin("POST", "config", {"latency_ms": 300})  # so that the racers really overlap


def test_twenty_concurrent_token_calls_make_one_provider_refresh(local, backend, slow_provider):
    connect(local, backend, "busy-user")
    make_due(local, "busy-user")
    before, calls = stored("busy-user")[0], refresh_calls(local)
    containers = [container() for _ in range(20)]
    start = threading.Barrier(20)

    def token(service: TokenService) -> str:
        start.wait()
        return service.access_token("busy-user")["access_token"]

    with ThreadPoolExecutor(20) as pool:
        tokens = list(pool.map(token, containers))

    assert refresh_calls(local) == calls + 1
    after, sealed = stored("busy-user")
    assert set(tokens) == {sealed["access_token"]}  # every caller got the one new token
    assert after.version == before.version + 1
    assert sealed["refresh_token"] in local.provider.current_refresh_tokens


def test_twenty_concurrent_signed_token_calls_through_the_gateway(local, backend, slow_provider):
    connect(local, backend, "http-busy-user")
    make_due(local, "http-busy-user")
    before, calls = stored("http-busy-user")[0], refresh_calls(local)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: backend.token("http-busy-user"), range(20)))

    assert [a.status_code for a in answers] == [200] * 20
    assert len({a.json()["access_token"] for a in answers}) == 1
    assert refresh_calls(local) == calls + 1 and stored("http-busy-user")[0].version == before.version + 1


def test_two_workers_on_one_connection_keep_it_active_with_the_last_issued_token(local, backend, slow_provider):
    connect(local, backend, "raced-user")
    make_due(local, "raced-user")
    workers, start = [container(), container()], threading.Barrier(2)

    def work(service: TokenService) -> str:
        start.wait()
        return service.refresh_if_due("raced-user")

    calls = refresh_calls(local)
    with ThreadPoolExecutor(2) as pool:
        winner, loser = sorted(pool.map(work, workers), key=lambda outcome: outcome != REFRESHED)

    assert winner == REFRESHED and loser in (IN_PROGRESS, NOT_DUE)  # the loser found the lease, or the result
    assert refresh_calls(local) == calls + 1
    conn, sealed = stored("raced-user")
    assert conn.status == "active"
    assert sealed["refresh_token"] == local.provider.issued[-1]  # the last refresh token the provider issued
    assert sealed["refresh_token"] in local.provider.current_refresh_tokens


def test_a_worker_killed_mid_refresh_blocks_only_until_its_lease_expires(local, backend):
    connect(local, backend, "orphaned-user")
    make_due(local, "orphaned-user")
    service, calls = container(), refresh_calls(local)
    conn = service.connections.get("orphaned-user")
    # A worker took the lease and died before writing anything (a short lease, to keep the test short).
    assert service.connections.acquire_lease(conn, owner="killed-worker", now=int(time.time()), seconds=1)

    assert service.refresh_if_due("orphaned-user") == IN_PROGRESS
    assert refresh_calls(local) == calls
    time.sleep(2.1)  # the lease's expiry (whole seconds) has passed

    assert service.refresh_if_due("orphaned-user") == REFRESHED
    assert refresh_calls(local) == calls + 1 and stored("orphaned-user")[0].lease_owner is None


def test_invalid_client_after_a_refetched_secret_is_the_deployments_fault(local, backend, standin, saas_events):
    connect(local, backend, "misconfigured-user")
    calls = refresh_calls(local)
    standin("POST", "faults", {"fault": "invalid_client", "times": 1})

    answer = backend.call("POST", "/connections/misconfigured-user/refresh")

    assert answer.status_code == 503 and answer.json()["error"] == "client_rejected"
    assert refresh_calls(local) == calls + 1  # the refetched secret was the same one: no second try
    assert saas_events("misconfigured-user") == ["Connected"]  # no NeedsReauth: not this connection's fault
    conn, sealed = stored("misconfigured-user")
    assert conn.status == "active" and sealed["refresh_token"] in local.provider.current_refresh_tokens
    assert backend.call("POST", "/connections/misconfigured-user/refresh").status_code == 200  # fixed: works
