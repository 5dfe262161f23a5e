"""The demo SaaS app against a tiny fake broker over loopback: signed calls, pages, messages."""

from __future__ import annotations

import html
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.demo_app import DECLINED, NOT_YOURS, TOO_MANY_ATTEMPTS, DemoApp

AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
                  r"/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$")
CONNECTED = {"connection_id": "demo-user", "status": "active", "auth_mode": "oauth2",
             "provider_user": {"id": "4242", "email": "ada@example.com", "name": "Ada <Lovelace>"},
             "pod": None, "api_base_url": None, "rate_limit": None}
KEY_CONNECTED = {**CONNECTED, "auth_mode": "api_key", "pod": "eu1", "api_base_url": "https://api.eu1.insightly.com/v3.1",
                 "rate_limit": {"limit": 1000, "remaining": 999, "observed_at": "2030-01-01T00:00:00Z"}}


class FakeBroker:
    """Answers from a table of (method, path) -> (status, body); records every request."""

    def __init__(self):
        # (method, path with query) -> (status, body) or (status, body, headers)
        self.answers: dict[tuple[str, str], tuple] = {}
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append({"method": self.command, "path": self.path, "headers": self.headers,
                                      "body": body, "url": fake.url + self.path})
                status, answer, *extra = fake.answers.get((self.command, self.path), (404, {"error": "not_found"}))
                raw = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = handle_any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broker():
    fake = FakeBroker()
    yield fake
    fake.stop()


@pytest.fixture
def demo(broker):
    app = DemoApp(broker_url=broker.url).start()
    yield app
    app.stop()


def assert_validly_signed(request: dict, secret: str = "testing", region: str = "us-east-1",
                          key: str = "testing") -> None:
    """Recompute the SigV4 signature with botocore from what arrived, as API Gateway would."""
    headers = request["headers"]
    found = AUTH.match(headers["Authorization"])
    assert found, headers["Authorization"]
    assert found["service"] == "execute-api" and found["region"] == region and found["key"] == key
    assert headers["X-Amz-Date"].startswith(found["date"])
    signed = found["signed"].split(";")
    assert {"host", "x-amz-date"} <= set(signed)
    arrived = AWSRequest(method=request["method"], url=request["url"], data=request["body"] or None,
                         headers={name: headers[name] for name in signed})
    arrived.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials(found["key"], secret), found["service"], found["region"])
    expected = signer.signature(signer.string_to_sign(arrived, signer.canonical_request(arrived)), arrived)
    assert expected == found["signature"]


def message_of(page: str) -> str:
    return re.search(r'<div id="message"[^>]*>(.*?)</div>', page, re.S).group(1)


def text_of(page: str, element_id: str) -> str:
    return re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S).group(1)


def test_home_when_not_connected(broker, demo):
    page = requests.get(demo.url + "/", timeout=5)
    assert page.status_code == 200 and "<title>Demo SaaS</title>" in page.text
    assert "Not connected" in page.text and message_of(page.text) == ""
    for button in ("connect", "connect-api-key", "call", "contacts-button", "disconnect"):
        assert f'id="{button}"' in page.text
    (call,) = broker.requests
    assert (call["method"], call["path"]) == ("GET", "/connections/demo-user")
    assert call["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256") and call["headers"]["X-Amz-Date"]
    assert_validly_signed(call)


def test_home_when_connected_shows_the_insightly_user_escaped(broker, demo):
    broker.answers[("GET", "/connections/demo-user")] = (200, CONNECTED)
    page = requests.get(demo.url + "/", timeout=5).text
    assert "Connected as Ada &lt;Lovelace&gt; (ada@example.com)" in page and "<Lovelace>" not in page
    assert text_of(page, "auth-mode") == "OAuth" and 'id="quota"' not in page


def test_home_when_connected_with_an_api_key_shows_the_mode_and_the_quota(broker, demo):
    broker.answers[("GET", "/connections/demo-user")] = (200, KEY_CONNECTED)
    page = requests.get(demo.url + "/", timeout=5).text
    assert text_of(page, "status") == "Connected as Ada &lt;Lovelace&gt; (ada@example.com)"
    assert text_of(page, "auth-mode") == "API key (pod eu1)"
    assert text_of(page, "quota") == "999 of 1,000 requests left today"


