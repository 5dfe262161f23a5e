"""The Insightly stand-in over real loopback HTTP: consent page, grants, API, faults, control."""

from __future__ import annotations

import base64
import hashlib
import time
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from broker.credentials.client_credentials import ClientCredentials
from broker.credentials.provider import ProviderClient
from broker.platform.config import ProviderSettings
from broker.platform.errors import ProviderRejected, ProviderUnavailable
from local.fake_insightly import FakeInsightly
from local.standin import StandIn

REDIRECT_URI = "http://127.0.0.1:3000/oauth/callback"
VERIFIER = "v" * 43
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


@pytest.fixture
def standin():
    server = StandIn(provider=FakeInsightly(), timeout_seconds=0.5).start()
    yield server
    server.stop()


def authorize_params(provider: FakeInsightly, **extra) -> dict[str, str]:
    return {"response_type": "code", "client_id": provider.client_id, "redirect_uri": REDIRECT_URI,
            "state": "st<ate>&\"x", "scope": "read write", "code_challenge": CHALLENGE,
            "code_challenge_method": "S256", **extra}


class FormParser(HTMLParser):
    """The consent page's form, as a browser would submit it."""

    def __init__(self):
        super().__init__()
        self.action, self.fields, self.buttons = None, [], {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs["action"]
        elif tag == "input" and attrs.get("type") == "hidden":
            self.fields.append((attrs["name"], attrs["value"]))
        elif tag == "button":
            self.buttons[attrs["id"]] = (attrs["name"], attrs["value"])


def consent(standin: StandIn, params: dict[str, str]) -> requests.Response:
    return requests.get(f"{standin.base_url}/oauth2/authorize", params=params, timeout=5)


def decide(standin: StandIn, params: dict[str, str], button: str) -> requests.Response:
    page = consent(standin, params)
    assert page.status_code == 200, page.text
    form = FormParser()
    form.feed(page.text)
    return requests.post(form.action, data=form.fields + [form.buttons[button]], allow_redirects=False, timeout=5)


def code_for(standin: StandIn) -> str:
    answer = decide(standin, authorize_params(standin.provider), "approve")
    return dict(parse_qsl(urlsplit(answer.headers["Location"]).query))["code"]


def token(standin: StandIn, form: dict[str, str], *, basic: bool = False, timeout: float = 5) -> requests.Response:
    provider = standin.provider
    auth = (provider.client_id, provider.client_secret) if basic else None
    if not basic:
        form = {**form, "client_id": provider.client_id, "client_secret": provider.client_secret}
    return requests.post(f"{standin.base_url}/oauth2/token", data=form, auth=auth, timeout=timeout)


def exchange(standin: StandIn, **kwargs) -> requests.Response:
    return token(standin, {"grant_type": "authorization_code", "code": code_for(standin),
                           "redirect_uri": REDIRECT_URI, "code_verifier": VERIFIER}, **kwargs)


def control(standin: StandIn, what: str, body: dict | None = None) -> requests.Response:
    if body is None and what == "state":
        return requests.get(f"{standin.url}/_control/state", timeout=5)
    return requests.post(f"{standin.url}/_control/{what}", json=body or {}, timeout=5)


# -- consent page ------------------------------------------------------------------------------

def test_the_provider_urls_are_the_standin_urls(standin):
    assert standin.url.startswith("http://127.0.0.1:") and standin.base_url == standin.url + "/v3.1"
    assert standin.provider.base_url == standin.base_url


def test_the_consent_page_shows_client_and_scopes_escaped(standin):
    page = consent(standin, authorize_params(standin.provider, scope="contacts <script>x</script>"))
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert standin.provider.client_id in page.text
    assert "<code>contacts</code>" in page.text and "&lt;script&gt;" in page.text and "<script>" not in page.text
    assert 'id="approve"' in page.text and 'id="deny"' in page.text
    assert "st&lt;ate&gt;&amp;&quot;x" in page.text  # the state travels in a hidden field, escaped


def test_approve_redirects_to_the_redirect_uri_with_code_and_state(standin):
    answer = decide(standin, authorize_params(standin.provider), "approve")
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    query = dict(parse_qsl(urlsplit(location).query))
    assert query["state"] == "st<ate>&\"x" and query["code"] in standin.provider.codes


def test_deny_redirects_with_access_denied(standin):
    answer = decide(standin, authorize_params(standin.provider), "deny")
    assert answer.status_code == 302
    assert dict(parse_qsl(urlsplit(answer.headers["Location"]).query)) == {"error": "access_denied",
                                                                           "state": "st<ate>&\"x"}
    assert standin.provider.codes == {}


@pytest.mark.parametrize("bad", [{"client_id": "someone-else"}, {"response_type": "token"},
                                 {"redirect_uri": "javascript:alert(1)"}])
def test_an_invalid_request_gets_a_400_page_and_no_redirect(standin, bad):
    page = consent(standin, authorize_params(standin.provider, **bad))
    assert page.status_code == 400 and "Invalid authorization request" in page.text
    forged = requests.post(f"{standin.base_url}/oauth2/authorize/decision", allow_redirects=False, timeout=5,
                           data={**authorize_params(standin.provider, **bad), "decision": "approve"})
    assert forged.status_code == 400 and "Location" not in forged.headers


def test_only_registered_redirect_uris_are_accepted_once_some_are_registered(standin):
    elsewhere = "http://127.0.0.1:3001/oauth/callback"
    standin.provider.redirect_uris = [REDIRECT_URI]
    assert consent(standin, authorize_params(standin.provider)).status_code == 200
    page = consent(standin, authorize_params(standin.provider, redirect_uri=elsewhere))
    assert page.status_code == 400 and "not registered" in page.text
    forged = requests.post(f"{standin.base_url}/oauth2/authorize/decision", allow_redirects=False, timeout=5,
                           data={**authorize_params(standin.provider, redirect_uri=elsewhere), "decision": "approve"})
    assert forged.status_code == 400 and "Location" not in forged.headers
    standin.provider.redirect_uris = []  # none registered: any http(s) URI, as the in-process tests use
    assert consent(standin, authorize_params(standin.provider, redirect_uri=elsewhere)).status_code == 200


def test_stop_cuts_keep_alive_connections():
    server = StandIn(provider=FakeInsightly()).start()
    session = requests.Session()
    assert session.get(f"{server.url}/_control/state", timeout=5).status_code == 200
    server.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{server.url}/_control/state", timeout=2)


def test_the_python_api_still_approves_a_url(standin):
    url = f"{standin.base_url}/oauth2/authorize?{urlencode(authorize_params(standin.provider))}"
    assert "code=" in standin.provider.approve(url) and "error=access_denied" in standin.provider.deny(url)


# -- token endpoint and API --------------------------------------------------------------------

@pytest.mark.parametrize("basic", [False, True], ids=["client_secret_post", "client_secret_basic"])
def test_code_exchange_with_pkce(standin, basic):
    answer = exchange(standin, basic=basic)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["access_token"].startswith("at-") and body["refresh_token"].startswith("rt-")
    assert answer.headers["Cache-Control"] == "no-store"


def test_a_code_is_single_use_and_needs_the_right_verifier(standin):
    code = code_for(standin)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": "w" * 43}
    assert token(standin, form).json()["error"] == "invalid_grant"  # wrong verifier (and the code is spent)
    assert token(standin, {**form, "code_verifier": VERIFIER}).status_code == 400


def test_a_wrong_client_secret_is_invalid_client(standin):
    answer = requests.post(f"{standin.base_url}/oauth2/token", auth=(standin.provider.client_id, "nope"),
                           data={"grant_type": "refresh_token", "refresh_token": "x"}, timeout=5)
    assert answer.status_code == 401 and answer.json() == {"error": "invalid_client"}


def test_refresh_rotates_the_refresh_token(standin):
    first = exchange(standin).json()["refresh_token"]
    second = token(standin, {"grant_type": "refresh_token", "refresh_token": first}).json()
    assert second["refresh_token"] != first and second["access_token"]
    again = token(standin, {"grant_type": "refresh_token", "refresh_token": first})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert control(standin, "state").json()["current_refresh_tokens"] == 1


def test_users_me_needs_a_live_bearer_token(standin):
    access = exchange(standin).json()["access_token"]
    me = requests.get(f"{standin.base_url}/Users/Me", timeout=5,
                      headers={"Authorization": f"Bearer {access}", "Accept": "application/json"})
    assert me.status_code == 200 and me.json()["EMAIL_ADDRESS"] == "ada@example.com"
    anonymous = requests.get(f"{standin.base_url}/Users/Me", timeout=5)
    assert anonymous.status_code == 401


def test_revoke_forgets_the_token(standin):
    refresh = exchange(standin).json()["refresh_token"]
    provider = standin.provider
    answer = requests.post(f"{standin.base_url}/oauth2/revoke", timeout=5, data={
        "token": refresh, "token_type_hint": "refresh_token",
        "client_id": provider.client_id, "client_secret": provider.client_secret})
    assert answer.status_code == 200
    state = control(standin, "state").json()
    assert state["revoked"] == 1 and state["current_refresh_tokens"] == 0
    assert token(standin, {"grant_type": "refresh_token", "refresh_token": refresh}).status_code == 400


def test_unknown_paths_and_methods(standin):
    assert requests.get(f"{standin.base_url}/Opportunities", timeout=5).status_code == 404
    assert requests.get(f"{standin.base_url}/oauth2/token", timeout=5).status_code == 405


# -- faults --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "status", "error"), [
    ("429", 429, "rate_limited"), ("500", 500, "server_error"),
    ("invalid_grant", 400, "invalid_grant"), ("invalid_client", 401, "invalid_client")])
