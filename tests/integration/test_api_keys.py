"""API-key connections (issue 8): the key page, the backend's PUT route, health checks, quota,
and /token for both kinds. Handlers in-process under moto; Insightly is the fake's per-pod
Basic-auth API behind `responses`."""

import base64
import json
import time
from urllib.parse import urlencode

import pytest
import requests

from broker.connect import key_page
from broker.http.api import KEY_PAGE_COOKIE
from tests.integration.test_connect_flow import connection_item
from tests.integration.test_scheduler import refresh_in_background
from tests.integration.test_tokens import make_due
from tests.support.inprocess import RETURN_TO, query_of


@pytest.fixture
def account(provider):
    return provider.issue_api_key("eu1")


def key_session(broker, connection_id="user-1"):
    answer = broker.call("POST", "/connect-sessions", body={
        "connection_id": connection_id, "return_to": RETURN_TO, "auth_mode": "api_key"})
    assert answer.status == 201, answer.body
    return answer


def api_calls(provider) -> int:
    return provider.calls["api"]


# -- connect sessions choose the kind ------------------------------------------------------------

def test_an_api_key_session_leads_to_the_key_page(broker):
    answer = key_session(broker)

    assert answer.json["auth_mode"] == "api_key"
    assert answer.json["connect_url"].split("?")[0].endswith("/connect/api-key")


def test_an_unknown_auth_mode_is_refused_and_writes_nothing(broker, dynamodb, stack):
    answer = broker.call("POST", "/connect-sessions", body={
        "connection_id": "user-1", "return_to": RETURN_TO, "auth_mode": "password"})

    assert answer.status == 400 and answer.json["error"] == "invalid_auth_mode"
    assert dynamodb.scan(TableName=stack.refs["FlowTable"])["Items"] == []


def test_a_key_page_session_does_not_start_an_oauth_flow_nor_is_it_spent_by_trying(broker, account):
    session = key_session(broker)

    wrong = broker.authorize(session.json["connect_url"].replace("/connect/api-key", "/oauth/authorize"))

    assert wrong.status == 400 and wrong.json["error"] == "invalid_session"
    assert broker.open_key_page(session.json["connect_url"]).status == 200  # still usable


# -- the key page --------------------------------------------------------------------------------

def test_the_page_is_a_locked_down_form_with_a_csrf_cookie(broker):
    page = broker.open_key_page(key_session(broker).json["connect_url"])

    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    cookie = page.cookie("ic_key_page")
    assert cookie["httponly"] and cookie["samesite"].lower() == "lax" and cookie["path"].endswith("/connect/api-key")
    assert 'type="password"' in page.body and 'name="api_url"' in page.body


def test_a_wrong_key_shows_the_error_and_stores_nothing(broker, provider, account, dynamodb, stack):
    page = broker.open_key_page(key_session(broker).json["connect_url"])

    answer = broker.submit_key(page, "not-the-right-key-123", account["api_url"])

    assert answer.status == 422 and "Insightly did not accept this API key" in answer.body
    assert connection_item(dynamodb, stack, "user-1") is None
    assert api_calls(provider) == 1
    # The session is not spent: the right key still connects in the same page.
    assert broker.submit_key(answer, account["api_key"], account["api_url"]).status == 302


def test_the_right_key_with_the_pasted_api_url_connects(broker, provider, account):
    pasted = "  HTTPS://API.EU1.INSIGHTLY.COM/v3.1/ \n"  # as copied from User Settings -> API

    landing = broker.connect_with_key("user-1", account["api_key"], pasted)

    assert landing.linked and query_of(landing.location)["status"] == "pending"
    status = broker.call("GET", "/connections/user-1").json
    assert status["auth_mode"] == "api_key" and status["status"] == "active" and status["pod"] == "eu1"
    assert status["api_base_url"] == "https://api.eu1.insightly.com/v3.1"  # rebuilt from the template
    assert status["provider_user"]["email"] == provider.accounts[account["account"]].user["EMAIL_ADDRESS"]
    assert status["rate_limit"]["limit"] == 1000 and status["rate_limit"]["remaining"] == 999
    assert status["last_checked_at"] is not None and status["next_refresh_at"] is not None


def test_the_fifth_refused_key_spends_the_session(broker, provider, account, dynamodb, stack):
    page = broker.open_key_page(key_session(broker).json["connect_url"])
    for _ in range(4):
        page = broker.submit_key(page, "still-the-wrong-key", account["api_url"])
        assert page.status == 422

    fifth = broker.submit_key(page, "still-the-wrong-key", account["api_url"])
    sixth = broker.submit_key(page, account["api_key"], account["api_url"])

    assert fifth.status == 302 and query_of(fifth.location) == {"status": "error", "error": "too_many_attempts"}
    assert sixth.status == 400 and sixth.json["error"] == "invalid_session"
    assert connection_item(dynamodb, stack, "user-1") is None
    assert api_calls(provider) == 5  # the sixth never reached Insightly


