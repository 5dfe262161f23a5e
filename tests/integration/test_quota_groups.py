"""Quota groups and priorities (issue 19): two connections of one customer share one Insightly
instance's daily limit through one quota record; background calls stop at the reserve
(BackgroundQuotaReservePercent, 20 by default) and interactive calls go on until the quota is
used up. FakeInsightly (the stand-in's logic) counts every call that reaches it, with a clock
the test moves, so "zero wasted calls" and "until the day turns" are measured, not assumed."""

import json
import threading
import time

import pytest

from broker import services
from broker.platform import aws
from broker.store.quota import next_utc_midnight
from tests.integration.test_connect_flow import assert_json_error
from tests.integration.test_proxy import proxied
from tests.support.iam import not_granted, recorded_calls
from tests.support.inprocess import RETURN_TO, query_of

DAILY_LIMIT = 10  # a reserve of 20 %: background work stops once 2 are left


class Clock:
    """One clock for the broker's proxy and the fake Insightly: the day turns for both."""

    def __init__(self):
        self.now = float(time.time())

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(provider, monkeypatch):
    clock = Clock()
    provider.clock = clock
    monkeypatch.setattr(services.insightly_proxy(), "clock", clock)
    monkeypatch.setattr(services.token_service(), "clock", clock)
    return clock


def connect_in_group(broker, connection_id: str, api_key: str, api_url: str, group: str):
    """An api_key connect session that names the quota group, the key page, the completion."""
    session = broker.call("POST", "/connect-sessions", body={
        "connection_id": connection_id, "return_to": RETURN_TO, "auth_mode": "api_key", "quota_group": group})
    assert session.status == 201, session.body
    landing = broker.submit_key(broker.open_key_page(session.json["connect_url"]), api_key, api_url)
    returned = query_of(landing.location)
    completed = broker.complete(returned["session_id"], returned["completion_code"])
    assert completed.status == 200 and completed.json["quota_group"] == group, completed.body


@pytest.fixture
def customer(broker, provider, clock):
    """Two users' keys on one Insightly instance (one daily counter of DAILY_LIMIT), both in
    the quota group "cust-1"; the counter refilled after the connects' Users/Me checks."""
    first = provider.issue_api_key("na1", daily_limit=DAILY_LIMIT)
    second = provider.issue_api_key(account=first["account"])
    connect_in_group(broker, "alice", first["api_key"], first["api_url"], "cust-1")
    connect_in_group(broker, "bob", second["api_key"], second["api_url"], "cust-1")
    provider.set_quota(first["account"], remaining=DAILY_LIMIT)
    return first["account"]


def call(broker, connection_id, priority=None):
    headers = {"X-Broker-Priority": priority} if priority else None
    return proxied(broker, "GET", "Contacts", connection_id=connection_id, headers=headers)


def insightly_calls(provider) -> int:
    return provider.calls["api"]


def test_two_connections_share_the_quota_and_background_work_stops_at_the_reserve(
        broker, provider, customer, clock):
    # Given: background calls on alice spend the shared quota down to the reserve (2 of 10)
    answers = []
    while True:
        before = insightly_calls(provider)
        raw = call(broker, "alice", "background")
        answers.append(raw["statusCode"])
        if raw["statusCode"] != 200:
            break
        assert insightly_calls(provider) == before + 1
    assert answers == [200] * 8 + [429]
    assert provider.accounts[customer].remaining() == 2

    # When: background calls on both connections, then interactive ones until the quota is used up
    before = insightly_calls(provider)
    refused = [call(broker, who, "background") for who in ("alice", "bob", "bob", "alice")]
    wasted = insightly_calls(provider) - before
    interactive = [call(broker, who)["statusCode"] for who in ("bob", "alice")]
    exhausted_before = insightly_calls(provider)
    after_exhaustion = [call(broker, who, priority) for who in ("alice", "bob")
                        for priority in ("interactive", "background")]

    # Then: the reserve held with no call wasted at Insightly, and it served the interactive calls
    assert wasted == 0
    for raw in refused:
        assert raw["statusCode"] == 429 and json.loads(raw["body"])["error"] == "quota_reserved"
        assert raw["headers"]["X-RateLimit-Remaining"] == "2" and raw["headers"]["X-RateLimit-Limit"] == "10"
        assert int(raw["headers"]["Retry-After"]) == next_utc_midnight(clock.now) - int(clock.now)
    assert interactive == [200, 200] and provider.accounts[customer].remaining() == 0
    # ... and once it is used up, every call is answered here, whichever connection or priority
    assert insightly_calls(provider) == exhausted_before
    assert {(r["statusCode"], r["headers"]["X-Broker-Error"]) for r in after_exhaustion} == {
        (429, "provider_quota_exhausted")}


def test_after_exhaustion_calls_stay_local_until_the_stand_ins_day_turns(broker, provider, customer, clock):
    provider.set_quota(customer, remaining=1)
    assert call(broker, "alice")["statusCode"] == 200  # remaining 0: the group is throttled
    # The throttle (QuotaBackoffSeconds, Insightly sent no Retry-After) passes: one probe finds
    # Insightly's 429 and its Retry-After (the end of its day) holds every call until then.
    clock.now += 901
    assert call(broker, "bob")["statusCode"] == 429
    probes = insightly_calls(provider)
    for hours in (1, 6, 23):
        clock.now += 3600 * hours / 3
        assert [call(broker, who)["statusCode"] for who in ("alice", "bob")] == [429, 429]
    assert insightly_calls(provider) == probes

    clock.now = provider.accounts[customer].window_start + 86400 + 1  # the stand-in's day turns

    assert call(broker, "bob")["statusCode"] == 200  # the one probe
    assert [call(broker, who, "background")["statusCode"] for who in ("alice", "bob")] == [200, 200]


