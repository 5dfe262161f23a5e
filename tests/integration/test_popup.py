"""display=popup (issue 10): the flow's last page posts the redirect's outcome to window.opener."""

import json
import re

import pytest

from broker.http.popup import render
from tests.conftest import all_items
from tests.support.inprocess import RETURN_TO, query_of

APP_ORIGIN = "https://app.example.com"


def popup_session(broker, auth_mode="oauth2", connection_id="user-1"):
    answer = broker.call("POST", "/connect-sessions", body={
        "connection_id": connection_id, "return_to": RETURN_TO, "auth_mode": auth_mode, "display": "popup"})
    assert answer.status == 201, answer.body
    return answer


def oauth_popup_end(broker, *, approve=True):
    session = popup_session(broker)
    redirect = broker.authorize(session.json["connect_url"])
    back = (broker.provider.approve if approve else broker.provider.deny)(redirect.location)
    return session, broker.callback(back, redirect.cookie("ic_oauth_browser").value)


def posted(page):
    """What the page's script posts, to which origin, and where it goes without an opener."""
    found = re.search(r"var m=(\{.*?\}),o=(\"[^\"]*\"),u=(\"[^\"]*\");", page.body)
    assert found, page.body
    return json.loads(found.group(1)), json.loads(found.group(2)), json.loads(found.group(3))


def assert_locked_down_popup_page(page):
    assert page.status == 200 and "Location" not in page.headers
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    [nonce] = re.findall(r"<script nonce=\"([^\"]+)\">", page.body)
    csp = page.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'; ") and f"script-src 'nonce-{nonce}';" in csp
    assert "unsafe-inline" not in csp and "http" not in csp  # no other source of script or anything


def test_a_popup_oauth_flow_posts_the_pending_outcome_to_the_opener_and_the_backend_completes_it(broker):
    session, page = oauth_popup_end(broker)

    assert_locked_down_popup_page(page)
    assert page.cookie("ic_oauth_browser")["max-age"] == "0"
    message, target, fallback = posted(page)
    assert target == APP_ORIGIN  # return_to's exact origin, never "*"
    assert message["type"] == "insightly-connect" and message["status"] == "pending"
    assert message["session_id"] == session.json["session_id"] and message["error"] is None
    assert query_of(fallback) == {k: v for k, v in message.items() if k != "type" and v is not None}
    assert fallback.startswith(RETURN_TO + "?")
    completed = broker.complete(message["session_id"], message["completion_code"])
    assert completed.status == 200 and completed.json["status"] == "active"


def test_a_denied_popup_flow_posts_the_error_as_the_redirect_would(broker, dynamodb, stack):
    _, page = oauth_popup_end(broker, approve=False)

    assert_locked_down_popup_page(page)
    message, target, fallback = posted(page)
    assert message == {"type": "insightly-connect", "status": "error", "connection_id": None,
                       "error": "access_denied"}
    assert target == APP_ORIGIN and query_of(fallback) == {"status": "error", "error": "access_denied"}
    assert broker.call("GET", "/connections/user-1").status == 404


def test_with_session_binding_off_a_popup_posts_connected(broker, monkeypatch):
    from broker import services

    monkeypatch.setenv("SESSION_BINDING", "none")
    services.reset()

    _, page = oauth_popup_end(broker)

    message, _, _ = posted(page)
    assert message == {"type": "insightly-connect", "status": "connected", "connection_id": "user-1",
                       "error": None}


def test_a_popup_key_page_flow_ends_with_the_popup_page(broker, provider):
    account = provider.issue_api_key("eu1")
    session = popup_session(broker, auth_mode="api_key")
    form = broker.open_key_page(session.json["connect_url"])

    page = broker.submit_key(form, account["api_key"], account["api_url"])

    assert_locked_down_popup_page(page)
    message, target, _ = posted(page)
    assert target == APP_ORIGIN and message["status"] == "pending"
    assert broker.complete(message["session_id"], message["completion_code"]).status == 200


def test_a_popup_key_page_ended_by_refusals_posts_the_error(broker, provider):
    account = provider.issue_api_key("eu1")
    page = broker.open_key_page(popup_session(broker, auth_mode="api_key").json["connect_url"])
    for _ in range(5):
        page = broker.submit_key(page, "still-the-wrong-key", account["api_url"])

    assert_locked_down_popup_page(page)
    assert posted(page)[0]["error"] == "too_many_attempts"


def test_a_wrong_key_on_a_popup_key_page_still_shows_the_form(broker, provider):
    account = provider.issue_api_key("eu1")
    form = broker.open_key_page(popup_session(broker, auth_mode="api_key").json["connect_url"])

    again = broker.submit_key(form, "the-wrong-key", account["api_url"])

    assert again.status == 422 and 'name="api_key"' in again.body


def test_without_display_the_flow_still_ends_with_a_redirect(broker):
    assert broker.connect("user-1").status == 302


@pytest.mark.parametrize("display", ["window", "", 1, None, ["popup"]])
def test_an_unknown_display_is_refused_and_writes_nothing(broker, dynamodb, stack, display):
    answer = broker.call("POST", "/connect-sessions",
                         body={"connection_id": "u", "return_to": RETURN_TO, "display": display})

    assert answer.status == 400 and answer.json["error"] == "invalid_display" and answer.json["message"]
    assert all_items(dynamodb, stack) == []


def test_the_popup_page_cannot_be_broken_out_of_by_what_return_to_carries():
    location = RETURN_TO + "?next=</script><script>alert(1)</script>&x=\u2028"
    page, _ = render(location)
    script = page[page.index("<script"):]
    assert page.count("<script") == 1 and page.count("</script>") == 1 and "\u2028" not in script