def test_the_quota_says_when_it_is_used_up(broker, demo):
    broker.answers[("GET", "/connections/demo-user")] = (200, {
        **KEY_CONNECTED, "rate_limit": {"limit": 1000, "remaining": 0, "observed_at": "2030-01-01T00:00:00Z"}})
    assert text_of(requests.get(demo.url + "/", timeout=5).text, "quota") == "0 of 1,000 requests left today (used up)"


def test_home_when_the_connection_needs_reauth(broker, demo):
    broker.answers[("GET", "/connections/demo-user")] = (200, {**CONNECTED, "status": "needs_reauth"})
    assert "Needs to be connected again" in requests.get(demo.url + "/", timeout=5).text


@pytest.mark.parametrize(("query", "message"), [
    ("?status=connected&connection_id=demo-user", "Insightly connected"),
    ("?status=error&error=access_denied", DECLINED),
    ("?status=error&error=token_exchange_failed", "Connecting Insightly failed (token_exchange_failed)"),
    ("?status=error&error=%3Cscript%3Ealert(1)%3C/script%3E", "Connecting Insightly failed (&lt;script&gt;alert(1)"
                                                              "&lt;/script&gt;)"),
    ("?status=disconnected", "Insightly disconnected"),
    ("?status=error&error=too_many_attempts", TOO_MANY_ATTEMPTS),
    ("?status=%3Cb%3E", ""),
])
def test_flash_messages_after_returning_from_the_broker(demo, query, message):
    page = requests.get(demo.url + "/" + query, timeout=5).text
    assert message_of(page) == message and "<script>" not in page


SESSION_ID = "s" * 42 + "A"


def session_created(connect_url: str, auth_mode: str = "oauth2") -> tuple:
    """The broker's 201 to POST /connect-sessions, as docs/openapi.yaml has it."""
    return 201, {"connect_url": connect_url, "session_id": SESSION_ID, "auth_mode": auth_mode,
                 "expires_at": "2030-01-01T00:00:00Z"}


def test_connect_creates_a_signed_session_and_sends_the_browser_to_the_broker(broker, demo):
    connect_url = broker.url + "/oauth/authorize?session=abc"
    broker.answers[("POST", "/connect-sessions")] = session_created(connect_url)
    answer = requests.post(demo.url + "/connect", allow_redirects=False, timeout=5)
    assert answer.status_code == 303 and answer.headers["Location"] == connect_url
    (call,) = broker.requests
    assert (call["method"], call["path"]) == ("POST", "/connect-sessions")
    assert json.loads(call["body"]) == {"connection_id": "demo-user", "return_to": demo.url + "/",
                                        "auth_mode": "oauth2"}
    assert_validly_signed(call)  # the body is part of the signature


def test_connect_with_an_api_key_sends_the_browser_to_the_key_page(broker, demo):
    key_page = broker.url + "/connect/api-key?session=abc"
    broker.answers[("POST", "/connect-sessions")] = session_created(key_page, "api_key")
    answer = requests.post(demo.url + "/connect-api-key", allow_redirects=False, timeout=5)
    assert answer.status_code == 303 and answer.headers["Location"] == key_page
    (call,) = broker.requests
    assert json.loads(call["body"]) == {"connection_id": "demo-user", "return_to": demo.url + "/",
                                        "auth_mode": "api_key"}
    assert_validly_signed(call)


PENDING = f"/?status=pending&session_id={SESSION_ID}&completion_code={'c' * 43}"


def started_connecting(broker, demo, button: str = "/connect") -> requests.Session:
    """A browser that clicked Connect: its server-side session holds the broker's session_id."""
    broker.answers[("POST", "/connect-sessions")] = session_created(broker.url + "/oauth/authorize?session=a")
    browser = requests.Session()
    assert browser.post(demo.url + button, allow_redirects=False, timeout=5).status_code == 303
    assert SESSION_ID not in str(browser.cookies.get_dict())  # kept server side
    return browser