def test_a_fault_is_the_status_the_broker_sees(standin, fault, status, error):
    refresh = exchange(standin).json()["refresh_token"]
    assert control(standin, "faults", {"fault": fault, "times": 2}).json()["pending_faults"] == [fault, fault]
    for _ in range(2):
        answer = token(standin, {"grant_type": "refresh_token", "refresh_token": refresh})
        assert answer.status_code == status and answer.json()["error"] == error
    if fault == "429":
        assert answer.headers["Retry-After"] == "7"
    assert token(standin, {"grant_type": "refresh_token", "refresh_token": refresh}).status_code == 200


def test_the_timeout_fault_lets_the_callers_timeout_fire_then_answers_504(standin):
    control(standin, "faults", {"fault": "timeout", "times": 2})
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        token(standin, {"grant_type": "refresh_token", "refresh_token": "x"}, timeout=0.1)
    assert time.monotonic() - started < 0.45
    late = token(standin, {"grant_type": "refresh_token", "refresh_token": "x"})  # waits out timeout_seconds
    assert late.status_code == 504


@pytest.mark.parametrize(("fault", "raised"), [
    ("429", ProviderUnavailable), ("500", ProviderUnavailable), ("timeout", ProviderUnavailable),
    ("invalid_grant", ProviderRejected), ("invalid_client", ProviderRejected)])
