"""Session binding (SessionBinding=confirm, the default): a finished flow links nothing until
the SaaS backend completes it with the session id it kept and the code only the browser got.

Invariant 10: a connect link opened by someone else's browser links nothing for its creator.
"""

import json
import time

import pytest

from broker import services
from local.lambda_events import LambdaContext, load_handler
from tests.conftest import all_items
from tests.integration.test_connect_flow import assert_json_error, connection_item, flow_items
from tests.support.inprocess import query_of

SCHEDULE_EVENT = {"version": "0", "id": "t", "detail-type": "Scheduled Event", "source": "aws.events",
                  "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
                  "resources": [], "detail": {}}


def pending_flow(broker, connection_id="user-1"):
    """Session -> authorize -> approve -> callback, not completed: (session id, landing params)."""
    session = broker.create_session(connection_id)
    redirect = broker.authorize(session.json["connect_url"])
    landing = broker.callback(broker.provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value)
    returned = query_of(landing.location)
    assert returned["status"] == "pending", landing.location
    return session.json["session_id"], returned


def completion_items(dynamodb, stack):
    return [i for i in flow_items(dynamodb, stack) if i["flow_key"]["S"].startswith("completion#")]


def expire_completions(dynamodb, stack):
    for item in completion_items(dynamodb, stack):
        dynamodb.update_item(TableName=stack.refs["FlowTable"], Key={"flow_key": item["flow_key"]},
                             UpdateExpression="SET complete_by = :past",
                             ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}})


def run_scheduler():
    return load_handler("functions/scheduler/").lambda_handler(SCHEDULE_EVENT, LambdaContext(timeout_seconds=300))


def test_a_connect_link_opened_in_the_victims_browser_links_nothing_for_the_attacker(broker, dynamodb, stack):
    # The attacker creates a session for their own account and keeps its session_id...
    attacker = broker.create_session("attacker-account")
    attacker_session_id = attacker.json["session_id"]
    # ...and the victim opens the link and approves at the provider.
    redirect = broker.authorize(attacker.json["connect_url"])
    landing = broker.callback(broker.provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value)

    # The victim's browser goes back to the SaaS with the code; the victim's session does not
    # hold the attacker's session_id, so the SaaS does not complete. Nothing is linked:
    assert query_of(landing.location)["status"] == "pending"
    assert connection_item(dynamodb, stack, "attacker-account") is None
    # and the attacker, who has the session id but not the code, cannot complete it.
    for guess in ("a" * 43, attacker.json["connect_url"].rsplit("=", 1)[1]):
        assert_json_error(broker.complete(attacker_session_id, guess), 400, "invalid_completion_code")
    assert connection_item(dynamodb, stack, "attacker-account") is None


def test_the_session_id_is_random_and_never_stored_in_the_clear(broker, dynamodb, stack):
    session_id, returned = pending_flow(broker)

    assert len(session_id) == 43 and returned["session_id"] == session_id
    stored = json.dumps(all_items(dynamodb, stack), default=lambda raw: bytes(raw).decode("latin-1"))
    assert session_id not in stored and returned["completion_code"] not in stored


def test_completing_links_the_connection_once_and_emits_connected(broker, dynamodb, stack, lifecycle_events):
    session_id, returned = pending_flow(broker)
    assert lifecycle_events() == []  # the callback alone links nothing and tells nothing

    answer = broker.complete(session_id, returned["completion_code"])

    assert answer.status == 200 and answer.headers["Cache-Control"] == "no-store"
    assert answer.json["status"] == "active" and answer.json["provider_user"]["email"] == "ada@example.com"
    assert answer.json == broker.call("GET", "/connections/user-1").json
    assert broker.call("GET", "/connections/user-1/token").status == 200
    assert [e["detail-type"] for e in lifecycle_events()] == ["Connected"]
    assert completion_items(dynamodb, stack) == []


def test_a_reused_code_links_nothing_more(broker, dynamodb, stack, lifecycle_events):
    session_id, returned = pending_flow(broker)
    assert broker.complete(session_id, returned["completion_code"]).status == 200
    lifecycle_events()

    again = broker.complete(session_id, returned["completion_code"])

    assert_json_error(again, 400, "invalid_completion_code")
    assert connection_item(dynamodb, stack)["version"]["N"] == "1" and lifecycle_events() == []


@pytest.mark.parametrize("wrong", ["code", "session"])
def test_a_wrong_code_or_session_links_nothing_and_keeps_the_right_one_usable(broker, dynamodb, stack, wrong):
    session_id, returned = pending_flow(broker)
    other_session_id, _ = pending_flow(broker, "user-2")
    code = returned["completion_code"]

    answer = (broker.complete(session_id, "x" * 43) if wrong == "code"
              else broker.complete(other_session_id, code))

    assert_json_error(answer, 400, "invalid_completion_code")
    assert connection_item(dynamodb, stack) is None
    assert broker.complete(session_id, code).status == 200  # the right pair still completes


def test_an_expired_code_links_nothing(broker, dynamodb, stack):
    session_id, returned = pending_flow(broker)
    expire_completions(dynamodb, stack)

    assert_json_error(broker.complete(session_id, returned["completion_code"]), 400, "completion_expired")
    assert connection_item(dynamodb, stack) is None


