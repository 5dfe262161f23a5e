"""API-key health checks over real HTTP and queues: the schedule finds the due key, the queue
hands it to the worker, the worker asks the stand-in's Users/Me. A key regenerated in
Insightly is marked needs_reauth by the next check (one NeedsReauth event); a used-up daily
quota is never mistaken for a dead key, and the next check waits for the quota to come back."""

import time

import pytest

from local.schedule import Scheduler
from tests.e2e.test_http import wait_for

pytestmark = pytest.mark.e2e

DAY = 86400


def connect_with_key(local, backend, standin, connection_id: str) -> dict:
    """An account at the stand-in, connected by the SaaS backend with the key it collected."""
    account = standin("POST", "api-keys", {"pod": "na1"})
    answer = backend.call("PUT", f"/connections/{connection_id}/api-key",
                          {"api_key": account["api_key"], "api_url": account["api_url"]})
    assert answer.status_code == 200 and answer.json()["status"] == "active", answer.text
    return account


def connection_item(local, connection_id: str) -> dict:
    return local.session.client("dynamodb").get_item(
        TableName=local.env["CONNECTIONS_TABLE"], Key={"connection_id": {"S": connection_id}})["Item"]


def make_due(local, connection_id: str) -> None:
    """The check interval (ApiKeyCheckSeconds, a day by default) has passed."""
    local.session.client("dynamodb").update_item(
        TableName=local.env["CONNECTIONS_TABLE"], Key={"connection_id": {"S": connection_id}},
        UpdateExpression="SET refresh_due_at = :d", ExpressionAttributeValues={":d": {"N": str(int(time.time()) - 1)}})


def test_a_regenerated_key_is_marked_needs_reauth_by_the_next_scheduled_check(local, backend, standin, saas_events):
    account = connect_with_key(local, backend, standin, "regenerated-user")
    assert saas_events("regenerated-user") == ["Connected"]
    standin("POST", "api-keys/regenerate", {"account": account["account"]})  # "Generate New API Key"
    checks = standin("GET", "state")["calls"].get("users_me", 0)

    make_due(local, "regenerated-user")
    assert Scheduler(local.stack).run_once() == {"enqueued": 1, "not_enqueued": 0}
    wait_for(lambda: backend.connection("regenerated-user").json()["status"] == "needs_reauth")

    status = backend.connection("regenerated-user").json()
    assert status["last_error"]["code"] == "api_key_rejected"
    assert standin("GET", "state")["calls"]["users_me"] == checks + 1
    assert Scheduler(local.stack).run_once() == {"enqueued": 0, "not_enqueued": 0}  # off the due index
    assert saas_events("regenerated-user") == ["NeedsReauth"]
    token = backend.token("regenerated-user")
    assert token.status_code == 409 and token.json()["error"] == "needs_reauth"
    assert backend.delete("regenerated-user").status_code == 204


def test_a_used_up_quota_does_not_mark_the_key_and_the_next_check_waits(local, backend, standin, saas_events):
    account = connect_with_key(local, backend, standin, "quota-user")
    saas_events("quota-user")
    standin("POST", "quota", {"account": account["account"], "remaining": 0})
    checks = standin("GET", "state")["calls"].get("users_me", 0)

    make_due(local, "quota-user")  # the check gets Insightly's 429
    assert Scheduler(local.stack).run_once() == {"enqueued": 1, "not_enqueued": 0}
    wait_for(lambda: (backend.connection("quota-user").json()["rate_limit"] or {}).get("remaining") == 0)

    status = backend.connection("quota-user").json()
    assert status["status"] == "active" and status["failing_since"]  # transient: cooled down, not marked
    assert standin("GET", "state")["calls"]["users_me"] == checks + 1

    make_due(local, "quota-user")  # due again before the quota's day is over: postponed, no request
    observed = int(connection_item(local, "quota-user")["rate_limit"]["M"]["observed_at"]["N"])
    assert Scheduler(local.stack).run_once() == {"enqueued": 1, "not_enqueued": 0}
    wait_for(lambda: int(connection_item(local, "quota-user")["refresh_due_at"]["N"]) >= observed + DAY)

    assert standin("GET", "state")["calls"]["users_me"] == checks + 1
    assert backend.connection("quota-user").json()["status"] == "active"
    assert saas_events("quota-user") == ["RefreshFailed", "QuotaExhausted"]
    assert backend.delete("quota-user").status_code == 204