def test_the_brokers_provider_client_maps_each_fault(standin, fault, raised):
    refresh = exchange(standin).json()["refresh_token"]
    settings = ProviderSettings(
        authorize_url=f"{standin.base_url}/oauth2/authorize", token_url=f"{standin.base_url}/oauth2/token",
        api_base_url=standin.base_url, userinfo_path="/Users/Me", revocation_url=f"{standin.base_url}/oauth2/revoke",
        scopes="", use_pkce=True, token_auth_method="client_secret_post", issuer="")
    client = ProviderClient(settings, timeout=(1, 0.2))
    creds = ClientCredentials(standin.provider.client_id, standin.provider.client_secret)
    control(standin, "faults", {"fault": fault})
    with pytest.raises(raised) as caught:
        client.refresh(creds, refresh)
    if fault == "429":
        assert caught.value.retry_after == 7
    assert client.refresh(creds, refresh).access_token  # the fault was used up


# -- control -----------------------------------------------------------------------------------

def test_config_changes_ttl_rotation_and_refresh_issuing(standin):
    answer = control(standin, "config", {"access_ttl": 5, "rotate_refresh_tokens": False})
    assert answer.status_code == 200 and answer.json()["access_ttl"] == 5
    body = exchange(standin).json()
    assert body["expires_in"] == 5
    same = token(standin, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}).json()
    assert "refresh_token" not in same  # not rotated: the old one stays valid
    assert token(standin, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}).status_code == 200
    control(standin, "config", {"issue_refresh_tokens": False, "access_ttl": None})
    bare = exchange(standin).json()
    assert "refresh_token" not in bare and "expires_in" not in bare


def test_latency_delays_provider_calls_but_not_control(standin):
    assert control(standin, "config", {"latency_ms": 150}).json()["latency_ms"] == 150
    started = time.monotonic()
    requests.get(f"{standin.base_url}/Users/Me", timeout=5)
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    control(standin, "state")
    assert time.monotonic() - started < 0.15


