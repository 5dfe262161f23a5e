"""GET /connections/{id}/token, POST /connections/{id}/refresh, status and delete."""

import time

import boto3
import pytest

from broker import services
from broker.platform.errors import ProviderRejected
from broker.store.connections import ConnectionStore, StaleWrite
from tests.integration.test_connect_flow import assert_json_error, connection_item


def stored_token_set(stack, connection_id="user-1"):
    store = services.token_service()
    conn = store.connections.get(connection_id)
    return conn, store.vault.open(connection_id, conn.credentials)


def make_due(dynamodb, stack, connection_id="user-1", seconds_left=30):
    dynamodb.update_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": connection_id}},
                         UpdateExpression="SET expires_at = :e, refresh_due_at = :d",
                         ExpressionAttributeValues={":e": {"N": str(int(time.time()) + seconds_left)},
                                                    ":d": {"N": str(int(time.time()) - 1)}})


@pytest.fixture
def connected(broker):
    assert broker.connect("user-1").linked
    return broker


def test_a_fresh_token_is_handed_out_without_calling_the_provider(connected):
    answer = connected.call("GET", "/connections/user-1/token")

    assert answer.status == 200
    assert answer.json["token_type"] == "Bearer" and answer.json["connection_id"] == "user-1"
    assert connected.provider.access_tokens.get(answer.json["access_token"])  # a live provider token
    assert connected.provider.calls["refresh_token"] == 0
    assert answer.headers["Cache-Control"] == "no-store"


def test_a_token_expiring_within_the_skew_is_refreshed_first_and_the_rotation_stored(connected, dynamodb, stack):
    before, _ = stored_token_set(stack)
    make_due(dynamodb, stack, seconds_left=30)

    answer = connected.call("GET", "/connections/user-1/token")

    assert answer.status == 200 and connected.provider.calls["refresh_token"] == 1
    after, sealed = stored_token_set(stack)
    assert sealed["access_token"] == answer.json["access_token"]
    assert [sealed["refresh_token"]] == connected.provider.current_refresh_tokens  # the rotated one
    assert after.version == before.version + 1 and after.lease_owner is None
    assert after.expires_at > time.time() + 3000 and after.refresh_due_at > time.time()


def test_a_refresh_without_a_new_refresh_token_keeps_the_old_one(connected, stack):
    connected.provider.rotate_refresh_tokens = False
    _, before = stored_token_set(stack)

    assert connected.call("POST", "/connections/user-1/refresh").status == 200

    _, after = stored_token_set(stack)
    assert after["refresh_token"] == before["refresh_token"] and after["access_token"] != before["access_token"]


def test_invalid_grant_marks_the_connection_needs_reauth_once(connected, dynamodb, stack):
    connected.provider.fail_next("invalid_grant")

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert_json_error(answer, 409, "needs_reauth")
    status = connected.call("GET", "/connections/user-1").json
    assert status["status"] == "needs_reauth" and status["last_error"]["code"] == "provider_rejected"
    assert status["next_refresh_at"] is None
    item = connection_item(dynamodb, stack)
    assert "due_shard" not in item and "refresh_due_at" not in item  # out of the scheduler's index
    assert_json_error(connected.call("GET", "/connections/user-1/token"), 409, "needs_reauth")
    assert connected.provider.calls["refresh_token"] == 1  # no further provider calls


@pytest.fixture
def no_waiting(monkeypatch):
    """Backoff without the wait; the waits asked for are recorded."""
    waits = []
    monkeypatch.setattr(services.token_service(), "sleep", waits.append)
    return waits


@pytest.mark.parametrize("fault", ["500", "timeout"])
def test_a_passing_fault_is_retried_within_the_call(connected, stack, no_waiting, fault):
    connected.provider.fail_next(fault)

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert answer.status == 200 and connected.provider.calls["refresh_token"] == 2
    after, sealed = stored_token_set(stack)
    assert after.failure_count == 0 and [sealed["refresh_token"]] == connected.provider.current_refresh_tokens


