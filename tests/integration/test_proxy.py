"""The proxy (issue 9): Insightly called through the broker for both credential kinds, under
moto, with the fake's Bearer and per-pod Basic APIs behind `responses`."""

import base64
import json
import threading
import time

import pytest
import requests

from broker import services
from local.lambda_events import LambdaContext, http_event, iam_identity, load_handler
from tests.integration.test_connect_flow import connection_item
from tests.integration.test_tokens import make_due

KINDS = ["oauth2", "api_key"]


@pytest.fixture
def kind_connection(request, broker, provider):
    """A connection of the kind the test is parametrized with: (connection_id, direct auth header)."""
    if request.param == "oauth2":
        assert broker.connect("user-1").linked
    else:
        account = provider.issue_api_key("na1")
        assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    token = broker.call("GET", "/connections/user-1/token").json
    return token


def proxied(broker, method, path, *, query="", body=None, headers=None, connection_id="user-1"):
    """A signed call to the proxy route, as API Gateway would deliver it (path decoded once)."""
    event = http_event(method, f"/connections/{connection_id}/proxy/{path}",
                       route={"method": "ANY", "path": "/connections/{connection_id}/proxy/{path+}"},
                       path_parameters={"connection_id": connection_id, "path": path}, raw_query=query,
                       body=body, headers=headers, iam_identity=iam_identity())
    event["routeKey"] = "ANY /connections/{connection_id}/proxy/{path+}"
    raw = load_handler("functions/proxy/").lambda_handler(event, LambdaContext(timeout_seconds=29))
    return raw


def body_of(raw):
    return base64.b64decode(raw["body"]) if raw.get("isBase64Encoded") else raw["body"].encode()


@pytest.mark.parametrize("kind_connection", KINDS, indirect=True)
def test_a_proxied_get_equals_the_direct_call(broker, provider, kind_connection):
    direct = requests.get(kind_connection["api_base_url"] + "/Contacts", params={"top": "5", "count_total": "true"},
                          headers={"Authorization": kind_connection["authorization"]}, timeout=5)

    raw = proxied(broker, "GET", "Contacts", query="top=5&count_total=true")

    assert raw["statusCode"] == direct.status_code == 200
    assert json.loads(body_of(raw)) == direct.json()
    assert raw["headers"]["X-Total-Count"] == direct.headers["X-Total-Count"]
    assert "Set-Cookie" not in raw["headers"] and "set-cookie" in {k.lower() for k in direct.headers}


@pytest.mark.parametrize("kind_connection", KINDS, indirect=True)
def test_a_post_body_round_trips_and_caller_secrets_never_reach_insightly(broker, provider, kind_connection):
    contact = {"FIRST_NAME": "Grace", "LAST_NAME": "Hopper", "EMAIL_ADDRESS": "grace@example.com"}

    raw = proxied(broker, "POST", "Contacts", body=json.dumps(contact), headers={
        "Content-Type": "application/json", "Authorization": "Bearer the-callers-own", "Cookie": "session=caller",
        "X-Amz-Security-Token": "caller-token"})

    created = json.loads(body_of(raw))
    assert raw["statusCode"] == 200 and {k: created[k] for k in contact} == contact
    seen = provider.api_requests[-1]["headers"]
    assert seen["authorization"] == kind_connection["authorization"]  # the connection's, not the caller's
    assert "cookie" not in seen and not any(k.startswith("x-amz") for k in seen)


def test_an_expired_access_token_is_refreshed_once_and_the_call_succeeds(broker, provider):
    assert broker.connect("user-1").linked
    for token in list(provider.access_tokens):
        provider.access_tokens[token] = 1  # Insightly now refuses it (expired early)
    refreshes = provider.calls["refresh_token"]

    raw = proxied(broker, "GET", "Users/Me")

    assert raw["statusCode"] == 200 and provider.calls["refresh_token"] == refreshes + 1


def test_a_revoked_key_becomes_needs_reauth_with_one_event(broker, provider, lifecycle_events):
    account = provider.issue_api_key("eu1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    lifecycle_events()
    provider.regenerate_api_key(account["account"])

    first, second = proxied(broker, "GET", "Contacts"), proxied(broker, "GET", "Contacts")

    assert first["statusCode"] == second["statusCode"] == 409
    assert json.loads(first["body"])["error"] == "needs_reauth" and first["headers"]["X-Broker-Error"] == "needs_reauth"
    assert [e["detail-type"] for e in lifecycle_events()] == ["NeedsReauth"]


@pytest.mark.parametrize("kind_connection", KINDS, indirect=True)
def test_after_a_429_the_next_calls_cost_insightly_nothing(broker, provider, kind_connection):
    provider.fail_next("429", on="api")
    first = proxied(broker, "GET", "Contacts")
    calls = provider.calls["api"]

    answers = [proxied(broker, "GET", "Contacts") for _ in range(10)]

    assert first["statusCode"] == 429 and "Retry-After" in first["headers"]
    assert provider.calls["api"] == calls  # answered by the broker itself
    assert {a["statusCode"] for a in answers} == {429}
    assert all(a["headers"]["X-Broker-Error"] == "provider_quota_exhausted" and int(a["headers"]["Retry-After"]) > 0
               for a in answers)


def test_after_the_throttle_one_probe_goes_through(broker, provider, dynamodb, stack):
    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    provider.fail_next("429", on="api")
    assert proxied(broker, "GET", "Contacts")["statusCode"] == 429
    dynamodb.update_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": "user-1"}},
                         UpdateExpression="SET throttled_until = :t",
                         ExpressionAttributeValues={":t": {"N": str(int(time.time()) - 1)}})

    probe = proxied(broker, "GET", "Contacts")

    assert probe["statusCode"] == 200 and "throttled_until" not in connection_item(dynamodb, stack)