@pytest.mark.parametrize("cookie", [None, "A" * 43])
def test_a_submit_without_the_forms_cookie_changes_nothing(broker, provider, account, dynamodb, stack, cookie):
    page = broker.open_key_page(key_session(broker).json["connect_url"])
    before = dynamodb.scan(TableName=stack.refs["FlowTable"])["Items"]

    answer = broker.submit_key(page, account["api_key"], account["api_url"], cookie=cookie)

    assert answer.status == 400 and answer.json["error"] == "csrf_mismatch"
    assert dynamodb.scan(TableName=stack.refs["FlowTable"])["Items"] == before
    assert api_calls(provider) == 0


def test_a_key_posted_for_an_oauth_session_is_refused_and_takes_no_attempt(broker, provider, account, dynamodb,
                                                                             stack):
    # A form forged for an OAuth connect session (its token from the connect URL, a CSRF pair
    # made for it): the write that would take an attempt is refused by its condition.
    oauth = broker.call("POST", "/connect-sessions", body={
        "connection_id": "user-1", "return_to": RETURN_TO, "auth_mode": "oauth2"})
    token = query_of(oauth.json["connect_url"])["session"]
    cookie_secret, csrf = key_page.new_csrf(token)
    before = dynamodb.scan(TableName=stack.refs["FlowTable"])["Items"]

    answer = broker.call("POST", "/connect/api-key", signed=False,
                         body=urlencode({"session": token, "csrf": csrf, "api_key": account["api_key"],
                                         "api_url": account["api_url"]}),
                         headers={"Content-Type": "application/x-www-form-urlencoded"},
                         cookies=[f"{KEY_PAGE_COOKIE}={cookie_secret}"])

    assert answer.status == 400 and answer.json["error"] == "invalid_session"
    assert dynamodb.scan(TableName=stack.refs["FlowTable"])["Items"] == before  # no attempts counted on it
    assert api_calls(provider) == 0


def test_a_replayed_submit_after_success_is_refused(broker, account):
    page = broker.open_key_page(key_session(broker).json["connect_url"])
    assert broker.submit_key(page, account["api_key"], account["api_url"]).status == 302

    replay = broker.submit_key(page, account["api_key"], account["api_url"])

    assert replay.status == 400 and replay.json["error"] == "invalid_session"


BAD_API_URLS = [
    "https://api.eu1.insightly.com.evil.example/v3.1", "https://na1.evil.example/v3.1", "https://evil.example",
    "https://user:pw@api.na1.insightly.com/v3.1", "https://api.na1.insightly.com:8443/v3.1",
    "https://api.na1.insightly.com/v3.1/../x", "https://api.%2e%2e.insightly.com/v3.1", "https://api.na1\\.insightly.com",
    "https://api.nа1.insightly.com/v3.1", "https://127.0.0.1/v3.1", "http://api.na1.insightly.com/v3.1",
    "https://api.na1.insightly.com/v3.1?x=1", "n", "na1" * 200, "javascript:alert(1)", "",
]


@pytest.mark.parametrize("api_url", BAD_API_URLS)
def test_a_bad_api_url_is_refused_with_no_outbound_request(broker, provider, account, api_url, dynamodb, stack):
    page = broker.open_key_page(key_session(broker).json["connect_url"])

    on_page = broker.submit_key(page, account["api_key"], api_url) if api_url else None
    backend = broker.call("PUT", "/connections/user-2/api-key",
                          body={"api_key": account["api_key"], "api_url": api_url})

    if on_page is not None:  # an empty field is the form's own "missing" error
        # The form again with its message, or (past the field's maxlength, so not from the
        # page's own form) a JSON error.
        assert on_page.status == 400
        assert "not an Insightly API URL" in on_page.body or '"invalid_api_url"' in on_page.body
    assert backend.status == 400 and backend.json["error"] == "invalid_api_url"
    assert len(api_url) < 8 or api_url not in backend.body  # never echoed
    assert api_calls(provider) == 0
    assert connection_item(dynamodb, stack, "user-1") is None and connection_item(dynamodb, stack, "user-2") is None


# -- the backend route ----------------------------------------------------------------------------

def test_the_backend_connects_a_key_it_collected_itself(broker, account, lifecycle_events):
    answer = broker.call("PUT", "/connections/user-9/api-key", body={"api_key": account["api_key"], "pod": "EU1"})

    assert answer.status == 200 and answer.json["auth_mode"] == "api_key" and answer.json["pod"] == "eu1"
    assert [e["detail-type"] for e in lifecycle_events()] == ["Connected"]


