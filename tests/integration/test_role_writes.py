"""Every write the functions make to a connection item is one their role's narrowed
dynamodb:Attributes condition allows (moto does not enforce IAM: tests/support/iam.py
evaluates the recorded calls against template.yaml)."""

import json

import pytest

from broker import services
from broker.platform import aws
from tests.integration.test_proxy import proxied
from tests.integration.test_tokens import make_due
from tests.support.iam import not_granted, recorded_calls


def updates(calls):
    return [params for operation, params in calls if operation == "UpdateItem"]


@pytest.mark.parametrize("kind", ["oauth2", "api_key"])
def test_linking_without_session_binding_writes_only_what_the_public_roles_may(broker, provider, monkeypatch, stack,
                                                                            kind):
    monkeypatch.setenv("SESSION_BINDING", "none")
    services.reset()
    with recorded_calls(aws.client("dynamodb")) as calls:
        if kind == "oauth2":
            assert broker.connect("user-1").linked
        else:
            account = provider.issue_api_key("na1")
            assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    role = "CallbackRole" if kind == "oauth2" else "KeyPageRole"
    linked = [c for c in calls if c[0] == "UpdateItem" and c[1]["TableName"] == stack.refs["ConnectionsTable"]]
    assert linked and not_granted(stack, role, linked) == []


def test_completing_labelling_and_putting_a_key_write_only_what_the_connections_role_may(broker, provider, stack):
    account = provider.issue_api_key("na1")
    with recorded_calls(aws.client("dynamodb")) as connect_calls:
        assert broker.connect("user-1").linked  # the completion runs in the connections function
    with recorded_calls(aws.client("dynamodb")) as calls:
        assert broker.call("PATCH", "/connections/user-1", body={"tags": {"team": "a"},
                                                                "metadata": {"plan": "pro"}}).status == 200
        assert broker.call("PUT", "/connections/user-2/api-key",
                           body={"api_key": account["api_key"], "pod": "na1"}).status in (200, 201)
    completion = [c for c in connect_calls if c[0] == "UpdateItem" and c[1]["TableName"] == stack.refs[
        "ConnectionsTable"]]
    assert completion and len(updates(calls)) == 2
    assert not_granted(stack, "ConnectionsRole", completion + calls) == []


def test_a_due_token_and_a_forced_refresh_write_only_what_the_refresh_role_may(broker, dynamodb, stack):
    assert broker.connect("user-1").linked
    make_due(dynamodb, stack, seconds_left=30)
    with recorded_calls(aws.client("dynamodb")) as calls:
        assert broker.call("GET", "/connections/user-1/token").status == 200
        assert broker.call("POST", "/connections/user-1/refresh").status == 200
    assert len(updates(calls)) >= 4  # two leases, two stored token sets
    assert not_granted(stack, "RefreshRole", calls) == []


def test_a_proxied_call_its_401_renewal_and_its_quota_write_only_what_the_proxy_role_may(broker, provider, stack):
    assert broker.connect("user-1").linked
    for token in list(provider.access_tokens):
        provider.access_tokens[token] = 1  # Insightly now refuses it: a 401, then a refresh
    with recorded_calls(aws.client("dynamodb")) as calls:
        assert proxied(broker, "GET", "Contacts")["statusCode"] == 200
    assert len(updates(calls)) >= 2
    assert not_granted(stack, "ProxyRole", calls) == []


def test_a_scheduled_key_check_writes_only_what_the_workers_role_may(broker, provider, dynamodb, stack):
    from tests.integration.test_scheduler import run_worker

    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    make_due(dynamodb, stack)
    with recorded_calls(aws.client("dynamodb")) as calls:
        assert run_worker(json.dumps({"connection_id": "user-1"})) == {"batchItemFailures": []}
    assert len(updates(calls)) == 2  # the lease, the check's outcome
    assert not_granted(stack, "RefreshWorkerRole", calls) == []
