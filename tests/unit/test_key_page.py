"""broker.connect.key_page: the hosted key-entry page, its form and its CSRF binding."""

from __future__ import annotations

import re
import secrets
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest

from broker.connect import key_page
from broker.credentials.insightly import ApiKeyRejected, QuotaExhausted
from broker.platform.errors import BrokerError, InvalidRequest, ProviderUnavailable

SESSION = secrets.token_urlsafe(32)
KEY = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"


class Page(HTMLParser):
    """What a browser would see: tags with attributes, labels, text."""

    def __init__(self, markup: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def inputs(self) -> dict[str, dict]:
        return {a["name"]: a for t, a in self.tags if t == "input"}

    def one(self, tag: str) -> dict:
        found = [a for t, a in self.tags if t == tag]
        assert len(found) == 1, found
        return found[0]


def render(**kw) -> str:
    args = {"app_name": "Acme CRM", "session_token": SESSION, "csrf_token": "c" * 43, **kw}
    return key_page.render(**args)


# -- rendering --------------------------------------------------------------------------------------

def test_one_form_posting_the_key_and_url_with_the_session_and_csrf():
    page = Page(render())
    form = page.one("form")
    assert form["method"] == "post" and form["action"] == "api-key"
    inputs = page.inputs()
    assert set(inputs) == {"session", "csrf", "api_key", "api_url"}
    assert inputs["session"] == {"type": "hidden", "name": "session", "value": SESSION}
    assert inputs["csrf"]["value"] == "c" * 43
    assert inputs["api_key"]["type"] == "password" and inputs["api_key"]["autocomplete"] == "off"
    assert "value" not in inputs["api_key"]  # a re-render never sends the key back
    assert inputs["api_url"]["type"] == "text"
    assert [t for t, _ in page.tags].count("button") == 1


def test_every_field_has_a_label():
    page = Page(render())
    labelled = {a["for"] for t, a in page.tags if t == "label"}
    assert {"api_key", "api_url"} <= labelled
    assert all(page.inputs()[name]["id"] == name for name in ("api_key", "api_url"))


def test_title_help_and_phone_viewport():
    markup = render(app_name="Acme CRM")
    page = Page(markup)
    assert "<title>Connect Acme CRM to Insightly</title>" in markup
    assert "Connect Acme CRM to Insightly" in page.text
    assert "In Insightly: User Settings → API: your API key and the API URL." in page.text
    viewport = [a["content"] for t, a in page.tags if t == "meta" and a.get("name") == "viewport"]
    assert viewport == ["width=device-width,initial-scale=1"]


def test_every_value_is_escaped():
    markup = render(app_name='<script>alert(1)</script>"', session_token='"><script>x</script>',
                    csrf_token="<b>", message="<img src=x onerror=alert(1)>",
                    api_url_value='"><script>alert(2)</script>', action='"><script>')
    assert "<script" not in markup.lower() and "<img" not in markup and "<b>" not in markup
    page = Page(markup)
    assert "Connect <script>alert(1)</script>\" to Insightly" in page.text  # shown as text
    assert page.inputs()["api_url"]["value"] == '"><script>alert(2)</script>'


def test_a_message_is_shown_as_an_alert_and_no_message_shows_none():
    assert 'role="alert"' not in render()
    page = Page(render(message=key_page.KEY_REJECTED))
    assert any(a.get("role") == "alert" for _, a in page.tags) and key_page.KEY_REJECTED in page.text


def test_an_absolute_action_can_be_given():
    assert Page(render(action="/prod/connect/api-key")).one("form")["action"] == "/prod/connect/api-key"


def test_the_page_loads_nothing_and_references_no_other_origin():
    markup = render(message=key_page.QUOTA_USED_UP, api_url_value="na1")
    assert not re.search(r"https?:|//", markup.replace("</", "<"))  # no absolute or protocol-relative URL
    page = Page(markup)
    assert not [t for t, _ in page.tags if t in ("script", "link", "img", "iframe", "object", "embed", "base")]
    assert not [a for _, a in page.tags if "src" in a or "href" in a or any(k.startswith("on") for k in a)]
    assert "url(" not in markup and "@import" not in markup


def test_response_headers_forbid_framing_caching_referrers_and_foreign_loads():
    headers = key_page.HEADERS
    assert headers["Content-Security-Policy"] == ("default-src 'none'; style-src 'unsafe-inline'; "
                                                  "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Type"] == "text/html; charset=utf-8"


def test_return_origins_join_self_in_form_action():
    # Chromium applies form-action to the redirect after a submit: return_to's origin must be listed.
    csp = key_page.response_headers(return_origins=("https://app.example.com",))["Content-Security-Policy"]
    assert "form-action 'self' https://app.example.com;" in csp


# -- messages ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "message"), [
    (ApiKeyRejected("x"), key_page.KEY_REJECTED),
    (QuotaExhausted("x"), key_page.QUOTA_USED_UP),
    (ProviderUnavailable("x"), key_page.NOT_ANSWERING),
    (InvalidRequest("x", code="invalid_api_url"), key_page.INVALID_API_URL),
    (BrokerError("x", code="session_not_found"), None),
])
def test_recoverable_errors_have_a_message_for_the_page(error, message):
    assert key_page.message_for(error) == message