@pytest.mark.parametrize(("method", "calls"), [("GET", 3), ("PUT", 3), ("DELETE", 3), ("POST", 1), ("PATCH", 1)])
def test_only_idempotent_calls_are_retried_on_a_503(broker, provider, method, calls, monkeypatch):
    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    monkeypatch.setattr(services.insightly_proxy(), "sleep", lambda seconds: None)
    provider.fail_next("503", times=3, on="api")
    before = provider.calls["api"]

    raw = proxied(broker, method, "Contacts", body="{}" if method in ("POST", "PUT", "PATCH") else None,
                  headers={"Content-Type": "application/json"})

    assert raw["statusCode"] == 503 and provider.calls["api"] - before == calls
    if calls > 1:
        assert raw["headers"]["X-Broker-Retries"] == str(calls - 1)


HOSTILE_PATHS = ["..", "../Users/Me", "Contacts/../../x", "./Contacts", "Contacts//1", "Contacts\\1",
                 "Contacts/\x00", "%2e%2e/x", "Contacts%2f..", "http://evil.example/x", "//evil.example/x",
                 "@evil.example", "a" * 2049, "Contacts/%252e%252e"]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_path_that_could_climb_out_is_refused_before_any_outbound_request(broker, provider, path):
    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    before = provider.calls["api"]

    raw = proxied(broker, "GET", path)

    assert raw["statusCode"] == 400 and json.loads(raw["body"])["error"] == "invalid_path"
    assert provider.calls["api"] == before


def test_concurrent_calls_on_a_due_token_make_one_refresh(broker, provider, dynamodb, stack):
    assert broker.connect("user-1").linked
    make_due(dynamodb, stack, "user-1", seconds_left=10)  # inside the 60 s skew: every call wants a refresh
    refreshes = provider.calls["refresh_token"]
    answers = []

    def call():
        answers.append(proxied(broker, "GET", "Users/Me")["statusCode"])

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [200] * 8 and provider.calls["refresh_token"] == refreshes + 1


def test_an_unknown_connection_and_a_needs_reauth_one_are_broker_errors(broker):
    raw = proxied(broker, "GET", "Contacts", connection_id="nobody")

    assert raw["statusCode"] == 404 and raw["headers"]["X-Broker-Error"] == "connection_not_found"


def test_a_cookie_insightly_set_for_one_connection_never_goes_out_with_another(broker, provider):
    """The proxy's HTTP session is shared by every connection in a warm container: a cookie jar
    there would send one tenant's Insightly cookies (AWSALB here) with the next tenant's call."""
    for connection_id in ("tenant-a", "tenant-b"):
        account = provider.issue_api_key("na1")
        assert broker.connect_with_key(connection_id, account["api_key"], account["api_url"]).linked

    first = proxied(broker, "GET", "Contacts", connection_id="tenant-a")
    second = proxied(broker, "GET", "Contacts", connection_id="tenant-b")

    assert first["statusCode"] == second["statusCode"] == 200
    assert [r for r in provider.api_requests if "cookie" in r["headers"]] == []


def test_a_persistent_401_costs_one_renewal_and_then_says_why_it_is_passed_back(broker, provider):
    # Second security review, F3: six calls had made six refresh-token rotations.
    assert broker.connect("user-1").linked
    provider.api_faults.extend(["401"] * 20)
    refreshes = provider.calls["refresh_token"]

    answers = [proxied(broker, "GET", "Contacts") for _ in range(6)]

    assert provider.calls["refresh_token"] - refreshes == 1
    assert [a["statusCode"] for a in answers] == [401] * 6
    assert answers[0]["headers"]["X-Broker-Error"] == "provider_unauthorized"
    assert {a["headers"]["X-Broker-Error"] for a in answers[1:]} == {"credential_recently_renewed"}
    assert "renewed" in json.loads(answers[1]["body"])["message"]


def test_a_keys_401_costs_one_users_me_check_a_minute_and_passes_insightlys_answer_on(broker, provider):
    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    checks = provider.calls["users_me"]

    provider.api_faults.append("401")  # this path only: the check's Users/Me is accepted
    first = proxied(broker, "GET", "Contacts")
    provider.api_faults.append("401")
    second = proxied(broker, "GET", "Contacts")

    assert first["statusCode"] == 401 and "X-Broker-Error" not in first["headers"]
    assert "denied" in json.loads(body_of(first))["Message"]  # Insightly's own answer, whole
    assert second["statusCode"] == 401 and second["headers"]["X-Broker-Error"] == "credential_recently_renewed"
    assert provider.calls["users_me"] - checks == 1