@pytest.mark.parametrize(("setup", "status", "code"), [
    ("wrong_key", 422, "api_key_rejected"),
    ("quota", 429, "provider_quota_exhausted"),
    ("500", 503, "provider_unavailable"),
])
def test_the_backend_route_says_why_a_key_did_not_connect(broker, provider, account, setup, status, code,
                                                         dynamodb, stack):
    key = account["api_key"]
    if setup == "wrong_key":
        key = "a-key-nobody-issued"
    elif setup == "quota":
        provider.set_quota(account["account"], remaining=0)
    else:
        provider.fail_next("500", on="api")

    answer = broker.call("PUT", "/connections/user-9/api-key", body={"api_key": key, "api_url": account["api_url"]})

    assert answer.status == status and answer.json["error"] == code
    assert connection_item(dynamodb, stack, "user-9") is None


def test_a_key_replacing_an_oauth_grant_gets_the_grant_revoked(broker, provider, account):
    assert broker.connect("user-1").linked
    refresh_token = provider.current_refresh_tokens[0]

    answer = broker.call("PUT", "/connections/user-1/api-key", body={"api_key": account["api_key"], "pod": "eu1"})
    refresh_in_background(broker.stack)  # the scheduled sweep revokes what was replaced

    assert answer.status == 200 and answer.json["auth_mode"] == "api_key" and answer.json["expires_at"] is None
    assert refresh_token in provider.revoked


# -- one /token answer for both kinds -------------------------------------------------------------

def test_token_answers_both_kinds_so_one_client_calls_insightly(broker, provider, account):
    assert broker.connect("oauth-user").linked
    assert broker.connect_with_key("key-user", account["api_key"], "eu1").linked

    for connection_id in ("oauth-user", "key-user"):
        token = broker.call("GET", f"/connections/{connection_id}/token").json
        # The backend's one code path: the header and the base URL, whatever the kind.
        me = requests.get(token["api_base_url"] + "/Users/Me", headers={"Authorization": token["authorization"]},
                          timeout=5)
        assert me.status_code == 200
    key_token = broker.call("GET", "/connections/key-user/token").json
    assert key_token["auth_mode"] == "api_key" and key_token["expires_at"] is None
    assert key_token["authorization"] == "Basic " + base64.b64encode(f"{account['api_key']}:".encode()).decode()


# -- health checks ----------------------------------------------------------------------------------

def test_a_regenerated_key_is_marked_needs_reauth_by_the_next_check_with_one_event(
        broker, provider, account, dynamodb, stack, lifecycle_events):
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    lifecycle_events()
    provider.regenerate_api_key(account["account"])

    make_due(dynamodb, stack, "user-1")
    refresh_in_background(stack)
    refresh_in_background(stack)  # nothing more: it left the due index

    status = broker.call("GET", "/connections/user-1").json
    assert status["status"] == "needs_reauth" and status["last_error"]["code"] == "api_key_rejected"
    events = lifecycle_events()
    assert [(e["detail-type"], e["detail"]["reason"]) for e in events] == [("NeedsReauth", "api_key_rejected")]
    assert broker.call("GET", "/connections/user-1/token").status == 409


def test_a_429_during_a_check_does_not_mark_it_and_the_next_check_waits(
        broker, provider, account, dynamodb, stack, lifecycle_events):
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    lifecycle_events()
    provider.set_quota(account["account"], remaining=0)

    make_due(dynamodb, stack, "user-1")
    refresh_in_background(stack)
    after_429 = api_calls(provider)
    make_due(dynamodb, stack, "user-1")
    refresh_in_background(stack)

    status = broker.call("GET", "/connections/user-1").json
    assert status["status"] == "active" and status["rate_limit"]["remaining"] == 0
    assert api_calls(provider) == after_429  # the second check did not spend a request
    item = connection_item(dynamodb, stack, "user-1")
    assert int(item["refresh_due_at"]["N"]) >= int(item["rate_limit"]["M"]["observed_at"]["N"]) + 86400
    assert [e["detail-type"] for e in lifecycle_events()] == ["RefreshFailed", "QuotaExhausted"]


def test_a_passing_check_records_when_and_what_it_saw(broker, provider, account, dynamodb, stack):
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    provider.set_quota(account["account"], remaining=50)

    make_due(dynamodb, stack, "user-1")
    refresh_in_background(stack)

    status = broker.call("GET", "/connections/user-1").json
    assert status["status"] == "active" and status["rate_limit"]["remaining"] == 49
    assert connection_item(dynamodb, stack, "user-1")["quota_alert"]["S"] == "low"


