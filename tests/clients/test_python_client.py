"""The Python client against the local stack: what a SaaS backend does with it, over real HTTP
through the SigV4-checking gateway, the stand-in playing Insightly."""

import json
import time

import pytest
import requests

from insightly_connect import (
    AccessDeniedError,
    BadRequestError,
    Broker,
    Connection,
    NeedsReauthError,
    NotFoundError,
    webhooks,
)
from tests.clients.conftest import approve_in_browser, local_session

pytestmark = pytest.mark.e2e


def test_an_oauth_connection_from_connect_session_to_delete(stack, broker, standin):
    # Given a connect session for a user of customer acme
    session = broker.create_connect_session("py-oauth", stack.describe()["RETURN_TO"], auth_mode="oauth2",
                                            tags={"customer": "acme"})
    assert session.auth_mode == "oauth2" and session.connect_url.startswith(stack.local.gateway_url)

    # When the user approves and the backend completes the session it started
    returned = approve_in_browser(stack, session.connect_url)
    assert returned["status"] == "pending" and returned["session_id"] == session.session_id
    connection = broker.complete_connect_session(session.session_id, returned["completion_code"])

    # Then every backend route works through the client
    assert isinstance(connection, Connection) and connection.status == "active"
    assert connection.provider_user["email"] == "ada@example.com" and connection.tags == {"customer": "acme"}
    token = broker.token("py-oauth")
    assert token.auth_mode == "oauth2" and token.authorization.startswith("Bearer ")
    assert token.authorization not in repr(token)  # logging the object leaks no credential
    insightly = broker.proxy("py-oauth")
    me = insightly.get("Users/Me")
    assert me.status_code == 200 and me.json()["EMAIL_ADDRESS"] == "ada@example.com"
    created = insightly.post("Contacts", json={"FIRST_NAME": "Grace", "LAST_NAME": "Hopper"})
    assert created.status_code in (200, 201) and created.json()["CONTACT_ID"]
    assert insightly.get(f"Contacts/{created.json()['CONTACT_ID']}").json()["LAST_NAME"] == "Hopper"
    listed = [c.connection_id for c in broker.connections(tag={"customer": "acme"})]
    assert "py-oauth" in listed
    assert "py-oauth" not in [c.connection_id for c in broker.connections(tag={"customer": "other"})]
    updated = broker.update("py-oauth", tags={"customer": "acme", "plan": "pro"}, metadata={"seats": 3})
    assert updated.tags == {"customer": "acme", "plan": "pro"} and updated.metadata == {"seats": 3}
    assert broker.status("py-oauth").metadata == {"seats": 3}
    refreshed = broker.refresh("py-oauth")
    # expires_at has one-second resolution: a refresh in the same second keeps it, never moves it back
    assert refreshed.access_token != token.access_token and refreshed.expires_at >= token.expires_at
    broker.delete("py-oauth")
    with pytest.raises(NotFoundError) as gone:
        broker.status("py-oauth")
    assert (gone.value.status, gone.value.code) == (404, "connection_not_found")


def test_an_api_key_connection_through_every_route(broker, standin):
    account = standin("POST", "api-keys", {"pod": "na1"})
    connection = broker.put_api_key("py-key", account["api_key"], api_url=account["api_url"])
    assert connection.auth_mode == "api_key" and connection.pod == "na1"

    token = broker.token("py-key")
    assert token.authorization.startswith("Basic ") and token.api_base_url.endswith("/na1/v3.1")
    contacts = broker.proxy("py-key").get("Contacts", params={"top": 1, "count_total": "true"})
    assert contacts.status_code == 200 and contacts.headers["X-Total-Count"]
    assert broker.refresh("py-key").authorization == token.authorization  # the key checked, not replaced
    broker.delete("py-key")


def test_a_regenerated_key_raises_needs_reauth_on_every_route(broker, standin):
    account = standin("POST", "api-keys", {"pod": "na1"})
    broker.put_api_key("py-revoked", account["api_key"], pod="na1")
    standin("POST", "api-keys/regenerate", {"account": account["account"]})  # "Generate New API Key"

    with pytest.raises(NeedsReauthError) as refused:
        broker.refresh("py-revoked")
    assert (refused.value.status, refused.value.code) == (409, "needs_reauth")
    with pytest.raises(NeedsReauthError):
        broker.token("py-revoked")
    with pytest.raises(NeedsReauthError):
        broker.proxy("py-revoked").get("Users/Me")
    broker.delete("py-revoked")


def test_an_odd_proxy_path_reaches_the_broker_as_written_and_is_refused_there(broker, standin):
    """`..` must not be resolved by the client: `Contacts/../../token` would then be another
    route of the broker (the connection's token), signed and sent as if asked for."""
    account = standin("POST", "api-keys", {"pod": "na1"})
    broker.put_api_key("py-odd", account["api_key"], pod="na1")
    calls = standin("GET", "state")["calls"]

    for odd in ("Contacts/../../token", "Contacts/./1", "%2e%2e/token", "Contacts/@evil"):
        with pytest.raises(BadRequestError) as refused:
            broker.proxy("py-odd").get(odd)
        assert refused.value.code == "invalid_path", odd
    assert standin("GET", "state")["calls"] == calls  # nothing reached Insightly
    broker.delete("py-odd")


def test_a_webhook_from_the_stack_verifies_and_a_tampered_one_does_not(stack, broker, standin):
    account = standin("POST", "api-keys", {"pod": "na1"})
    broker.put_api_key("py-hook", account["api_key"], pod="na1")

    delivery = _delivery(stack, "py-hook", "Connected")
    event = webhooks.verify(stack.webhook_secret, delivery["headers"], delivery["body"].encode())
    assert event["type"] == "Connected" and event["connection_id"] == "py-hook"
    forged = json.dumps({**json.loads(delivery["body"]), "type": "Deleted"})
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(stack.webhook_secret, delivery["headers"], forged)
    broker.delete("py-hook")


def _delivery(stack, connection_id: str, kind: str, seconds: float = 20.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for delivery in requests.get(stack.inbox.url, timeout=5).json():
            body = json.loads(delivery["body"])
            if body.get("connection_id") == connection_id and body.get("type") == kind:
                return delivery
        time.sleep(0.2)
    raise AssertionError(f"no {kind} webhook for {connection_id}")


def test_a_role_assumed_from_the_session_signs_the_calls(stack, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", stack.local.moto_url)  # STS is the local moto server
    role = "arn:aws:iam::123456789012:role/insightly-connect-BrokerCallerRole"
    broker = Broker(stack.local.gateway_url, region=stack.local.region, session=local_session(stack),
                    role_arn=role, external_id="saas-7")
    with pytest.raises(AccessDeniedError):  # signed with the role's key, which this gateway does not know yet
        broker.status("py-nobody")

    assumed = broker._credentials.get_frozen_credentials()
    assert assumed.access_key != stack.local.access_key and assumed.token
    stack.local.gateway.verifier.credentials[assumed.access_key] = assumed.secret_key  # IAM now allows the role
    with pytest.raises(NotFoundError):  # through the gateway's signature check, to the broker
        broker.status("py-nobody")
