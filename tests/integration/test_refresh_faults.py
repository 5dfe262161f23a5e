"""Refresh-engine faults from the security review (issue 7): a rejected client secret, the
worker's deadline, Retry-After, DELETE during a refresh, and out-of-range expires_in."""

import dataclasses
import json
import time

import boto3
import pytest

from broker import services
from broker.credentials import tokens
from broker.platform import aws
from tests.integration.test_connect_flow import assert_json_error, connection_item
from tests.integration.test_scheduler import refresh_in_background, run_scheduler, run_worker
from tests.integration.test_tokens import make_due, stored_token_set


@pytest.fixture
def connected(broker):
    assert broker.connect("user-1").linked
    return broker


@pytest.fixture
def no_waiting(monkeypatch):
    waits = []
    monkeypatch.setattr(services.token_service(), "sleep", waits.append)
    return waits


def put_client_secret(stack, provider, secret: str) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.refs["ClientSecret"],
        SecretString=json.dumps({"client_id": provider.client_id, "client_secret": secret}))


# -- finding 1: invalid_client is a fault of the deployment, not of a connection -------------------

def test_a_secret_rotated_at_the_provider_marks_no_connection_and_pages_once(
        broker, dynamodb, stack, lifecycle_events):
    ids = [f"user-{i}" for i in range(5)]
    for connection_id in ids:
        broker.connect(connection_id)
        make_due(dynamodb, stack, connection_id)
    broker.provider.client_secret = "rotated-at-the-provider"  # Secrets Manager not updated yet
    lifecycle_events()  # drop the Connected events

    assert refresh_in_background(stack) == {"batchItemFailures": []}

    for connection_id in ids:
        item = connection_item(dynamodb, stack, connection_id)
        assert item["status"]["S"] == "active" and item["last_error"]["M"]["code"]["S"] == "client_rejected"
        assert "lease_owner" not in item and "first_failed_at" not in item
        assert int(item["refresh_due_at"]["N"]) > time.time() and "due_shard" in item  # cooled down, still indexed
    events = lifecycle_events()
    assert [e["detail-type"] for e in events] == ["ClientRejected"]
    assert events[0]["detail"]["reason"] == "invalid_client"
    assert_json_error(broker.call("GET", "/connections/user-0/token"), 503, "client_rejected")
    assert lifecycle_events() == []  # at most one deployment signal per few minutes, across containers

    put_client_secret(stack, broker.provider, "rotated-at-the-provider")  # the operator fixes it

    answer = broker.call("GET", "/connections/user-0/token")
    assert answer.status == 200 and broker.provider.access_tokens.get(answer.json["access_token"])
    assert "last_error" not in connection_item(dynamodb, stack, "user-0")


def test_the_deployment_marker_is_never_taken_for_a_connection(broker, dynamodb, stack):
    broker.connect("user-1")
    make_due(dynamodb, stack)
    broker.provider.client_secret = "rotated-at-the-provider"
    refresh_in_background(stack)
    marker = connection_item(dynamodb, stack, "#deployment:client-rejected")
    assert marker is not None and "due_shard" not in marker and "refresh_due_at" not in marker

    make_due(dynamodb, stack)
    assert run_scheduler() == {"enqueued": 1, "not_enqueued": 0}  # user-1 only
    for path in ("/connections/#deployment:client-rejected", "/connections/#deployment:client-rejected/token"):
        answer = broker.call("GET", path)  # refused by the router or the connection_id pattern
        assert answer.status in (400, 404) and answer.json["error"] in ("route_not_found", "invalid_connection_id")


def test_a_rotated_secret_is_refetched_on_the_code_exchange(broker, stack):
    broker.connect("user-1")  # the old secret is now cached in this container
    broker.provider.client_secret = "rotated-secret-value"
    put_client_secret(stack, broker.provider, "rotated-secret-value")

    assert broker.connect("user-2").linked


