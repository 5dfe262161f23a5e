"""The Python client's requests and its handling of answers, against `responses` (no stack):
one method per route of docs/openapi.yaml, what is retried and what is not, which error type
each refusal raises, and the fields it only passes through (quota_group, the priority)."""

import json
import re

import botocore.session
import pytest
import requests
import responses
from urllib3.exceptions import NewConnectionError

from insightly_connect import (
    AccessDeniedError,
    ApiKeyRejectedError,
    BadRequestError,
    Broker,
    ClientRejectedError,
    NeedsReauthError,
    NotFoundError,
    QuotaExhaustedError,
    QuotaReservedError,
    ServerError,
    UnavailableError,
)
from tests.support.openapi import ANY_METHOD, METHODS, Contract

API = "https://abc123.execute-api.eu-west-1.amazonaws.com"
ANSWER = {"connection_id": "u-1", "status": "active", "auth_mode": "oauth2", "session_id": "s" * 43,
          "connect_url": API + "/oauth/authorize?session=x", "api_base_url": "https://api.insightly.com/v3.1",
          "authorization": "Bearer t", "expires_at": "2026-01-01T00:00:00Z", "connections": [], "next_cursor": None}

# One client call per backend operation of docs/openapi.yaml (operationId -> call).
CALLS = {
    "createConnectSession": lambda b: b.create_connect_session("u-1", "https://app.example.com/"),
    "completeConnectSession": lambda b: b.complete_connect_session("s" * 43, "c" * 43),
    "listConnections": lambda b: list(b.connections(status="active")),
    "getConnection": lambda b: b.status("u-1"),
    "patchConnection": lambda b: b.update("u-1", tags={"plan": "pro"}),
    "deleteConnection": lambda b: b.delete("u-1"),
    "putApiKey": lambda b: b.put_api_key("u-1", "k" * 36, pod="na1"),
    "getToken": lambda b: b.token("u-1"),
    "forceRefresh": lambda b: b.refresh("u-1"),
    "proxy": lambda b: b.proxy("u-1").request("OPTIONS", "Contacts"),
    "proxyGet": lambda b: b.proxy("u-1").get("Contacts/42"),
    "proxyPost": lambda b: b.proxy("u-1").post("Contacts", json={"FIRST_NAME": "Ada"}),
    "proxyPut": lambda b: b.proxy("u-1").put("Contacts", json={"CONTACT_ID": 42}),
    "proxyPatch": lambda b: b.proxy("u-1").patch("Contacts", json={"CONTACT_ID": 42}),
    "proxyDelete": lambda b: b.proxy("u-1").delete("Contacts/42"),
}