@pytest.mark.parametrize("fault,retry_after,calls", [("429", "7", 3), ("500", None, 3), ("timeout", None, 3)])
def test_a_lasting_fault_fails_the_call_changes_no_credentials_and_cools_down(
        connected, stack, no_waiting, fault, retry_after, calls):
    before, sealed_before = stored_token_set(stack)
    connected.provider.fail_next(fault, times=3)

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert_json_error(answer, 503, "provider_unavailable")
    assert answer.headers.get("Retry-After") == retry_after
    if retry_after:
        assert min(no_waiting) >= int(retry_after)  # the provider's Retry-After was honoured
    assert connected.provider.calls["refresh_token"] == calls
    after, sealed_after = stored_token_set(stack)
    assert after.status == "active" and after.version == before.version and after.lease_owner is None
    assert sealed_after == sealed_before and after.last_error["code"] == "provider_unavailable"
    assert after.failure_count == 1 and after.refresh_due_at >= time.time() + 45  # cooled down
    connected.provider.faults.clear()
    assert connected.call("POST", "/connections/user-1/refresh").status == 200  # and it recovers
    assert stored_token_set(stack)[0].failure_count == 0


def test_invalid_client_even_after_refetching_the_secret_is_the_deployments_fault(connected, stack):
    connected.provider.client_secret = "rotated-at-the-provider"

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert_json_error(answer, 503, "client_rejected")
    assert connected.provider.calls["refresh_token"] == 1  # the refetched secret is the same: no retry
    conn, _ = stored_token_set(stack)
    assert conn.status == "active" and conn.lease_owner is None and conn.failure_count == 0


def test_invalid_grant_after_a_lost_race_returns_the_winners_token(connected, stack, monkeypatch):
    service = services.token_service()
    real_refresh = service.provider.refresh

    def the_other_refresher_wins_meanwhile(creds, refresh_token):
        # While this call is on the wire, another refresher stores a newer token set (its
        # lease had expired), and the provider has retired the refresh token this call used.
        monkeypatch.setattr(service.provider, "refresh", real_refresh)
        winner = service.connections.get("user-1")
        sealed = {"access_token": "at-winner", "refresh_token": "rt-winner", "token_type": "Bearer"}
        service.connections._update("user-1", sets={"credentials": service.vault.seal("user-1", sealed)},
                                    extra_set="version = version + :one", extra_values={":one": 1},
                                    remove=["lease_owner", "lease_until"])
        assert winner.version + 1 == service.connections.get("user-1").version
        raise ProviderRejected("the provider refused: invalid_grant", oauth_error="invalid_grant")

    monkeypatch.setattr(service.provider, "refresh", the_other_refresher_wins_meanwhile)

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert answer.status == 200 and answer.json["access_token"] == "at-winner"
    assert stored_token_set(stack)[0].status == "active"  # a lost race, not a dead connection


def test_invalid_client_refetches_the_rotated_secret_once(connected, stack):
    provider = connected.provider
    provider.client_secret = "rotated-secret-value"
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.refs["ClientSecret"],
        SecretString=f'{{"client_id": "{provider.client_id}", "client_secret": "rotated-secret-value"}}')

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert answer.status == 200 and provider.calls["refresh_token"] == 2


def test_a_ciphertext_moved_to_another_connection_does_not_decrypt(connected, dynamodb, stack):
    connected.connect("user-2")
    table = stack.refs["ConnectionsTable"]
    stolen = connection_item(dynamodb, stack, "user-1")["credentials"]
    dynamodb.update_item(TableName=table, Key={"connection_id": {"S": "user-2"}},
                         UpdateExpression="SET credentials = :c", ExpressionAttributeValues={":c": stolen})
    before = connection_item(dynamodb, stack, "user-2")

    answer = connected.call("GET", "/connections/user-2/token")

    assert_json_error(answer, 409, "credentials_unreadable")
    assert connection_item(dynamodb, stack, "user-2") == before


@pytest.mark.parametrize("method,path", [
    ("GET", "/connections/nobody"), ("DELETE", "/connections/nobody"),
    ("GET", "/connections/nobody/token"), ("POST", "/connections/nobody/refresh"),
])
def test_an_unknown_connection_is_a_404(broker, method, path):
    assert_json_error(broker.call(method, path), 404, "connection_not_found")


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""), ("GET", "/token"), ("POST", "/refresh")])
def test_a_malformed_connection_id_is_a_400(broker, method, suffix):
    assert_json_error(broker.call(method, f"/connections/{'x' * 129}{suffix}"), 400, "invalid_connection_id")