@pytest.mark.parametrize("button", ["/connect", "/connect-api-key"])
def test_returning_with_a_pending_connection_completes_it_for_the_session_that_started_it(broker, demo, button):
    browser = started_connecting(broker, demo, button)
    complete = f"/connect-sessions/{SESSION_ID}/complete"
    broker.answers[("POST", complete)] = (200, CONNECTED)

    answer = browser.get(demo.url + PENDING, allow_redirects=False, timeout=5)

    assert answer.status_code == 303 and answer.headers["Location"] == "/?status=connected&connection_id=demo-user"
    (call,) = [r for r in broker.requests if r["path"] == complete]
    assert json.loads(call["body"]) == {"completion_code": "c" * 43}
    assert_validly_signed(call)
    again = browser.get(demo.url + PENDING, allow_redirects=False, timeout=5)  # the session id is spent
    assert again.status_code == 403 and len([r for r in broker.requests if r["path"] == complete]) == 1


@pytest.mark.parametrize("button", ["/connect", "/connect-api-key"])
def test_a_pending_connection_another_session_started_is_not_completed(broker, demo, button):
    started_connecting(broker, demo, button)  # the attacker's browser
    victim = requests.Session()

    answer = victim.get(demo.url + PENDING, allow_redirects=False, timeout=5)

    assert answer.status_code == 403 and message_of(answer.text) == NOT_YOURS
    assert not [r for r in broker.requests if r["path"].endswith("/complete")]


def test_a_refused_completion_is_shown(broker, demo):
    browser = started_connecting(broker, demo)
    broker.answers[("POST", f"/connect-sessions/{SESSION_ID}/complete")] = (
        400, {"error": "completion_expired", "message": "x"})

    answer = browser.get(demo.url + PENDING, allow_redirects=False, timeout=5)

    assert answer.status_code == 502 and message_of(answer.text) == "Connecting Insightly failed (completion_expired)"


def test_connect_shows_the_brokers_refusal(broker, demo):
    broker.answers[("POST", "/connect-sessions")] = (400, {"error": "invalid_return_to", "message": "no"})
    answer = requests.post(demo.url + "/connect", allow_redirects=False, timeout=5)
    assert answer.status_code == 502 and "(invalid_return_to)" in message_of(answer.text)


ME = {"USER_ID": 4242, "FIRST_NAME": "Ada", "LAST_NAME": "Lovelace", "EMAIL_ADDRESS": "ada@example.com"}
ME_PATH = "/connections/demo-user/proxy/Users/Me"
CONTACTS_PATH = "/connections/demo-user/proxy/Contacts?top=5&count_total=true"
CONTACTS = [{"CONTACT_ID": n, "FIRST_NAME": f"Grace{n}", "LAST_NAME": "Hopper", "EMAIL_ADDRESS": f"g{n}@example.com"}
            for n in range(1, 6)]


def proxied_calls(broker) -> list[dict]:
    return [r for r in broker.requests if "/proxy/" in r["path"]]


def test_call_goes_through_the_proxy_signed_and_never_asks_for_a_credential(broker, demo):
    """One code path for both kinds: the broker picks Bearer or Basic and the pod, so the app
    sends the same signed GET .../proxy/Users/Me and never holds a token or a key."""
    broker.answers[("GET", ME_PATH)] = (200, ME)

    answer = requests.post(demo.url + "/call", timeout=5)

    assert answer.status_code == 200
    assert text_of(answer.text, "call-result") == "Insightly says you are Ada Lovelace (ada@example.com)"
    (call,) = proxied_calls(broker)
    assert call["method"] == "GET" and call["path"] == ME_PATH and call["headers"]["Accept"] == "application/json"
    assert_validly_signed(call)
    assert not [r for r in broker.requests if r["path"].endswith("/token")]


def test_contacts_shows_the_first_five_and_insightlys_total_through_the_proxy(broker, demo):
    hostile = {**CONTACTS[0], "FIRST_NAME": "<img src=x>"}
    broker.answers[("GET", CONTACTS_PATH)] = (200, [hostile, *CONTACTS[1:]], {"X-Total-Count": "42"})

    answer = requests.post(demo.url + "/contacts", timeout=5)

    assert answer.status_code == 200
    assert text_of(answer.text, "contacts-count") == "5 of 42 contacts"
    items = re.findall(r"<li>(.*?)</li>", re.search(r'<ul id="contacts-list">(.*?)</ul>', answer.text).group(1))
    assert items[0] == "&lt;img src=x&gt; Hopper (g1@example.com)" and "<img" not in answer.text
    assert items[1:] == [f"Grace{n} Hopper (g{n}@example.com)" for n in range(2, 6)]
    (call,) = proxied_calls(broker)
    assert call["path"] == CONTACTS_PATH
    assert_validly_signed(call)  # the query string is part of the signature


