"""Where a credential may be sent (second security review, F1): derived at the moment of use
from the configured URLs and the connection's pod, which is sealed with the credential. A
table writer who cannot decrypt rewrites `api_base_url` and `pod`; no credential leaves
toward the host they chose, through /token, the proxy or the scheduled key check."""

import re

import pytest

from tests.integration.test_connect_flow import connection_item
from tests.integration.test_proxy import proxied
from tests.integration.test_scheduler import refresh_in_background
from tests.integration.test_tokens import make_due

ATTACKER = "https://collector.attacker.example/v3.1"


@pytest.fixture
def attacker_host(http_provider):
    """A host the table writer controls: every request that reaches it is recorded."""
    seen = []

    def record(request):
        seen.append({"url": request.url, "authorization": request.headers.get("Authorization")})
        return 200, {"Content-Type": "application/json"}, '{"USER_ID": 1}'

    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        http_provider.mock.add_callback(method, re.compile(re.escape("https://collector.attacker.example/") + ".*"),
                                        callback=record)
    return seen


def rewrite(dynamodb, stack, **attributes):
    """What a principal with dynamodb:UpdateItem on the table (and no kms:Decrypt) can do."""
    names = {f"#{k}": k for k in attributes}
    dynamodb.update_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": "user-1"}},
                         UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in attributes),
                         ExpressionAttributeNames=names,
                         ExpressionAttributeValues={f":{k}": {"S": v} for k, v in attributes.items()})


def use_everywhere(broker, dynamodb, stack):
    """/token, a proxied call and a scheduled check: every path that sends the credential."""
    token = broker.call("GET", "/connections/user-1/token")
    proxy = proxied(broker, "GET", "Contacts")
    make_due(dynamodb, stack)
    refresh_in_background(stack)
    return token, proxy


def test_a_rewritten_api_base_url_sends_no_api_key_to_the_rewritten_host(broker, provider, dynamodb, stack,
                                                                         attacker_host):
    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    provider.api_requests.clear()
    rewrite(dynamodb, stack, api_base_url=ATTACKER)

    token, proxy = use_everywhere(broker, dynamodb, stack)

    assert attacker_host == []
    assert token.status == 200 and token.json["api_base_url"] == account["api_url"]
    assert proxy["statusCode"] == 200
    assert {r["pod"] for r in provider.api_requests} == {"na1"}
    assert [r["path"] for r in provider.api_requests] == ["/Contacts", "/Users/Me"]  # the proxy, the check


def test_a_rewritten_api_base_url_sends_no_access_token_to_the_rewritten_host(broker, provider, dynamodb, stack,
                                                                              attacker_host):
    assert broker.connect("user-1").linked
    provider.api_requests.clear()
    rewrite(dynamodb, stack, api_base_url=ATTACKER)

    token, proxy = use_everywhere(broker, dynamodb, stack)

    assert attacker_host == []
    assert token.status == 200 and token.json["api_base_url"] == provider.base_url
    assert proxy["statusCode"] == 200 and [r["pod"] for r in provider.api_requests] == [None]


def test_a_rewritten_pod_sends_the_api_key_nowhere(broker, provider, dynamodb, stack, attacker_host):
    account = provider.issue_api_key("na1")
    other = provider.issue_api_key("eu1")  # a pod the writer might point the key at
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    provider.api_requests.clear()
    rewrite(dynamodb, stack, pod=other["pod"], api_base_url=other["api_url"])

    token, proxy = use_everywhere(broker, dynamodb, stack)

    # The pod is sealed with the key: a changed one does not open it, so nothing is sent.
    assert token.status == 409 and token.json["error"] == "credentials_unreadable"
    assert proxy["statusCode"] == 409
    assert list(provider.api_requests) == [] and attacker_host == []
    assert connection_item(dynamodb, stack)["status"]["S"] == "active"  # not the provider's word: left as it is


def test_a_key_sealed_before_pods_were_bound_still_works_and_is_sealed_with_its_pod_at_its_next_check(
        broker, provider, dynamodb, stack):
    from broker import services
    from broker.credentials.vault import API_KEY_PURPOSE

    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    older = services._shared()["vault"].seal("user-1", {"api_key": account["api_key"]}, purpose=API_KEY_PURPOSE)
    dynamodb.update_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": "user-1"}},
                         UpdateExpression="SET credentials = :c", ExpressionAttributeValues={":c": {"B": older}})

    token = broker.call("GET", "/connections/user-1/token")
    make_due(dynamodb, stack)
    refresh_in_background(stack)

    assert token.status == 200 and token.json["api_base_url"] == account["api_url"]
    resealed = connection_item(dynamodb, stack)["credentials"]["B"]
    assert resealed[0] == 0xE2 and resealed != older
    rewrite(dynamodb, stack, pod="eu1")
    assert broker.call("GET", "/connections/user-1/token").json["error"] == "credentials_unreadable"
