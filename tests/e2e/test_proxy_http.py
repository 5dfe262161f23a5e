"""The proxy over real HTTP (issue 9, points 10-11): the SaaS backend's SigV4-signed calls to
ANY /connections/{id}/proxy/{path+} through the local gateway, the real handler and the
stand-in, for both credential kinds. The stand-in's switches (faults on the API, the daily
quota, a regenerated key, a revoked access token) reach the proxy paths, and its counters
(/_control/state) show what Insightly was asked."""

import pytest
import requests

from tests.e2e.test_api_key_http import connect_with_key
from tests.e2e.test_http import connect
from tests.support.signed import SignedCaller

pytestmark = pytest.mark.e2e

KINDS = ["oauth2", "api_key"]
ALLOWED = ("Content-Type", "X-RateLimit-Limit", "X-Total-Count")  # the allowed headers these answers carry


def connected(local, backend, standin, kind: str, connection_id: str) -> dict:
    """A connection of `kind`; answers its /token (for calling Insightly directly) and, for a
    key, the stand-in's account id."""
    account = {}
    if kind == "oauth2":
        connect(local, backend, connection_id)
    else:
        account = connect_with_key(local, backend, standin, connection_id)
    token = backend.token(connection_id)
    assert token.status_code == 200, token.text
    return {**token.json(), "account": account.get("account", "oauth")}


def proxied(backend: SignedCaller, connection_id: str, method: str, path: str, *, query=None, body=None,
            headers=None) -> requests.Response:
    return backend.call(method, f"/connections/{connection_id}/proxy/{path}", body, query=query,
                        headers={"Accept": "application/json", **(headers or {})})


