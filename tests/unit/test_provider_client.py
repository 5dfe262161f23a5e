import base64
from datetime import datetime, timezone

import pytest
import requests
import responses

from broker.credentials.client_credentials import ClientCredentials
from broker.credentials.provider import ProviderClient, TokenSet
from broker.platform.config import ProviderSettings
from broker.platform.errors import ProviderRejected, ProviderUnavailable
from broker.platform.outbound import parse_retry_after

TOKEN_URL = "https://id.example.test/token"
CREDS = ClientCredentials("cid", "csecret")


def client(method="client_secret_post", **kw) -> ProviderClient:
    settings = ProviderSettings(authorize_url="https://id.example.test/authorize?prompt=consent",
                                token_url=TOKEN_URL, api_base_url="https://api.example.test/v3.1",
                                userinfo_path="/Users/Me", revocation_url="", scopes="a b",
                                use_pkce=True, token_auth_method=method, issuer="")
    return ProviderClient(settings, **kw)


def test_authorization_url_keeps_configured_query_and_adds_the_request():
    url = client().authorization_url(client_id="cid", redirect_uri="https://b/cb", state="st", code_challenge="ch")
    assert url.startswith("https://id.example.test/authorize?prompt=consent&response_type=code&client_id=cid")
    assert "redirect_uri=https%3A%2F%2Fb%2Fcb" in url and "scope=a+b" in url
    assert "code_challenge=ch&code_challenge_method=S256" in url


@responses.activate
def test_client_secret_basic_sends_credentials_in_the_header_only():
    responses.post(TOKEN_URL, json={"access_token": "at", "expires_in": 60})
    client("client_secret_basic").refresh(CREDS, "rt")
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()
    assert "csecret" not in sent.body


@responses.activate
def test_client_secret_post_sends_credentials_in_the_form():
    responses.post(TOKEN_URL, json={"access_token": "at"})
    tokens = client().refresh(CREDS, "rt")
    assert "client_secret=csecret" in responses.calls[0].request.body
    assert tokens.access_token == "at" and tokens.expires_in is None and tokens.refresh_token is None


@responses.activate
def test_429_is_transient_and_keeps_retry_after():
    responses.post(TOKEN_URL, status=429, headers={"Retry-After": "30"}, json={"error": "slow_down"})
    with pytest.raises(ProviderUnavailable) as caught:
        client().refresh(CREDS, "rt")
    assert caught.value.retry_after == 30


@responses.activate
def test_5xx_and_garbage_are_transient():
    responses.post(TOKEN_URL, status=502, body="<html>bad gateway</html>")
    with pytest.raises(ProviderUnavailable):
        client().refresh(CREDS, "rt")


@responses.activate
def test_a_timeout_is_transient():
    responses.post(TOKEN_URL, body=requests.ReadTimeout("slow"))
    with pytest.raises(ProviderUnavailable, match="in time"):
        client().refresh(CREDS, "rt")


@responses.activate
def test_an_oauth_error_keeps_only_the_error_code():
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_grant", "error_description": "rt-LEAKED is dead"})
    with pytest.raises(ProviderRejected) as caught:
        client().refresh(CREDS, "rt-LEAKED")
    assert caught.value.oauth_error == "invalid_grant"
    assert "LEAKED" not in str(caught.value)


def test_every_call_has_a_timeout():
    seen = {}

    class Recorder(requests.Session):
        def request(self, method, url, **kwargs):
            seen["timeout"] = kwargs.get("timeout")
            raise requests.ConnectionError("offline")

    with pytest.raises(ProviderUnavailable):
        client(session=Recorder(), timeout=(1.0, 2.0)).fetch_user("at")
    assert seen["timeout"] == (1.0, 2.0)


NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("value,seconds", [
    ("30", 30), (" 30 ", 30), ("0", 0), (str(365 * 86400), 3600), ("Thu, 01 Jan 2026 00:02:00 GMT", 120),
    ("Wed, 31 Dec 2025 23:00:00 GMT", 0), ("Fri, 31 Dec 2100 23:59:59 GMT", 3600),
    ("²", None), ("9" * 5000, None), ("-5", None), ("1.5", None), ("soon", None), ("", None), (None, None),
    ("Thu, 01 Jan 2026 00:02:00", None),  # a date without a zone is not an HTTP date
])
def test_retry_after_is_seconds_or_an_http_date_capped_at_an_hour(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("expires_in,kept", [(3600, 3600), ("3600", 3600), (31_536_000, 31_536_000),
                                             (31_536_001, None), (10**12, None), (0, None), (-100, None),
                                             ("soon", None), (True, None), (float("inf"), None)])
def test_expires_in_outside_one_year_is_unknown(expires_in, kept):
    assert TokenSet.from_response({"access_token": "at", "expires_in": expires_in}).expires_in == kept