def test_a_rotated_secret_is_refetched_on_revocation(connected, stack):
    _, sealed = stored_token_set(stack)
    connected.provider.client_secret = "rotated-secret-value"
    put_client_secret(stack, connected.provider, "rotated-secret-value")

    assert connected.call("DELETE", "/connections/user-1").status == 204

    assert sealed["refresh_token"] in connected.provider.revoked


# -- finding 3: the worker keeps to its deadline ----------------------------------------------

@pytest.fixture
def slow_provider(monkeypatch):
    """The provider takes 1.2 s to answer a refresh; calls are timed out at 0.1 + 1.3 s and a
    write is given 0.3 s, so a refresh needs 1.7 s of the invocation to start."""
    service = services.token_service()
    monkeypatch.setattr(service, "settings", dataclasses.replace(
        service.settings, http_connect_timeout=0.1, http_read_timeout=1.3))
    monkeypatch.setattr(tokens, "PERSIST_SECONDS", 0.3)
    # moto answers in milliseconds: scale aws.py's "no AWS attempt without 3 s left" down too.
    monkeypatch.setattr(aws, "ATTEMPT_SECONDS", 0.2)
    real_refresh = service.provider.refresh

    def slow_refresh(creds, refresh_token):
        answer = real_refresh(creds, refresh_token)
        time.sleep(1.2)
        return answer

    monkeypatch.setattr(service.provider, "refresh", slow_refresh)


def six_due(broker, dynamodb, stack) -> list[str]:
    ids = [f"user-{i}" for i in range(6)]
    for connection_id in ids:
        broker.connect(connection_id)
        make_due(dynamodb, stack, connection_id)
    return ids


def test_a_slow_provider_refreshes_a_whole_batch_within_the_workers_budget(
        broker, dynamodb, stack, slow_provider, lifecycle_events):
    ids = six_due(broker, dynamodb, stack)
    lifecycle_events()

    answer = run_worker(*[json.dumps({"connection_id": c}) for c in ids], timeout_seconds=4)

    assert answer == {"batchItemFailures": []}
    for connection_id in ids:
        item = connection_item(dynamodb, stack, connection_id)
        assert item["version"]["N"] == "2" and "last_error" not in item
    assert lifecycle_events() == []


def test_a_refresh_that_cannot_finish_in_time_goes_back_to_the_queue_untouched(
        broker, dynamodb, stack, slow_provider, lifecycle_events, monkeypatch):
    from broker.background import worker

    monkeypatch.setattr(worker, "REFRESH_THREADS", 1)  # one after the other, as before the pool
    ids = six_due(broker, dynamodb, stack)
    before = {c: connection_item(dynamodb, stack, c) for c in ids}
    lifecycle_events()
    started = time.monotonic()

    answer = run_worker(*[json.dumps({"connection_id": c}) for c in ids], timeout_seconds=4)

    assert time.monotonic() - started < 4  # no sleep or call ran past the deadline
    returned = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
    assert returned, "a sequential batch of six 1.2 s refreshes cannot fit in 4 s"
    for i, connection_id in enumerate(ids):
        item = connection_item(dynamodb, stack, connection_id)
        if f"m-{i}" in returned:
            assert item == before[connection_id]  # untouched: no failure, no cooldown, still due
        else:
            assert item["version"]["N"] == "2" and "last_error" not in item
    assert lifecycle_events() == []  # no RefreshFailed for what was never tried


def test_backoff_never_sleeps_past_the_deadline(connected, stack, no_waiting, monkeypatch):
    from broker.platform import deadline

    monkeypatch.setattr(deadline, "seconds_left", lambda: 12.0)
    monkeypatch.setattr(services.token_service(), "jitter", lambda low, high: high)  # backoff 1 s
    connected.provider.fail_next("500", times=3)

    assert_json_error(connected.call("POST", "/connections/user-1/refresh"), 503, "provider_unavailable")

    # A retry needs the 1 s backoff, a further call (3.05 + 6 s) and the write (2 s): more than 12 s.
    assert connected.provider.calls["refresh_token"] == 1 and no_waiting == []