def api_calls(standin) -> int:
    return standin("GET", "state")["calls"].get("api", 0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_proxied_get_equals_the_direct_call(local, backend, standin, kind):
    token = connected(local, backend, standin, kind, f"same-{kind}")
    direct_auth = {"Authorization": token["authorization"], "Accept": "application/json"}
    for n in range(7):
        created = requests.post(token["api_base_url"] + "/Contacts", headers=direct_auth, timeout=5,
                                json={"FIRST_NAME": f"Ada{n}", "LAST_NAME": "Lovelace"})
        assert created.status_code == 200
    direct = requests.get(token["api_base_url"] + "/Contacts", params={"top": "5", "count_total": "true"},
                          headers=direct_auth, timeout=5)

    answer = proxied(backend, f"same-{kind}", "GET", "Contacts", query={"top": "5", "count_total": "true"},
                     headers={"Cookie": "session=the-callers-own"})

    assert answer.status_code == direct.status_code == 200
    assert answer.json() == direct.json() and len(answer.json()) == 5
    assert {h: answer.headers.get(h) for h in ALLOWED} == {h: direct.headers.get(h) for h in ALLOWED}
    assert "X-RateLimit-Remaining" in answer.headers
    assert "Set-Cookie" in direct.headers and "Set-Cookie" not in answer.headers
    seen = local.provider.api_requests[-1]["headers"]  # what the proxied call sent to the stand-in
    assert seen["authorization"] == token["authorization"] and "cookie" not in seen
    assert not any(name.startswith("x-amz") for name in seen)


@pytest.mark.parametrize("kind", KINDS)
def test_the_demo_apps_buttons_go_through_the_proxy(local, backend, standin, kind):
    token = connected(local, backend, standin, kind, "demo-user")  # the demo app's own user
    calls, tokens_handed_out = api_calls(standin), len(local.provider.issued)

    me = requests.post(f"{local.demo_url}/call", timeout=20)
    contacts = requests.post(f"{local.demo_url}/contacts", timeout=20)

    assert me.status_code == 200 and 'id="call-result"' in me.text
    assert contacts.status_code == 200 and 'id="contacts-count"' in contacts.text
    assert api_calls(standin) == calls + 2
    assert [r["path"] for r in list(local.provider.api_requests)[-2:]] == ["/Users/Me", "/Contacts"]
    assert local.provider.api_requests[-1]["headers"]["authorization"] == token["authorization"]
    assert len(local.provider.issued) == tokens_handed_out  # no refresh along the way
    assert backend.delete("demo-user").status_code == 204


def test_a_503_is_retried_for_a_get_and_never_for_a_post(local, backend, standin):
    connected(local, backend, standin, "api_key", "flaky-user")
    standin("POST", "faults", {"fault": "503", "times": 1, "on": "api"})
    before = api_calls(standin)

    got = proxied(backend, "flaky-user", "GET", "Contacts")

    assert got.status_code == 200 and got.headers["X-Broker-Retries"] == "1"
    assert api_calls(standin) == before + 2
    standin("POST", "faults", {"fault": "503", "times": 1, "on": "api"})
    before = api_calls(standin)

    posted = proxied(backend, "flaky-user", "POST", "Contacts", body={"FIRST_NAME": "Once"})

    assert posted.status_code == 503 and "X-Broker-Retries" not in posted.headers
    assert "X-Broker-Error" not in posted.headers  # Insightly's own 503, passed on
    assert api_calls(standin) == before + 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_used_up_quota_is_answered_by_the_broker_without_calling_insightly(local, backend, standin, kind):
    token = connected(local, backend, standin, kind, f"quota-{kind}")
    standin("POST", "quota", {"account": token["account"], "remaining": 0})

    first = proxied(backend, f"quota-{kind}", "GET", "Contacts")
    calls = api_calls(standin)
    then = [proxied(backend, f"quota-{kind}", "GET", "Contacts") for _ in range(10)]

    assert first.status_code == 429 and "X-Broker-Error" not in first.headers  # Insightly's 429
    assert int(first.headers["Retry-After"]) > 0
    assert api_calls(standin) == calls  # 10 calls, 0 requests to Insightly
    assert {a.status_code for a in then} == {429}
    assert {a.headers["X-Broker-Error"] for a in then} == {"provider_quota_exhausted"}
    assert {a.json()["error"] for a in then} == {"provider_quota_exhausted"}
    assert all(int(a.headers["Retry-After"]) > 0 for a in then)


def test_a_regenerated_key_answers_409_needs_reauth_with_one_event(local, backend, standin, saas_events):
    token = connected(local, backend, standin, "api_key", "regenerated-user")
    assert saas_events("regenerated-user") == ["Connected"]
    standin("POST", "api-keys/regenerate", {"account": token["account"]})  # "Generate New API Key"
    checks = standin("GET", "state")["calls"].get("users_me", 0)

    first, second = (proxied(backend, "regenerated-user", "GET", "Contacts") for _ in range(2))

    assert first.status_code == second.status_code == 409
    assert first.json()["error"] == "needs_reauth" and first.headers["X-Broker-Error"] == "needs_reauth"
    assert standin("GET", "state")["calls"]["users_me"] == checks + 1  # confirmed once, then known
    assert backend.connection("regenerated-user").json()["status"] == "needs_reauth"
    assert saas_events("regenerated-user") == ["NeedsReauth"]


def test_a_revoked_access_token_is_refreshed_once_and_the_call_succeeds(local, backend, standin):
    token = connected(local, backend, standin, "oauth2", "expired-user")
    revoked = requests.post(f"{local.provider_base_url}/oauth2/revoke", timeout=5, data={
        "token": token["access_token"], "client_id": local.provider.client_id,
        "client_secret": local.provider.client_secret})
    assert revoked.status_code == 200  # Insightly now refuses the token the broker holds
    state = standin("GET", "state")["calls"]
    refreshes, calls = state.get("refresh_token", 0), state.get("api", 0)

    answer = proxied(backend, "expired-user", "GET", "Users/Me")

    assert answer.status_code == 200 and answer.json()["EMAIL_ADDRESS"] == "ada@example.com"
    state = standin("GET", "state")["calls"]
    assert state["refresh_token"] == refreshes + 1 and state["api"] == calls + 2  # the 401, then the retry
    assert proxied(backend, "expired-user", "GET", "Users/Me").status_code == 200
    assert standin("GET", "state")["calls"]["refresh_token"] == refreshes + 1  # the new token holds