@pytest.mark.parametrize("body", [{"fault": "teapot"}, {"fault": "500", "times": 0}, {"fault": "500", "times": "2"}])
def test_bad_fault_requests_are_400(standin, body):
    assert control(standin, "faults", body).status_code == 400
    assert control(standin, "state").json()["pending_faults"] == []


@pytest.mark.parametrize("body", [{"latency_ms": -1}, {"access_ttl": 0}, {"rotate_refresh_tokens": "yes"},
                                  {"colour": "blue"}, {"latency_ms": 5, "access_ttl": "x"}])
def test_bad_config_is_400_and_changes_nothing(standin, body):
    before = control(standin, "state").json()["config"]
    assert control(standin, "config", body).status_code == 400
    assert control(standin, "state").json()["config"] == before


def test_control_rejects_a_body_that_is_not_json(standin):
    answer = requests.post(f"{standin.url}/_control/config", data="nope", timeout=5)
    assert answer.status_code == 400


def test_state_counts_calls_without_token_values_and_reset_restores(standin):
    exchange(standin)
    control(standin, "config", {"latency_ms": 1, "access_ttl": 9})
    control(standin, "faults", {"fault": "500"})
    state = control(standin, "state").json()
    assert state["calls"]["token"] == 1 and state["calls"]["authorization_code"] == 1
    assert state["current_refresh_tokens"] == 1 and state["pending_faults"] == ["500"]
    assert not any(t in str(state) for t in standin.provider.issued)
    reset = control(standin, "reset").json()
    assert reset["calls"] == {} and reset["pending_faults"] == []
    assert reset["config"]["access_ttl"] == 3600 and reset["config"]["latency_ms"] == 0
    assert reset["current_refresh_tokens"] == 1  # tokens survive a plain reset
    assert control(standin, "reset", {"tokens": True}).json()["current_refresh_tokens"] == 0


def test_from_env_reads_ttl_and_latency():
    configured = StandIn.from_env(environ={"STANDIN_ACCESS_TTL": "30", "STANDIN_LATENCY_MS": "5"})
    defaults = StandIn.from_env(environ={})
    configured.stop(), defaults.stop()  # never started: stop() just frees the port
    assert configured.provider.access_ttl == 30 and configured.latency_ms == 5
    assert defaults.provider.access_ttl == 120 and defaults.latency_ms == 0


def test_concurrent_refreshes_are_consistent(standin):
    from concurrent.futures import ThreadPoolExecutor

    refreshes = [exchange(standin).json()["refresh_token"] for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: token(standin, {"grant_type": "refresh_token", "refresh_token": r}),
                                refreshes * 2))
    assert sorted(a.status_code for a in answers) == [200] * 8 + [400] * 8  # each token rotates exactly once
    assert control(standin, "state").json()["current_refresh_tokens"] == 8


# -- the API-key side: per-pod Basic-auth API, quota, control switches --------------------------