def test_contacts_without_a_total_still_lists_them(broker, demo):
    broker.answers[("GET", CONTACTS_PATH)] = (200, CONTACTS[:2])
    assert text_of(requests.post(demo.url + "/contacts", timeout=5).text, "contacts-count") == "2 contacts"


@pytest.mark.parametrize(("status", "headers", "message"), [
    (401, {}, "Insightly refused the credentials (401)."),
    (401, {"X-Broker-Error": "provider_unauthorized"}, "Insightly refused the credentials (401)."),
    (429, {"Retry-After": "3600"}, "Insightly's daily API limit for this account is used up; try again later."),
    (429, {"X-Broker-Error": "provider_quota_exhausted", "Retry-After": "600"},
     "Insightly's daily API limit for this account is used up; try again later."),
    # Insightly's own 500, passed on: it carries Insightly's rate-limit headers, as all its answers do.
    (500, {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "900"}, "Insightly answered 500."),
    (502, {"X-Broker-Error": "response_too_large"}, "The broker answered 502 (response_too_large)."),
    (504, {"X-Broker-Error": "upstream_timeout"}, "The broker answered 504 (upstream_timeout)."),
])
@pytest.mark.parametrize(("button", "path"), [("/call", ME_PATH), ("/contacts", CONTACTS_PATH)])
def test_proxied_calls_explain_what_went_wrong(broker, demo, status, headers, message, button, path):
    broker.answers[("GET", path)] = (status, {"Message": "x"}, headers)

    answer = requests.post(demo.url + button, timeout=5)

    assert answer.status_code == 502 and html.unescape(message_of(answer.text)) == message
    assert 'id="call-result"' not in answer.text and 'id="contacts-list"' not in answer.text


@pytest.mark.parametrize("button", ["/call", "/contacts"])
def test_a_failed_function_is_the_brokers_answer_never_insightlys(broker, demo, button):
    for path in (ME_PATH, CONTACTS_PATH):  # API Gateway's answer when a function fails
        broker.answers[("GET", path)] = (500, {"message": "Internal Server Error"}, {})

    answer = requests.post(demo.url + button, timeout=5)

    assert html.unescape(message_of(answer.text)) == "The broker answered 500 (Internal Server Error)."
    assert "Insightly answered" not in answer.text


@pytest.mark.parametrize(("status", "error", "message"), [
    (404, "connection_not_found", "Connect Insightly first."),
    (409, "needs_reauth", "Insightly needs to be connected again.")])
@pytest.mark.parametrize("button", ["/call", "/contacts"])
def test_proxied_calls_explain_the_connection_state(broker, demo, status, error, message, button):
    for path in (ME_PATH, CONTACTS_PATH):
        broker.answers[("GET", path)] = (status, {"error": error, "message": "x"}, {"X-Broker-Error": error})
    answer = requests.post(demo.url + button, timeout=5)
    assert answer.status_code == 409 and message_of(answer.text) == message


def test_disconnect_deletes_signed_and_redirects(broker, demo):
    broker.answers[("DELETE", "/connections/demo-user")] = (204, None)
    answer = requests.post(demo.url + "/disconnect", allow_redirects=False, timeout=5)
    assert answer.status_code == 303 and answer.headers["Location"] == "/?status=disconnected"
    (call,) = broker.requests
    assert call["method"] == "DELETE"
    assert_validly_signed(call)


def test_an_unreachable_broker_is_a_message_not_a_crash():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with DemoApp(broker_url=f"http://127.0.0.1:{closed_port}") as app:
        assert "broker is unreachable" in requests.get(app.url + "/", timeout=5).text
        answer = requests.post(app.url + "/connect", allow_redirects=False, timeout=5)
        assert answer.status_code == 502 and "unreachable" in message_of(answer.text)


def test_a_given_key_signs_instead_of_the_environments(broker):
    """`make local` hands the demo the stack's key: the calls are signed with it, whatever the
    environment (the default credential chain) holds."""
    with DemoApp(broker_url=broker.url, access_key="AKIDLOCALSTACK", secret_key="local-secret",
                 region="eu-west-1") as app:
        requests.get(app.url + "/", timeout=5)
    (call,) = broker.requests
    assert_validly_signed(call, secret="local-secret", region="eu-west-1", key="AKIDLOCALSTACK")