@pytest.fixture
def broker():
    session = botocore.session.Session()
    session.set_credentials("AKIDEXAMPLE", "secret")
    with Broker(API, session=session, max_attempts=3) as client:
        yield client


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def sleeps(monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr("insightly_connect.client.time.sleep", waited.append)
    return waited


def answer(mocked, method: str, status: int, body: dict | None = None, headers: dict | None = None) -> None:
    mocked.add(method, re.compile(re.escape(API) + ".*"), status=status, headers=headers,
               body=json.dumps(body) if body is not None else "")


def backend_operations() -> dict[str, tuple[str, str]]:
    found = {}
    for path, item in Contract().document["paths"].items():
        for method in (*METHODS, ANY_METHOD):
            operation = item.get(method)
            if operation and {"sigv4"} == {name for r in operation.get("security", []) for name in r}:
                found[operation["operationId"]] = (method, path)
    return found


def test_every_backend_route_of_the_openapi_document_has_a_client_method(broker, mocked):
    operations = backend_operations()
    assert set(operations) - set(CALLS) == set(), "routes in docs/openapi.yaml without a client method"
    contract = Contract()
    for operation_id, call in CALLS.items():
        mocked.calls.reset()
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            answer(mocked, method, 200, ANSWER)
        call(broker)
        sent = mocked.calls[-1].request
        path = sent.path_url.partition("?")[0]
        routed = contract.operation(sent.method, path)
        assert routed is not None and routed["operationId"] == operation_id, (operation_id, sent.method, path)
        assert sent.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/eu-west-1/execute-api/aws4_request" in sent.headers["Authorization"]


def test_quota_group_and_priority_are_passed_through(broker, mocked):
    answer(mocked, "POST", 201, ANSWER)
    answer(mocked, "PATCH", 200, ANSWER)
    answer(mocked, "GET", 200, {})

    broker.create_connect_session("u-1", "https://app.example.com/", quota_group="customer-7")
    broker.update("u-1", quota_group="customer-7")
    broker.proxy("u-1", priority="background").get("Contacts")

    created, updated, proxied = (call.request for call in mocked.calls)
    assert json.loads(created.body)["quota_group"] == "customer-7"
    assert json.loads(updated.body) == {"quota_group": "customer-7"}
    assert proxied.headers["X-Broker-Priority"] == "background"
    assert "x-broker-priority" in proxied.headers["Authorization"]  # signed, so it cannot be swapped


def test_fields_not_given_are_not_sent(broker, mocked):
    answer(mocked, "POST", 201, ANSWER)
    broker.create_connect_session("u-1", "https://app.example.com/")
    assert json.loads(mocked.calls[0].request.body) == {"connection_id": "u-1",
                                                        "return_to": "https://app.example.com/"}


def test_a_passing_state_of_the_broker_is_retried_after_its_retry_after(broker, mocked, sleeps):
    answer(mocked, "GET", 503, {"error": "refresh_in_progress", "message": "busy"}, {"Retry-After": "1"})
    answer(mocked, "GET", 200, ANSWER)

    token = broker.token("u-1")

    assert token.authorization == "Bearer t" and len(mocked.calls) == 2 and sleeps == [1.0]


def test_api_gateway_throttling_is_retried_with_backoff(broker, mocked, sleeps):
    answer(mocked, "GET", 429, {"message": "Too Many Requests"})
    answer(mocked, "GET", 200, ANSWER)

    assert broker.status("u-1").status == "active"
    assert len(mocked.calls) == 2 and len(sleeps) == 1 and 0 <= sleeps[0] <= 0.2


def test_a_retry_after_longer_than_max_retry_wait_is_not_waited_out(broker, mocked, sleeps):
    answer(mocked, "GET", 503, {"error": "vault_unavailable", "message": "later"}, {"Retry-After": "3600"})

    with pytest.raises(UnavailableError) as refused:
        broker.token("u-1")
    assert refused.value.retry_after == 3600 and len(mocked.calls) == 1 and sleeps == []


def test_retries_stop_after_max_attempts(broker, mocked, sleeps):
    answer(mocked, "GET", 503, {"error": "storage_unavailable", "message": "later"})

    with pytest.raises(UnavailableError):
        list(broker.connections())
    assert len(mocked.calls) == 3 and len(sleeps) == 2


def test_calls_that_are_not_idempotent_are_sent_once(broker, mocked, sleeps):
    answer(mocked, "POST", 503, {"error": "storage_unavailable", "message": "later"})

    with pytest.raises(UnavailableError):
        broker.create_connect_session("u-1", "https://app.example.com/")
    with pytest.raises(UnavailableError):
        broker.complete_connect_session("s" * 43, "c" * 43)
    assert len(mocked.calls) == 2 and sleeps == []


def test_the_providers_troubles_already_retried_by_the_broker_are_not_retried_again(broker, mocked, sleeps):
    answer(mocked, "GET", 503, {"error": "provider_unavailable", "message": "Insightly is down"})

    with pytest.raises(UnavailableError):
        broker.token("u-1")
    assert len(mocked.calls) == 1


def test_a_call_that_never_reached_the_broker_is_retried_even_when_not_idempotent(broker, mocked, sleeps):
    refused = requests.ConnectionError(NewConnectionError(None, "connection refused"))
    mocked.add("POST", re.compile(re.escape(API) + ".*"), body=refused)
    answer(mocked, "POST", 201, ANSWER)

    assert broker.create_connect_session("u-1", "https://app.example.com/").session_id == "s" * 43
    assert len(mocked.calls) == 2


def test_a_post_whose_answer_was_lost_is_not_sent_again(broker, mocked, sleeps):
    mocked.add("POST", re.compile(re.escape(API) + ".*"), body=requests.ReadTimeout("no answer"))

    with pytest.raises(requests.ReadTimeout):
        broker.create_connect_session("u-1", "https://app.example.com/")
    assert len(mocked.calls) == 1


def test_insightlys_own_answers_come_back_as_they_are_and_are_not_retried(broker, mocked, sleeps):
    answer(mocked, "GET", 503, {"message": "Insightly is down"})

    answered = broker.proxy("u-1").get("Contacts")

    assert answered.status_code == 503 and len(mocked.calls) == 1


@pytest.mark.parametrize(("status", "body", "headers", "error", "code"), [
    (409, {"error": "needs_reauth", "message": "m"}, {}, NeedsReauthError, "needs_reauth"),
    (404, {"error": "connection_not_found", "message": "m"}, {}, NotFoundError, "connection_not_found"),
    (429, {"error": "provider_quota_exhausted", "message": "m"}, {"Retry-After": "120"}, QuotaExhaustedError,
     "provider_quota_exhausted"),
    (429, {"error": "quota_reserved", "message": "m"}, {}, QuotaReservedError, "quota_reserved"),
    (503, {"error": "client_rejected", "message": "m"}, {}, ClientRejectedError, "client_rejected"),
    (422, {"error": "api_key_rejected", "message": "m"}, {}, ApiKeyRejectedError, "api_key_rejected"),
    (400, {"error": "invalid_tags", "message": "m"}, {}, BadRequestError, "invalid_tags"),
    (403, {"message": "The security token included in the request is invalid."}, {}, AccessDeniedError, None),
    (500, {"error": "misconfigured", "message": "m"}, {}, ServerError, "misconfigured"),
])
def test_refusals_raise_the_error_type_of_their_code(broker, mocked, sleeps, status, body, headers, error, code):
    answer(mocked, "PUT", status, body, headers)

    with pytest.raises(error) as raised:
        broker.put_api_key("u-1", "k" * 36, pod="na1")
    assert (raised.value.status, raised.value.code) == (status, code)
    assert type(raised.value) is error


def test_the_brokers_refusals_through_the_proxy_raise_by_x_broker_error(broker, mocked, sleeps):
    answer(mocked, "GET", 429, {"error": "provider_quota_exhausted", "message": "m"},
           {"X-Broker-Error": "provider_quota_exhausted", "Retry-After": "120"})

    with pytest.raises(QuotaExhaustedError) as refused:
        broker.proxy("u-1").get("Contacts")
    assert refused.value.retry_after == 120 and len(mocked.calls) == 1


def test_the_region_is_read_from_an_execute_api_url():
    session = botocore.session.Session()
    session.set_credentials("AKIDEXAMPLE", "secret")
    assert Broker("https://abc.execute-api.ap-southeast-2.amazonaws.com/", session=session).region == "ap-southeast-2"


def test_a_path_is_sent_exactly_as_written(broker, mocked):
    answer(mocked, "GET", 200, {})
    broker.proxy("user@example.com").get("Contacts/../x y/%2e", params={"top": 5})
    assert mocked.calls[0].request.url == (API + "/connections/user%40example.com/proxy/Contacts/../x%20y/%252e?top=5")
