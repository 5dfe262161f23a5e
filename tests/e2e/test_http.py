"""The public contract over real HTTP, through the SigV4-checking gateway, against the stand-in."""

import time
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from local.schedule import Scheduler
from tests.support.signed import SignedCaller


def query(url: str) -> dict:
    return dict(parse_qsl(urlsplit(url).query))

pytestmark = pytest.mark.e2e


def connect(local, backend, connection_id: str, *, decision: str = "approve") -> str:
    """A browser's trip, hop by hop: connect URL -> broker -> stand-in consent -> callback; then
    the SaaS backend completes a pending connection (session binding). Answers the landing URL."""
    browser = requests.Session()
    created = backend.create_connect_session(connection_id, local.demo_url + "/")
    assert created.status_code == 201, created.text
    to_provider = browser.get(created.json()["connect_url"], allow_redirects=False, timeout=10)
    assert to_provider.status_code == 302 and to_provider.headers["Location"].startswith(local.provider_base_url)
    consent = browser.get(to_provider.headers["Location"], timeout=10)
    assert consent.status_code == 200 and 'id="approve"' in consent.text
    params = query(to_provider.headers["Location"])
    back = browser.post(f"{local.provider_base_url}/oauth2/authorize/decision",
                        data={**params, "decision": decision}, allow_redirects=False, timeout=10)
    assert back.status_code in (302, 303), back.text
    landing = browser.get(back.headers["Location"], allow_redirects=False, timeout=20)
    assert landing.status_code == 302
    returned = query(landing.headers["Location"])
    if returned.get("status") == "pending":
        assert returned["session_id"] == created.json()["session_id"]  # the SaaS's own session check
        completed = backend.complete_connect_session(returned["session_id"], returned["completion_code"])
        assert completed.status_code == 200 and completed.json()["status"] == "active", completed.text
    return landing.headers["Location"]


def test_the_whole_contract_over_http(local, backend):
    landing = connect(local, backend, "http-user")
    assert landing.startswith(local.demo_url + "/?status=pending&session_id=")

    status = backend.connection("http-user")
    assert status.status_code == 200 and status.json()["provider_user"]["name"] == "Ada Lovelace"
    token = backend.token("http-user")
    assert token.status_code == 200
    me = requests.get(f"{local.provider_base_url}/Users/Me", timeout=5,
                      headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert me.status_code == 200 and me.json()["EMAIL_ADDRESS"] == "ada@example.com"
    refreshed = backend.call("POST", "/connections/http-user/refresh")
    assert refreshed.status_code == 200 and refreshed.json()["access_token"] != token.json()["access_token"]
    assert backend.delete("http-user").status_code == 204
    gone = backend.connection("http-user")
    assert gone.status_code == 404 and gone.json()["error"] == "connection_not_found"


def test_backend_routes_refuse_unsigned_and_badly_signed_calls(local):
    unsigned = requests.post(f"{local.gateway_url}/connect-sessions", timeout=5,
                             json={"connection_id": "x", "return_to": local.demo_url + "/"})
    assert unsigned.status_code == 403
    forged = SignedCaller(local.gateway_url, local.region, local.access_key, "not-the-secret")
    assert forged.connection("x").status_code == 403
    public = requests.get(f"{local.gateway_url}/oauth/authorize", timeout=5)
    assert public.status_code == 400 and public.json()["error"] == "missing_session"


def test_consent_denied_stores_nothing(local, backend):
    denied = connect(local, backend, "denied-user", decision="deny")
    assert denied == local.demo_url + "/?status=error&error=access_denied"
    assert backend.connection("denied-user").status_code == 404


def wait_for(condition, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_scheduled_refresh_rotates_tokens_while_the_app_keeps_working(local, backend, standin):
    standin("POST", "config", {"access_ttl": 4})  # short-lived tokens: due after half their life
    connect(local, backend, "demo-user")  # the demo app's own user
    before, live_before = standin("GET", "state"), set(local.provider.current_refresh_tokens)

    time.sleep(2.5)
    assert Scheduler(local.stack).run_once() == {"enqueued": 1, "not_enqueued": 0}
    # the queue's event source hands the id to the refresh worker
    wait_for(lambda: standin("GET", "state")["calls"].get("refresh_token", 0) > before["calls"].get("refresh_token", 0))

    live_after = set(local.provider.current_refresh_tokens)
    assert len(live_after) == len(live_before) and live_after != live_before  # rotated: the old one retired
    wait_for(lambda: backend.connection("demo-user").json()["last_refreshed_at"])
    page = requests.post(f"{local.demo_url}/call", timeout=20)  # "Call Insightly" in the demo app
    assert page.status_code == 200 and 'id="call-result"' in page.text and "ada@example.com" in page.text
    assert backend.delete("demo-user").status_code == 204


def test_fault_switches_produce_the_documented_outcomes(local, backend, standin, saas_events):
    connect(local, backend, "faulty-user")
    refresh = lambda: backend.call("POST", "/connections/faulty-user/refresh")  # noqa: E731
    standin("POST", "config", {"retry_after": 1})

    standin("POST", "faults", {"fault": "429", "times": 1})  # a passing limit: waited out, then retried
    started, calls = time.monotonic(), standin("GET", "state")["calls"].get("token", 0)
    assert refresh().status_code == 200
    assert time.monotonic() - started >= 1 and standin("GET", "state")["calls"]["token"] == calls + 2

    standin("POST", "faults", {"fault": "429", "times": 3})  # a lasting one: 503 with the provider's Retry-After
    limited = refresh()
    assert limited.status_code == 503 and limited.json()["error"] == "provider_unavailable"
    assert limited.headers["Retry-After"] == "1"

    standin("POST", "faults", {"fault": "500", "times": 3})
    assert refresh().status_code == 503
    status = backend.connection("faulty-user").json()
    assert status["status"] == "active" and status["failing_since"]  # transient: cooled down, not marked

    assert refresh().status_code == 200  # and it recovers
    assert saas_events("faulty-user") == ["Connected", "RefreshFailed", "Recovered"]

    standin("POST", "faults", {"fault": "invalid_grant", "times": 1})
    dead = refresh()
    assert dead.status_code == 409 and dead.json()["error"] == "needs_reauth"
    assert backend.connection("faulty-user").json()["status"] == "needs_reauth"
    assert saas_events("faulty-user") == ["NeedsReauth"]


def test_a_provider_that_does_not_answer_is_timed_out_and_retried(local, backend, standin):
    connect(local, backend, "slow-user")
    standin("POST", "faults", {"fault": "timeout", "times": 1})
    calls = standin("GET", "state")["calls"].get("token", 0)

    started = time.monotonic()
    answer = backend.call("POST", "/connections/slow-user/refresh")

    assert answer.status_code == 200  # the broker's own read timeout fired, and the retry got through
    assert time.monotonic() - started < 15  # bounded by the broker's own timeouts, not the provider's
    assert standin("GET", "state")["calls"]["token"] == calls + 2