def test_the_status_and_the_listing_show_the_groups_quota(broker, provider, customer, clock):
    provider.set_quota(customer, remaining=3)
    assert call(broker, "alice")["statusCode"] == 200  # remaining 2: the reserve is reached

    bob = broker.call("GET", "/connections/bob").json
    listed = {c["connection_id"]: c for c in broker.call("GET", "/connections").json["connections"]}

    expected = {"limit": 10, "remaining": 2, "reserve_reached": True, "exhausted": False}
    assert bob["quota_group"] == "cust-1" and {k: bob["quota"][k] for k in expected} == expected
    assert listed["alice"]["quota"] == listed["bob"]["quota"] == bob["quota"]


def test_a_grouped_call_reads_in_one_batch_and_writes_only_at_the_thresholds(broker, provider, stack, clock):
    account = provider.issue_api_key("na1", daily_limit=1000)
    connect_in_group(broker, "carol", account["api_key"], account["api_url"], "cust-2")
    assert call(broker, "carol")["statusCode"] == 200  # this container learns carol's group

    with recorded_calls(aws.client("dynamodb")) as calls:
        answers = [call(broker, "carol")["statusCode"] for _ in range(5)]

    assert answers == [200] * 5
    assert [operation for operation, _ in calls] == ["BatchGetItem"] * 5  # one call each, no write
    assert not_granted(stack, "ProxyRole", calls) == []


def test_every_call_of_the_quota_guard_is_granted_by_the_proxy_role(broker, provider, customer, stack, clock):
    # moto does not enforce IAM: a call the role lacks would pass here and fail in AWS.
    with recorded_calls(aws.client("dynamodb")) as calls:
        for priority in ("background",) * 9 + ("interactive",) * 3:
            call(broker, "alice", priority)
        clock.now += 901
        call(broker, "bob")  # the probe's claim

    assert {"GetItem", "BatchGetItem", "UpdateItem"} <= {operation for operation, _ in calls}
    assert not_granted(stack, "ProxyRole", calls) == []


def test_quota_events_are_sent_once_per_group_and_name_it(broker, provider, customer, clock, lifecycle_events):
    lifecycle_events()  # the connects' events
    provider.set_quota(customer, limit=100, remaining=11)  # QuotaLow: under 10 % left
    for who in ("alice", "bob") * 6:
        call(broker, who)

    quota_events = [(e["detail-type"], e["detail"]["quota_group"]) for e in lifecycle_events()
                    if e["detail-type"].startswith("Quota")]
    assert quota_events == [("QuotaLow", "cust-1"), ("QuotaExhausted", "cust-1")]


def test_parallel_callers_never_push_insightly_past_the_limit_by_more_than_the_calls_in_flight(
        broker, provider, clock):
    account = provider.issue_api_key("na1", daily_limit=1000)
    keys = [account] + [provider.issue_api_key(account=account["account"]) for _ in range(3)]
    for n, key in enumerate(keys):
        connect_in_group(broker, f"user-{n}", key["api_key"], key["api_url"], "busy")
    provider.set_quota(account["account"], remaining=30)
    in_flight = 8
    refused_by_insightly = []

    def worker(n):
        for _ in range(10):
            raw = call(broker, f"user-{n % len(keys)}")
            if raw["statusCode"] == 429 and "X-Broker-Error" not in raw["headers"]:
                refused_by_insightly.append(1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert provider.accounts[account["account"]].remaining() == 0
    assert len(refused_by_insightly) <= in_flight


def test_an_unknown_priority_is_a_400_and_reaches_nothing(broker, provider, customer, clock):
    before = insightly_calls(provider)

    raw = call(broker, "alice", "urgent")

    assert raw["statusCode"] == 400 and json.loads(raw["body"])["error"] == "invalid_priority"
    assert "urgent" not in raw["body"] and insightly_calls(provider) == before


def test_patch_sets_and_clears_the_quota_group_and_refuses_a_bad_one(broker, provider, customer):
    moved = broker.call("PATCH", "/connections/bob", body={"quota_group": "cust-9"})
    bad = broker.call("PATCH", "/connections/bob", body={"quota_group": "x" * 256})
    cleared = broker.call("PATCH", "/connections/bob", body={"quota_group": None})

    assert moved.status == 200 and moved.json["quota_group"] == "cust-9"
    assert_json_error(bad, 400, "invalid_quota_group")
    assert cleared.status == 200 and cleared.json["quota_group"] is None


def due_now(dynamodb, stack, connection_id, clock):
    dynamodb.update_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": connection_id}},
                         UpdateExpression="SET refresh_due_at = :d",
                         ExpressionAttributeValues={":d": {"N": str(int(clock.now) - 1)}})


@pytest.mark.parametrize(("left", "outcome", "spent"), [(3, "refreshed", 1), (2, "postponed", 0)])
def test_a_scheduled_key_check_is_background_work_and_waits_at_the_reserve(
        broker, provider, customer, clock, dynamodb, stack, left, outcome, spent):
    # Given: alice's calls left `left` of 10 in the group (2 is the reserve); bob's check is due
    provider.set_quota(customer, remaining=left + 1)
    assert call(broker, "alice")["statusCode"] == 200
    due_now(dynamodb, stack, "bob", clock)
    before = insightly_calls(provider)

    with recorded_calls(aws.client("dynamodb")) as calls:
        result = services.token_service().refresh_if_due("bob")

    assert result == outcome and insightly_calls(provider) - before == spent
    if outcome == "postponed":
        stored = dynamodb.get_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": "bob"}})
        assert int(stored["Item"]["refresh_due_at"]["N"]) == next_utc_midnight(clock.now)
    assert not_granted(stack, "RefreshWorkerRole", calls) == []