# -- finding 4: Retry-After is parsed safely and capped -------------------------------------------

@pytest.mark.parametrize("retry_after", [str(365 * 86400), "²", "9" * 5000, "soon",
                                         "Fri, 31 Dec 2100 23:59:59 GMT"])
def test_a_hostile_retry_after_parks_a_connection_at_most_an_hour(connected, stack, no_waiting, retry_after):
    connected.provider.retry_after = retry_after
    connected.provider.fail_next("429", times=3)

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert_json_error(answer, 503, "provider_unavailable")
    assert int(answer.headers.get("Retry-After", "0")) <= 3600
    conn, _ = stored_token_set(stack)
    assert conn.lease_owner is None and conn.status == "active"
    assert conn.refresh_due_at <= time.time() + 3600 + 1
    assert all(wait <= 3600 for wait in no_waiting)


# -- finding 7: DELETE during a refresh -----------------------------------------------------------

def test_a_delete_while_the_provider_answers_revokes_the_token_set_the_refresher_received(
        connected, dynamodb, stack, monkeypatch):
    service = services.token_service()
    real_refresh = service.provider.refresh
    received = []

    def deleted_while_on_the_wire(creds, refresh_token):
        tokens = real_refresh(creds, refresh_token)
        received.append(tokens.refresh_token)
        assert connected.call("DELETE", "/connections/user-1").status == 204
        return tokens

    monkeypatch.setattr(service.provider, "refresh", deleted_while_on_the_wire)

    answer = connected.call("POST", "/connections/user-1/refresh")

    assert_json_error(answer, 404, "connection_not_found")  # not a success
    assert connection_item(dynamodb, stack) is None
    assert received[0] in connected.provider.revoked and connected.provider.current_refresh_tokens == []


def test_a_refresh_stored_while_a_delete_revokes_is_revoked_too(connected, dynamodb, stack, monkeypatch):
    service = services.token_service()
    real_revoke = service.provider.revoke

    def a_refresh_lands_meanwhile(creds, token, hint):
        monkeypatch.setattr(service.provider, "revoke", real_revoke)
        assert connected.call("POST", "/connections/user-1/refresh").status == 200
        return real_revoke(creds, token, hint)

    monkeypatch.setattr(service.provider, "revoke", a_refresh_lands_meanwhile)

    assert connected.call("DELETE", "/connections/user-1").status == 204

    assert connection_item(dynamodb, stack) is None
    assert connected.provider.current_refresh_tokens == []


# -- finding 8: expires_in out of range -----------------------------------------------------------

@pytest.mark.parametrize("expires_in", [10**12, -100])
def test_an_out_of_range_expires_in_is_treated_as_unknown(connected, captured_logs, expires_in):
    connected.provider.configure(access_ttl=expires_in)

    assert connected.call("POST", "/connections/user-1/refresh").status == 200
    status = connected.call("GET", "/connections/user-1")
    assert status.status == 200 and status.json["expires_at"] is None
    calls = connected.provider.calls["refresh_token"]
    first = connected.call("GET", "/connections/user-1/token")
    second = connected.call("GET", "/connections/user-1/token")
    assert first.status == second.status == 200 and first.json["access_token"] == second.json["access_token"]
    assert connected.provider.calls["refresh_token"] == calls  # not refreshed on every call
    logged = captured_logs.getvalue()
    assert "expires_in" in logged
    assert not any(token in logged for token in connected.provider.issued)


def test_a_connect_with_an_out_of_range_expires_in_links(broker):
    broker.provider.configure(access_ttl=10**12)

    assert broker.connect("user-1").linked
    assert broker.call("GET", "/connections/user-1").status == 200