def test_a_status_answer_never_carries_a_credential(connected):
    status = connected.call("GET", "/connections/user-1")

    assert status.status == 200
    for token in connected.provider.issued:
        assert token not in status.body
    assert set(status.json) >= {"status", "provider_user", "scopes", "expires_at", "last_refreshed_at",
                                "next_refresh_at", "last_error"}


def test_a_caller_that_finds_a_refresh_in_progress_gets_the_winners_token(connected, dynamodb, stack):
    service = services.token_service()
    make_due(dynamodb, stack)
    conn = service.connections.get("user-1")
    assert service.connections.acquire_lease(conn, owner="winner", now=int(time.time()), seconds=12)
    winner_token = {}

    def winner_finishes(_seconds):  # the other refresher completes while this caller waits
        if not winner_token:
            sealed = {"access_token": "at-from-winner", "refresh_token": "rt-w", "token_type": "Bearer"}
            winner_token.update(sealed)
            service.connections.save_refreshed(conn, owner="winner",
                                               credentials=service.vault.seal("user-1", sealed),
                                               expires_at=int(time.time()) + 3600, refresh_due_at=None,
                                               now=int(time.time()))

    service.sleep = winner_finishes

    answer = connected.call("GET", "/connections/user-1/token")

    assert answer.json["access_token"] == "at-from-winner"
    assert connected.provider.calls["refresh_token"] == 0  # one refresh in all, not two


def test_a_stale_writer_never_overwrites_newer_credentials(connected, stack):
    store: ConnectionStore = services.token_service().connections
    stale = store.get("user-1")
    assert store.acquire_lease(stale, owner="slow", now=int(time.time()), seconds=12)
    connected.connect("user-1")  # re-connect moves the version on

    with pytest.raises(StaleWrite):
        store.save_refreshed(stale, owner="slow", credentials=b"old", expires_at=None, refresh_due_at=None,
                             now=int(time.time()))
    assert connected.call("GET", "/connections/user-1/token").status == 200


def test_concurrent_refreshers_get_one_lease_between_them(connected, monkeypatch):
    """Workers that read the same version at the same moment: exactly one may refresh (the
    refresh token is single use). Holds because the write is conditional and atomic."""
    import threading

    import moto.dynamodb.models

    # Widen the gap between moto's condition check and its write, so a store without
    # DynamoDB's atomicity (moto without local/moto_atomic.py) lets two win.
    parser = moto.dynamodb.models.create_condition_expression_parser

    def slow_parser(*args, **kwargs):
        parsed = parser(*args, **kwargs).parse()

        class SlowCheck:
            def expr(self, item):
                verdict = parsed.expr(item)
                time.sleep(0.02)
                return verdict

        return type("SlowParser", (), {"parse": lambda self: SlowCheck()})()

    monkeypatch.setattr(moto.dynamodb.models, "create_condition_expression_parser", slow_parser)
    store: ConnectionStore = services.token_service().connections
    seen = store.get("user-1")
    start = threading.Barrier(8)
    winners = []

    def take(owner):
        start.wait()
        if store.acquire_lease(seen, owner=owner, now=int(time.time()), seconds=12):
            winners.append(owner)

    threads = [threading.Thread(target=take, args=(f"worker-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1
    assert store.get("user-1").lease_owner == winners[0]


def test_delete_still_deletes_when_revocation_fails(connected, dynamodb, stack, monkeypatch):
    def refuse(*args, **kwargs):
        from broker.platform.errors import ProviderUnavailable
        raise ProviderUnavailable("down")

    monkeypatch.setattr(services.token_service().provider, "revoke", refuse)

    assert connected.call("DELETE", "/connections/user-1").status == 204
    assert connection_item(dynamodb, stack) is None


def test_a_passing_kms_fault_after_a_rotation_does_not_lose_the_new_refresh_token(connected, stack, monkeypatch):
    from broker.platform.errors import VaultUnavailable

    vault = services.token_service().vault
    real_seal, failures = vault.seal, []

    def flaky_seal(connection_id, token_set, **options):
        if not failures:
            failures.append(1)
            raise VaultUnavailable("KMS hiccup")
        return real_seal(connection_id, token_set, **options)

    monkeypatch.setattr(vault, "seal", flaky_seal)
    monkeypatch.setattr(services.token_service(), "sleep", lambda seconds: None)

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert answer.status == 200 and failures == [1]
    _, sealed = stored_token_set(stack)
    assert [sealed["refresh_token"]] == connected.provider.current_refresh_tokens
