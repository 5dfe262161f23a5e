"""The scheduled run: due connections found through the sparse index, never a table scan."""

from collections import Counter

from broker import aws
from tests.integration.test_connect_flow import connection_item
from tests.integration.test_tokens import make_due
from tests.support.lambda_events import LambdaContext, load_handler

SCHEDULE_EVENT = {"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
                  "account": "123456789012", "time": "2026-11-27T12:00:00Z", "region": "us-east-1",
                  "resources": [], "detail": {}}


def run_scheduler():
    return load_handler("functions/scheduler/").lambda_handler(SCHEDULE_EVENT, LambdaContext(timeout_seconds=300))


def count_calls(service: str) -> Counter:
    calls = Counter()
    aws.client(service).meta.events.register("before-call", lambda model, **kw: calls.update([model.name]))
    return calls


def test_only_due_connections_are_refreshed_and_the_table_is_never_scanned(broker, dynamodb, stack):
    for connection_id in ("due-1", "due-2", "fresh-1", "fresh-2"):
        broker.connect(connection_id)
    make_due(dynamodb, stack, "due-1")
    make_due(dynamodb, stack, "due-2")
    calls = count_calls("dynamodb")

    result = run_scheduler()

    assert result == {"outcomes": {"refreshed": 2}}
    assert broker.provider.calls["refresh_token"] == 2
    assert calls["Scan"] == 0 and calls["Query"] == 8  # one page per shard
    assert calls["GetItem"] == 2  # one read per due connection, none for the others
    for connection_id in ("due-1", "due-2"):
        assert int(connection_item(dynamodb, stack, connection_id)["version"]["N"]) == 2
    for connection_id in ("fresh-1", "fresh-2"):
        assert int(connection_item(dynamodb, stack, connection_id)["version"]["N"]) == 1


def test_invalid_grant_in_the_background_marks_needs_reauth(broker, dynamodb, stack):
    broker.connect("user-1")
    make_due(dynamodb, stack)
    broker.provider.fail_next("invalid_grant")

    assert run_scheduler() == {"outcomes": {"needs_reauth": 1}}
    assert connection_item(dynamodb, stack)["status"]["S"] == "needs_reauth"
    assert run_scheduler() == {"outcomes": {}}  # out of the index: never tried again
    assert broker.provider.calls["refresh_token"] == 1


def test_a_transient_fault_leaves_the_connection_due_for_the_next_run(broker, dynamodb, stack):
    broker.connect("user-1")
    make_due(dynamodb, stack)
    broker.provider.fail_next("500")

    assert run_scheduler() == {"outcomes": {"failed": 1}}
    assert connection_item(dynamodb, stack)["status"]["S"] == "active"
    assert run_scheduler() == {"outcomes": {"refreshed": 1}}


def test_a_connection_refreshed_meanwhile_is_not_refreshed_again(broker, dynamodb, stack):
    broker.connect("user-1")
    make_due(dynamodb, stack)
    broker.call("POST", "/connections/user-1/refresh")  # refreshed meanwhile by a backend call
    before = broker.provider.calls["refresh_token"]

    assert run_scheduler() == {"outcomes": {}}
    assert broker.provider.calls["refresh_token"] == before