def test_a_tampered_request_fails_the_signature_check(broker, demo):
    requests.get(demo.url + "/", timeout=5)
    (call,) = broker.requests
    with pytest.raises(AssertionError):
        assert_validly_signed({**call, "path": "/connections/someone-else",
                               "url": broker.url + "/connections/someone-else"})


def test_an_app_built_before_the_broker_is_pointed_at_it(broker):
    app = DemoApp()  # bound now: its URL is known before the broker's
    try:
        assert app.url.startswith("http://127.0.0.1:")
        app.point_at(broker.url + "/").start()
        broker.answers[("GET", "/connections/demo-user")] = (200, CONNECTED)
        assert "Connected as Ada &lt;Lovelace&gt;" in requests.get(app.url + "/", timeout=5).text
        assert_validly_signed(broker.requests[-1])
    finally:
        app.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(app.url + "/", timeout=2)


@pytest.mark.parametrize("button,auth_mode", [("/connect-popup", "oauth2"), ("/connect-api-key-popup", "api_key")])
def test_a_popup_connect_asks_for_display_popup_and_completes_the_posted_outcome_like_a_redirect(
        broker, demo, button, auth_mode):
    connect_url = broker.url + "/oauth/authorize?session=a"
    broker.answers[("POST", "/connect-sessions")] = session_created(connect_url, auth_mode)
    browser = requests.Session()
    started = browser.post(demo.url + button, allow_redirects=False, timeout=5)
    assert started.status_code == 201 and started.json() == {"connect_url": connect_url}  # no session_id
    (call,) = broker.requests
    assert json.loads(call["body"]) == {"connection_id": "demo-user", "return_to": demo.url + "/",
                                        "auth_mode": auth_mode, "display": "popup"}
    broker.answers[("POST", f"/connect-sessions/{SESSION_ID}/complete")] = (200, CONNECTED)

    answer = browser.post(demo.url + "/complete", data={"status": "pending", "session_id": SESSION_ID,
                                                         "completion_code": "c" * 43},
                          allow_redirects=False, timeout=5)

    assert answer.status_code == 303 and answer.headers["Location"] == "/?status=connected&connection_id=demo-user"
    other = requests.post(demo.url + "/complete", data={"session_id": SESSION_ID, "completion_code": "c" * 43},
                          allow_redirects=False, timeout=5)
    assert other.status_code == 403  # a browser whose session did not start it completes nothing


def test_the_page_loads_connect_js_from_the_app_itself(demo):
    page = requests.get(demo.url + "/", timeout=5).text
    script = requests.get(demo.url + "/connect.js", timeout=5)
    assert '<script src="/connect.js"></script>' in page and 'data-popup="/connect-popup"' in page
    assert script.status_code == 200 and "InsightlyConnect" in script.text


def test_background_sync_marks_its_calls_background_and_stops_at_the_reserve(broker, demo):
    broker.answers[("GET", "/connections/demo-user/proxy/Contacts?top=1")] = (
        429, {"error": "quota_reserved", "message": "kept"},
        {"X-Broker-Error": "quota_reserved", "X-RateLimit-Remaining": "200", "Retry-After": "3600"})

    answer = requests.post(demo.url + "/sync", timeout=5)

    assert answer.status_code == 200
    assert text_of(answer.text, "call-result") == ("Background sync: 0 calls, then stopped at the reserve "
                                                  "(200 left for interactive calls)")
    (call,) = proxied_calls(broker)
    assert call["headers"]["X-Broker-Priority"] == "background"
    assert_validly_signed(call)


def test_the_quota_bar_shows_the_groups_quota_and_the_reserve(broker, demo):
    broker.answers[("GET", "/connections/demo-user")] = (200, {**KEY_CONNECTED, "quota": {
        "limit": 1000, "remaining": 150, "observed_at": "2030-01-01T00:00:00Z", "reserve_reached": True,
        "exhausted": False}})

    page = requests.get(demo.url + "/", timeout=5).text

    assert text_of(page, "quota") == "150 of 1,000 requests left today (reserve reached)"
    assert '<progress id="quota-bar" max="1000" value="150">' in page
