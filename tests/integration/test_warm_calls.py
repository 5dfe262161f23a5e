"""A warm container opens a credential without KMS (broker.credentials.data_key_cache), yet the item is
read on every call: a deleted, revoked or re-keyed connection stops working at its next call."""

import base64

import pytest

from broker.platform import aws
from tests.integration.test_proxy import proxied


@pytest.fixture
def kms_calls(broker):
    """The KMS operations the broker makes from here on (on the client its vault uses)."""
    calls = []
    aws.client("kms").meta.events.register("before-call.kms.*", lambda model, **_: calls.append(model.name))
    return calls


@pytest.fixture
def key_connection(broker, provider):
    account = provider.issue_api_key("na1")
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    return account


@pytest.mark.parametrize("kind", ["oauth2", "api_key"])
def test_a_warm_proxied_call_and_a_warm_token_read_make_no_kms_call(broker, provider, kms_calls, kind):
    if kind == "oauth2":
        assert broker.connect("user-1").linked
    else:
        account = provider.issue_api_key("na1")
        assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    assert proxied(broker, "GET", "Contacts")["statusCode"] == 200  # the container's first open
    opened = len(kms_calls)

    calls = [proxied(broker, "GET", "Contacts")["statusCode"] for _ in range(3)]
    token = broker.call("GET", "/connections/user-1/token")

    assert calls == [200] * 3 and token.status == 200
    assert kms_calls[opened:] == []


def test_a_deleted_connection_stops_at_its_next_call_though_its_key_is_cached(broker, provider, key_connection):
    assert proxied(broker, "GET", "Contacts")["statusCode"] == 200
    assert broker.call("DELETE", "/connections/user-1").status == 204
    sent = provider.calls["api"]

    after = proxied(broker, "GET", "Contacts")

    assert (after["statusCode"], after["headers"]["X-Broker-Error"]) == (404, "connection_not_found")
    assert broker.call("GET", "/connections/user-1/token").status == 404
    assert provider.calls["api"] == sent  # nothing went to Insightly


def test_a_revoked_key_stops_at_its_next_call_though_its_key_is_cached(broker, provider, key_connection):
    assert proxied(broker, "GET", "Contacts")["statusCode"] == 200
    provider.regenerate_api_key(key_connection["account"])  # the user revoked the key at Insightly
    assert broker.call("POST", "/connections/user-1/refresh").status == 409  # the check saw it: needs_reauth
    sent = provider.calls["api"]

    after = proxied(broker, "GET", "Contacts")

    assert (after["statusCode"], after["headers"]["X-Broker-Error"]) == (409, "needs_reauth")
    assert broker.call("GET", "/connections/user-1/token").status == 409
    assert provider.calls["api"] == sent


def test_a_rekeyed_connection_sends_its_new_key_at_its_next_call(broker, provider, key_connection, kms_calls):
    assert proxied(broker, "GET", "Contacts")["statusCode"] == 200
    new = provider.issue_api_key("eu1")
    assert broker.call("PUT", "/connections/user-1/api-key",
                       body={"api_key": new["api_key"], "api_url": new["api_url"]}).status == 200
    decrypts = kms_calls.count("Decrypt")

    after = proxied(broker, "GET", "Contacts")

    assert after["statusCode"] == 200
    sent = provider.api_requests[-1]
    assert sent["headers"]["authorization"] == broker.call("GET", "/connections/user-1/token").json["authorization"]
    assert base64.b64decode(sent["headers"]["authorization"].split()[1]).decode() == f"{new['api_key']}:"
    assert kms_calls.count("Decrypt") == decrypts + 1  # a new data key: KMS opens it once