@pytest.mark.parametrize("session_id,body,code", [
    ("not-a-session", {"completion_code": "c" * 43}, "invalid_session_id"),
    ("s" * 43, {"completion_code": 7}, "invalid_completion_code"),
    ("s" * 43, {"completion_code": "short"}, "invalid_completion_code"),
    ("s" * 43, {"completion_code": "c" * 43, "connection_id": "x"}, "invalid_body"),
    ("s" * 43, {}, "invalid_body"),
])
def test_a_malformed_completion_is_refused_and_consumes_nothing(broker, dynamodb, stack, session_id, body, code):
    pending_flow(broker)
    before = all_items(dynamodb, stack)

    answer = broker.call("POST", f"/connect-sessions/{session_id}/complete", body=json.dumps(body))

    assert_json_error(answer, 400, code)
    assert all_items(dynamodb, stack) == before


def test_an_expired_pending_completion_is_revoked_and_deleted_by_the_scheduled_run(broker, dynamodb, stack):
    pending_flow(broker, "user-1")
    _, live = pending_flow(broker, "user-2")
    [issued_refresh_token, _] = [t for t in broker.provider.current_refresh_tokens]
    expire_one = completion_items(dynamodb, stack)
    # Only user-1's completion expires; user-2's is still waiting for its SaaS.
    user1 = next(i for i in expire_one if i["connection_id"]["S"] == "user-1")
    dynamodb.update_item(TableName=stack.refs["FlowTable"], Key={"flow_key": user1["flow_key"]},
                         UpdateExpression="SET complete_by = :past",
                         ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}})

    assert run_scheduler() == {"enqueued": 0, "not_enqueued": 0}

    assert broker.provider.calls["revoke"] == 1
    assert broker.provider.revoked == [issued_refresh_token]
    [left] = completion_items(dynamodb, stack)
    assert left["connection_id"]["S"] == "user-2"
    assert connection_item(dynamodb, stack, "user-1") is None


def test_a_failed_revocation_keeps_the_expired_completion_for_the_next_run(broker, dynamodb, stack, monkeypatch):
    from broker.platform.errors import ProviderUnavailable

    pending_flow(broker)
    expire_completions(dynamodb, stack)
    flow = services.connect_flow()
    real_revoke = flow.provider.revoke

    def down(*args, **kwargs):
        raise ProviderUnavailable("the provider could not be reached")

    monkeypatch.setattr(flow.provider, "revoke", down)
    run_scheduler()
    assert len(completion_items(dynamodb, stack)) == 1

    monkeypatch.setattr(flow.provider, "revoke", real_revoke)
    run_scheduler()
    assert completion_items(dynamodb, stack) == [] and len(broker.provider.revoked) == 1


def test_without_revocation_an_expired_completion_is_just_deleted(broker, dynamodb, stack, monkeypatch):
    monkeypatch.setenv("PROVIDER_REVOCATION_URL", "")
    services.reset()
    pending_flow(broker)
    expire_completions(dynamodb, stack)

    run_scheduler()

    assert completion_items(dynamodb, stack) == [] and broker.provider.calls["revoke"] == 0


def test_a_pending_completion_is_sealed_for_its_connection(broker, dynamodb, stack):
    pending_flow(broker)
    [item] = completion_items(dynamodb, stack)
    vault = services.connect_flow().vault

    assert vault.open("user-1", bytes(item["credentials"]["B"]))["refresh_token"]
    with pytest.raises(Exception, match="do not belong"):
        vault.open("someone-else", bytes(item["credentials"]["B"]))


def test_every_dynamodb_call_of_a_scheduled_sweep_is_granted_by_the_schedulers_role(broker, dynamodb, stack):
    # moto does not enforce IAM: a call the role lacks would pass here and fail every run in AWS.
    from broker.platform import aws
    from tests.support.iam import not_granted, recorded_calls

    pending_flow(broker, "user-1")
    expire_completions(dynamodb, stack)

    with recorded_calls(aws.client("dynamodb")) as calls:
        run_scheduler()

    operations = {operation for operation, _ in calls}
    assert {"PutItem", "Query", "GetItem", "DeleteItem"} <= operations  # lease, index, schema check, sweep
    assert not_granted(stack, "SchedulerRole", calls) == []
    assert completion_items(dynamodb, stack) == []  # swept


def test_a_completion_the_index_still_lists_but_the_saas_completed_is_skipped_never_revoked(
        broker, dynamodb, stack, monkeypatch):
    # The race (second security review, F5): completed just before its deadline, while the
    # pending index (eventually consistent) still lists it when the sweep runs.
    session_id, returned = pending_flow(broker)
    expire_completions(dynamodb, stack)
    flows = services.connect_flow().flows
    lagging = list(flows.expired_completions(now=int(time.time())))
    assert len(lagging) == 1
    dynamodb.update_item(TableName=stack.refs["FlowTable"], Key={"flow_key": {"S": lagging[0][0]}},
                         UpdateExpression="SET complete_by = :later",
                         ExpressionAttributeValues={":later": {"N": str(int(time.time()) + 60)}})
    assert broker.complete(session_id, returned["completion_code"]).status == 200  # just before the deadline
    monkeypatch.setattr(type(flows), "expired_completions", lambda self, *, now, page_size=25: iter(lagging))

    run_scheduler()

    assert broker.provider.calls["revoke"] == 0 and broker.provider.revoked == []
    assert broker.call("GET", "/connections/user-1/token").status == 200