def test_refresh_on_a_key_connection_checks_it_now(broker, provider, account):
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    before = api_calls(provider)

    answer = broker.call("POST", "/connections/user-1/refresh")

    assert answer.status == 200 and answer.json["auth_mode"] == "api_key"
    assert api_calls(provider) == before + 1


def test_delete_of_a_key_connection_deletes_without_calling_anyone(broker, provider, account):
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    before = dict(provider.calls)

    assert broker.call("DELETE", "/connections/user-1").status == 204
    assert dict(provider.calls) == before and broker.call("GET", "/connections/user-1").status == 404


# -- the key is never stored or shown in the clear ------------------------------------------------

def test_the_key_is_nowhere_in_plaintext(broker, provider, account, dynamodb, stack, captured_logs, lifecycle_events):
    key = account["api_key"]
    page = broker.open_key_page(key_session(broker, "user-2").json["connect_url"])
    refused = broker.submit_key(page, key + "x", account["api_url"])
    assert broker.connect_with_key("user-1", key, account["api_url"]).linked
    answers = [refused, broker.call("GET", "/connections/user-1"),
               broker.call("PUT", "/connections/user-3/api-key", body={"api_key": key + "y", "pod": "eu1"})]
    make_due(dynamodb, stack, "user-1")
    refresh_in_background(stack)

    stored = json.dumps([dynamodb.scan(TableName=stack.refs[t])["Items"]
                         for t in ("ConnectionsTable", "FlowTable")], default=str)
    for secret in (key, key + "x", key + "y", base64.b64encode(f"{key}:".encode()).decode()):
        assert secret not in stored
        assert secret not in captured_logs.getvalue()
        assert secret not in json.dumps(lifecycle_events())
        assert all(secret not in (a.body or "") for a in answers)


def test_a_fault_after_the_session_is_spent_sends_the_browser_back_with_an_error(broker, account, monkeypatch):
    from botocore.exceptions import ClientError

    from broker import services

    def table_down(*args, **kwargs):
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "down"}}, "PutItem")

    page = broker.open_key_page(key_session(broker).json["connect_url"])
    monkeypatch.setattr(services.api_key_connect().flow.flows, "put_completion", table_down)

    answer = broker.submit_key(page, account["api_key"], account["api_url"])

    assert answer.status == 302 and query_of(answer.location) == {"status": "error", "error": "storage_unavailable"}


def test_a_quota_answer_with_one_header_only_is_stored_and_read_back(broker, provider, account, monkeypatch):
    from local import fake_insightly as fake_provider

    real = fake_provider.Account.rate_headers
    monkeypatch.setattr(fake_provider.Account, "rate_headers",
                        lambda self: {k: v for k, v in real(self).items() if k != "X-RateLimit-Limit"})

    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked

    status = broker.call("GET", "/connections/user-1")
    assert status.status == 200 and status.json["rate_limit"]["limit"] is None
    assert status.json["rate_limit"]["remaining"] == 999


def test_a_key_check_failing_for_days_is_never_marked(broker, provider, account, dynamodb, stack, lifecycle_events):
    assert broker.connect_with_key("user-1", account["api_key"], account["api_url"]).linked
    dynamodb.update_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": "user-1"}},
                         UpdateExpression="SET first_failed_at = :long_ago, failure_count = :n",
                         ExpressionAttributeValues={":long_ago": {"N": "1000"}, ":n": {"N": "40"}})
    lifecycle_events()
    provider.fail_next("500", on="api")

    make_due(dynamodb, stack, "user-1")
    refresh_in_background(stack)

    # Only Insightly's 401/403 says a key is gone; an outage, however long, is not its fault.
    assert broker.call("GET", "/connections/user-1").json["status"] == "active"
    assert "NeedsReauth" not in [e["detail-type"] for e in lifecycle_events()]


def test_wrong_keys_sent_in_parallel_reach_insightly_at_most_five_times(broker, provider, account, monkeypatch):
    # Second security review, F2: 12 concurrent wrong keys all reached Insightly, because the
    # page read the session, called Users/Me and only then counted.
    from concurrent.futures import ThreadPoolExecutor

    page = broker.open_key_page(key_session(broker).json["connect_url"])
    answer_slowly = provider.api

    def slow(*args, **kwargs):
        time.sleep(0.3)  # every submit has read the session before any answer comes back
        return answer_slowly(*args, **kwargs)

    monkeypatch.setattr(provider, "api", slow)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda _: broker.submit_key(page, "a-wrong-key-here", account["api_url"]),
                                range(12)))

    assert api_calls(provider) <= 5
    assert all(a.status in (302, 400, 422) for a in answers)
    assert any(a.status == 302 and query_of(a.location)["error"] == "too_many_attempts" for a in answers)