def test_the_issue_wording_of_the_messages():
    assert key_page.KEY_REJECTED.startswith("Insightly did not accept this API key")
    assert key_page.QUOTA_USED_UP.startswith("Insightly's daily API limit for this account is used up; try again later")
    assert key_page.NOT_ANSWERING.startswith("Insightly is not answering; try again")


# -- parse_form --------------------------------------------------------------------------------------

def body(**fields) -> str:
    return urlencode({"session": SESSION, "csrf": "c" * 43, "api_key": KEY, "api_url": "na1", **fields})


def test_parse_form_reads_the_four_fields():
    assert key_page.parse_form(body() + "&extension_field=1") == {
        "session": SESSION, "csrf": "c" * 43, "api_key": KEY, "api_url": "na1"}


def test_parse_form_decodes_what_a_browser_sends():
    form = key_page.parse_form(body(api_url="https://api.na1.insightly.com/v3.1/", api_key="a+b/c=d%"))
    assert form["api_url"] == "https://api.na1.insightly.com/v3.1/" and form["api_key"] == "a+b/c=d%"


@pytest.mark.parametrize(("raw", "code"), [
    (None, "invalid_form"),
    ("", "invalid_form"),
    ("x" * 5000, "invalid_form"),
    ("a=1&&&", "invalid_form"),
    ("novalue", "invalid_form"),
    ("&".join(f"f{i}=1" for i in range(20)), "invalid_form"),
    (body() + f"&api_key={KEY}", "invalid_form"),
    (body() + "&session=" + SESSION, "invalid_form"),
    (body(api_key=""), "missing_api_key"),
    (body(api_key="   "), "missing_api_key"),
    (body(api_url=""), "missing_api_url"),
    (urlencode({"session": SESSION, "csrf": "c" * 43, "api_url": "na1"}), "missing_api_key"),
    (urlencode({"session": SESSION, "api_key": KEY, "api_url": "na1"}), "missing_csrf"),
    (urlencode({"csrf": "c" * 43, "api_key": KEY, "api_url": "na1"}), "missing_session"),
    (body(session="short"), "invalid_session"),
    (body(session="s" * 100), "invalid_session"),
    (body(csrf="<script>" + "c" * 35), "invalid_csrf"),
    (body(api_key="k" * 600), "invalid_api_key"),
    (body(api_url="u" * 600), "invalid_api_url"),
])
def test_parse_form_refuses_bad_input_without_echo(raw, code):
    with pytest.raises(InvalidRequest) as caught:
        key_page.parse_form(raw)
    assert caught.value.code == code and caught.value.status == 400
    assert KEY not in caught.value.message and SESSION not in caught.value.message


# -- CSRF ------------------------------------------------------------------------------------------

def test_the_form_token_matches_only_its_cookie_and_session():
    cookie, token = key_page.new_csrf(SESSION)
    assert key_page.csrf_ok(cookie, token, SESSION)
    other_cookie, _ = key_page.new_csrf(SESSION)
    assert not key_page.csrf_ok(other_cookie, token, SESSION)          # another browser
    assert not key_page.csrf_ok(cookie, token, secrets.token_urlsafe(32))  # another session
    assert cookie != token and len(token) == 43


@pytest.mark.parametrize(("cookie", "token"), [
    (None, "t" * 43), ("", "t" * 43), ("c" * 43, None), ("c" * 43, ""), ("c" * 10, "t" * 43), ("c" * 43, "t;" * 20),
])
def test_a_missing_or_malformed_cookie_or_token_fails(cookie, token):
    assert not key_page.csrf_ok(cookie, token, SESSION)


def test_the_form_token_reveals_nothing_reusable():
    cookie, token = key_page.new_csrf(SESSION)
    assert cookie not in render(csrf_token=token)  # only the HMAC reaches the page