def issue_key(standin: StandIn, **body) -> dict:
    answer = control(standin, "api-keys", {"pod": "na1", **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_key_from_control_connects_through_the_broker_client_at_its_pod_url(standin):
    from broker.credentials.insightly import ApiKeyAuth, ApiUrlTemplate, InsightlyApi

    issued = issue_key(standin, pod="eu1")
    assert issued["api_url"] == f"{standin.url}/eu1/v3.1" == standin.api_url_template.replace("{pod}", "eu1")
    template = ApiUrlTemplate(standin.api_url_template)
    base = template.base_url(template.parse(issued["api_url"] + "/"))
    user, rate = InsightlyApi().users_me(base, ApiKeyAuth(issued["api_key"]))
    assert user["id"] and (rate.limit, rate.remaining) == (1000, 999)


def test_a_key_answers_only_on_its_own_pod(standin):
    issued = issue_key(standin, pod="na1")
    auth = (issued["api_key"], "")
    assert requests.get(f"{standin.url}/na1/v3.1/Users/Me", auth=auth, timeout=5).status_code == 200
    assert requests.get(f"{standin.url}/eu1/v3.1/Users/Me", auth=auth, timeout=5).status_code == 401
    assert requests.get(f"{standin.base_url}/Users/Me", auth=auth, timeout=5).status_code == 401


def test_regenerate_over_control_revokes_the_old_key(standin):
    issued = issue_key(standin)
    fresh = control(standin, "api-keys/regenerate", {"account": issued["account"]}).json()
    url = f"{issued['api_url']}/Users/Me"
    assert requests.get(url, auth=(issued["api_key"], ""), timeout=5).status_code == 401
    assert requests.get(url, auth=(fresh["api_key"], ""), timeout=5).status_code == 200


def test_quota_over_control_and_429_when_used_up(standin):
    issued = issue_key(standin, daily_limit=100)
    assert control(standin, "quota", {"account": issued["account"], "remaining": 1}).json() == {
        "limit": 100, "remaining": 1}
    url, auth = f"{issued['api_url']}/Users/Me", (issued["api_key"], "")
    last = requests.get(url, auth=auth, timeout=5)
    assert last.status_code == 200 and last.headers["X-RateLimit-Remaining"] == "0"
    refused = requests.get(url, auth=auth, timeout=5)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert control(standin, "state").json()["accounts"][issued["account"]]["remaining"] == 0
    assert control(standin, "reset").json()["accounts"][issued["account"]]["remaining"] == 100


def test_contacts_over_http_for_a_key_and_a_bearer_token(standin):
    issued = issue_key(standin)
    access = exchange(standin).json()["access_token"]
    for base, headers in ((issued["api_url"], {"Authorization": requests.auth._basic_auth_str(issued["api_key"], "")}),
                          (standin.base_url, {"Authorization": f"Bearer {access}"})):
        made = requests.post(f"{base}/Contacts", json={"LAST_NAME": "Byron"}, headers=headers, timeout=5)
        assert made.status_code == 200 and made.json()["CONTACT_ID"] == 1
        listed = requests.get(f"{base}/Contacts?top=10&skip=0&count_total=true", headers=headers, timeout=5)
        assert listed.json()[0]["LAST_NAME"] == "Byron" and listed.headers["X-Total-Count"] == "1"
        assert requests.get(f"{base}/Contacts/1", headers=headers, timeout=5).json()["LAST_NAME"] == "Byron"
        assert "X-RateLimit-Limit" in listed.headers
    assert requests.get(f"{standin.base_url}/Contacts", timeout=5).status_code == 401


def test_api_faults_and_latency_reach_the_pod_routes(standin):
    issued = issue_key(standin)
    url, auth = f"{issued['api_url']}/Users/Me", (issued["api_key"], "")
    assert control(standin, "faults", {"fault": "500", "on": "api"}).json()["pending_api_faults"] == ["500"]
    assert requests.get(url, auth=auth, timeout=5).status_code == 500
    control(standin, "faults", {"fault": "timeout", "on": "api"})
    with pytest.raises(requests.ReadTimeout):
        requests.get(url, auth=auth, timeout=0.2)
    control(standin, "config", {"latency_ms": 150})
    started = time.monotonic()
    assert requests.get(url, auth=auth, timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize(("what", "body"), [
    ("faults", {"fault": "invalid_grant", "on": "api"}), ("faults", {"fault": "500", "on": "moon"}),
    ("api-keys", {"pod": "evil.example"}), ("api-keys", {"daily_limit": -1}), ("api-keys", {"user": "ada"}),
    ("api-keys", {"colour": "blue"}), ("api-keys/regenerate", {"account": "acct-404"}),
    ("api-keys/regenerate", {"account": "oauth"}), ("quota", {"account": "acct-404", "remaining": 1}),
    ("quota", {"account": "oauth", "remaining": "1"}), ("quota", {"account": "oauth", "remaining": -1}),
    ("quota", {"account": "oauth", "extra": 1}),
])
def test_bad_api_key_control_requests_are_400(standin, what, body):
    before = control(standin, "state").json()
    assert control(standin, what, body).status_code == 400
    assert control(standin, "state").json() == before


def test_state_counts_keys_but_never_shows_one(standin):
    issued = issue_key(standin)
    control(standin, "api-keys/regenerate", {"account": issued["account"]})
    state = control(standin, "state").json()
    assert state["live_api_keys"] == 1 and state["revoked_api_keys"] == 1
    assert not any(key in str(state) for key in standin.provider.issued)
    assert control(standin, "reset", {"tokens": True}).json()["live_api_keys"] == 0
