"""broker.credentials.insightly: pod parsing, the two auth schemes, rate-limit headers and Users/Me."""

from __future__ import annotations

import base64
import logging

import pytest
import requests
import responses

from broker.credentials.insightly import (
    INVALID_API_URL_MESSAGE,
    ApiAccessDenied,
    ApiKeyAuth,
    ApiKeyRejected,
    ApiUrlTemplate,
    BearerAuth,
    InsightlyApi,
    QuotaExhausted,
    RateLimit,
    authorization_header,
    check_api_key,
)
from broker.platform import deadline
from broker.platform.errors import BrokerError, ConfigurationError, InvalidRequest, ProviderUnavailable

KEY = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
NA1 = "https://api.na1.insightly.com/v3.1"
LOCAL = ApiUrlTemplate("http://127.0.0.1:9000/{pod}/v3.1")


# -- ApiUrlTemplate.parse -------------------------------------------------------------------------

@pytest.mark.parametrize(("pasted", "pod"), [
    ("na1", "na1"),
    ("NA1", "na1"),
    ("  eu1\n", "eu1"),                                   # surrounding whitespace from a paste
    ("au1", "au1"),
    ("https://api.na1.insightly.com/v3.1/", "na1"),       # exactly what Insightly shows
    ("https://api.na1.insightly.com/v3.1", "na1"),
    ("HTTPS://API.EU1.INSIGHTLY.COM/V3.1/", "eu1"),
    ("https://api.au1.insightly.com/", "au1"),
    ("https://api.au1.insightly.com", "au1"),
    ("api.na1.insightly.com/v3.1/", "na1"),               # copied without the scheme
    ("na1crm2025", "na1crm2025"),                         # 10 characters
])
def test_parse_accepts_the_api_url_or_the_pod(pasted, pod):
    assert ApiUrlTemplate().parse(pasted) == pod


@pytest.mark.parametrize("pasted", [
    "", " ", "n", "na1crm20250",                          # empty, too short, 11 characters
    "na-1", "na_1", "na1.", "na1/",
    "https://api.na1.insightly.com.evil.example/v3.1",    # another host
    "https://evil.example/v3.1", "https://api.insightly.com/v3.1",
    "na1.evil.example", "https://api.na1.evil.example/v3.1",
    "https://user:pw@api.na1.insightly.com/v3.1",         # userinfo
    "https://api.na1.insightly.com@evil.example/v3.1",
    "https://api.na1.insightly.com:8443/v3.1",            # port
    "https://api.na1.insightly.com:443/v3.1",
    "https://api.na1.insightly.com/v3.1/..", "https://api.na1.insightly.com/v3.1/../../x",
    "https://api.na1.insightly.com/%2e%2e/v3.1", "https://api.%6ea1.insightly.com/v3.1",
    "https://api.na1.insightly.com\\@evil.example/v3.1", "https:\\\\api.na1.insightly.com\\v3.1",
    "https://api.na\u0031\u0301.insightly.com/v3.1",       # combining mark
    "https://api.\u212aa1.insightly.com/v3.1", "\u212aa1",  # Kelvin sign lower-cases to "k"
    "https://api.na1.insіghtly.com/v3.1",                 # Cyrillic i
    "ｎａ１",                                              # full-width
    "https://api.xn--na1-xxx.insightly.com/v3.1",
    "https://127.0.0.1/v3.1", "https://[::1]/v3.1", "https://2130706433/v3.1", "127.0.0.1",
    "https://api.na1.insightly.com/v3.1?x=1", "https://api.na1.insightly.com/v3.1#x",
    "https://api.na1.insightly.com/v3.1/Users/Me", "https://api.na1.insightly.com/v3.0",
    "https://api.na1.insightly.com//v3.1", "https://api.na1.insightly.com/v3.1//",
    "http://api.na1.insightly.com/v3.1",                  # not the template's scheme
    "ftp://api.na1.insightly.com/v3.1", "//api.na1.insightly.com/v3.1",
    "https://api. na1.insightly.com/v3.1", "na 1", "na1\tx", "na1\x00", "https://api.na1\r\n.insightly.com",
    "https://api.na1.insightly.com/v3.1/" + "a" * 600,   # over-long
    " " * 513 + "na1",
    None, 42, ["na1"], {"pod": "na1"},
])
def test_parse_refuses_everything_else_without_echo(pasted):
    with pytest.raises(InvalidRequest) as caught:
        ApiUrlTemplate().parse(pasted)
    assert caught.value.code == "invalid_api_url" and caught.value.status == 400
    assert caught.value.message == INVALID_API_URL_MESSAGE  # one fixed text: nothing of the input


def test_the_base_url_is_rebuilt_from_the_template_not_copied():
    template = ApiUrlTemplate()
    assert template.base_url(template.parse("HTTPS://API.NA1.INSIGHTLY.COM/V3.1/")) == NA1


def test_a_local_template_puts_the_pod_in_the_path():
    assert LOCAL.parse("http://127.0.0.1:9000/eu1/v3.1/") == "eu1"
    assert LOCAL.parse("HTTP://127.0.0.1:9000/EU1") == "eu1"
    assert LOCAL.base_url("eu1") == "http://127.0.0.1:9000/eu1/v3.1"
    for other in ("http://127.0.0.1:9001/eu1/v3.1", "http://127.0.0.1:9000/eu1/../v3.1",
                  "https://api.eu1.insightly.com/v3.1"):
        with pytest.raises(InvalidRequest):
            LOCAL.parse(other)


def test_base_url_refuses_an_invalid_pod():
    with pytest.raises(InvalidRequest):
        ApiUrlTemplate().base_url("evil.example/")


@pytest.mark.parametrize("template", [
    "https://api.insightly.com/v3.1", "https://api.{pod}.{pod}.insightly.com", "api.{pod}.insightly.com",
    "https://api.{pod}.insightly.com/v3.1?x=1", "ftp://{pod}.example", "https://{pod}/{x}", "",
])
def test_a_bad_template_is_a_configuration_error(template):
    with pytest.raises(ConfigurationError):
        ApiUrlTemplate(template)


# -- API key and Authorization --------------------------------------------------------------------

def test_api_key_auth_is_insightlys_basic_scheme():
    assert authorization_header(ApiKeyAuth(KEY)) == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()


def test_bearer_auth_sends_the_token():
    assert authorization_header(BearerAuth("at-123")) == "Bearer at-123"


def test_auth_objects_never_print_the_secret():
    assert KEY not in repr(ApiKeyAuth(KEY)) and "at-123" not in repr(BearerAuth("at-123"))


def test_check_api_key_strips_a_paste_and_refuses_what_basic_cannot_carry():
    assert check_api_key(f" {KEY}\n") == KEY
    for bad in ("", "short", "a" * 257, "key:with-colon", "key with space", "kéy-0123456789", None, 7):
        with pytest.raises(InvalidRequest) as caught:
            check_api_key(bad)
        assert caught.value.code == "invalid_api_key" and "key:with" not in caught.value.message


# -- RateLimit -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ({"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "999"}, (1000, 999)),
    ({"X-RateLimit-Limit": " 1000 ", "X-RateLimit-Remaining": "0"}, (1000, 0)),
    ({"X-RateLimit-Remaining": "5"}, (None, 5)),
    ({"X-RateLimit-Limit": "abc", "X-RateLimit-Remaining": "-1"}, None),
    ({"X-RateLimit-Limit": "1e3", "X-RateLimit-Remaining": "12.5"}, None),
    ({"X-RateLimit-Limit": "9" * 40}, None),
    ({"X-RateLimit-Limit": "", "X-RateLimit-Remaining": ""}, None),
    ({}, None),
])
def test_rate_limit_headers_parse_or_give_none(headers, expected):
    rate = RateLimit.from_headers(requests.structures.CaseInsensitiveDict(headers), now=1700000000.7)
    assert (None if rate is None else (rate.limit, rate.remaining)) == expected
    if rate is not None:
        assert rate.observed_at == 1700000000


@pytest.mark.parametrize(("limit", "remaining", "low", "exhausted"), [
    (1000, 999, False, False), (1000, 100, False, False), (1000, 99, True, False), (1000, 0, True, True),
    (None, 0, False, True), (1000, None, False, False),
])
def test_low_below_ten_percent_and_exhausted_at_zero(limit, remaining, low, exhausted):
    rate = RateLimit(limit=limit, remaining=remaining, observed_at=1)
    assert (rate.is_low(), rate.is_exhausted()) == (low, exhausted)
    # Stored on the connection without the header Insightly did not send (a null would not read back).
    assert rate.as_dict() == {k: v for k, v in (("limit", limit), ("remaining", remaining), ("observed_at", 1))
                              if v is not None}


# -- InsightlyApi.users_me -----------------------------------------------------------------------

ME = {"USER_ID": 7, "EMAIL_ADDRESS": "grace@example.com", "FIRST_NAME": "Grace", "LAST_NAME": "Hopper",
      "TIMEZONE_ID": "x", "API_KEY": "never-kept"}
QUOTA = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "998"}


def api() -> InsightlyApi:
    return InsightlyApi(clock=lambda: 1700000000)


@responses.activate
def test_users_me_sends_the_key_as_basic_and_keeps_a_small_user_and_the_quota():
    responses.get(f"{NA1}/Users/Me", json=ME, headers=QUOTA)
    user, rate = api().users_me(NA1 + "/", ApiKeyAuth(KEY))
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == authorization_header(ApiKeyAuth(KEY))
    assert user == {"id": "7", "email": "grace@example.com", "name": "Grace Hopper"}
    assert rate == RateLimit(limit=1000, remaining=998, observed_at=1700000000)


@responses.activate
def test_users_me_without_rate_headers_gives_no_rate():
    responses.get(f"{NA1}/Users/Me", json=ME)
    assert api().users_me(NA1, BearerAuth("at"))[1] is None


@pytest.mark.parametrize(("status", "error", "code", "http"), [
    (401, ApiKeyRejected, "api_key_rejected", 422),
    (403, ApiAccessDenied, "api_access_denied", 422),
    (429, QuotaExhausted, "provider_quota_exhausted", 429),
    (500, ProviderUnavailable, "provider_unavailable", 503),
    (503, ProviderUnavailable, "provider_unavailable", 503),
    (404, ProviderUnavailable, "provider_unavailable", 503),
    (302, ProviderUnavailable, "provider_unavailable", 503),  # a redirect is not followed
])
@responses.activate
def test_users_me_maps_answers_to_errors_that_carry_the_quota(status, error, code, http):
    headers = {**QUOTA, "Retry-After": "60", "Location": "https://evil.example/"}
    responses.get(f"{NA1}/Users/Me", status=status, headers=headers, json={"Message": f"echo {KEY}"})
    with pytest.raises(error) as caught:
        api().users_me(NA1, ApiKeyAuth(KEY))
    assert (caught.value.code, caught.value.status) == (code, http)
    assert caught.value.rate_limit == RateLimit(limit=1000, remaining=998, observed_at=1700000000)
    assert KEY not in caught.value.message and len(responses.calls) == 1


@responses.activate
def test_a_429_is_transient_and_keeps_retry_after():
    responses.get(f"{NA1}/Users/Me", status=429, headers={"Retry-After": "3600", "X-RateLimit-Remaining": "0"})
    with pytest.raises(ProviderUnavailable) as caught:  # existing "transient" handling catches it
        api().users_me(NA1, ApiKeyAuth(KEY))
    assert caught.value.retry_after == 3600 and caught.value.rate_limit.is_exhausted()


@pytest.mark.parametrize("fault", [requests.ReadTimeout("t"), requests.ConnectTimeout("t"),
                                   requests.ConnectionError(f"https://{KEY}@host")])
@responses.activate
def test_no_answer_is_provider_unavailable_without_the_librarys_text(fault):
    responses.get(f"{NA1}/Users/Me", body=fault)
    with pytest.raises(ProviderUnavailable) as caught:
        api().users_me(NA1, ApiKeyAuth(KEY))
    assert caught.value.code == "provider_unavailable" and caught.value.rate_limit is None
    assert caught.value.__cause__ is None and caught.value.__context__ is None


@responses.activate
def test_a_200_that_is_not_a_json_object_is_unavailable():
    responses.get(f"{NA1}/Users/Me", body="<html>maintenance</html>", headers=QUOTA)
    with pytest.raises(ProviderUnavailable) as caught:
        api().users_me(NA1, ApiKeyAuth(KEY))
    assert caught.value.rate_limit.remaining == 998


@responses.activate
def test_no_call_when_the_invocation_has_no_time_left(monkeypatch):
    monkeypatch.setattr(deadline, "seconds_left", lambda: 1.2)
    with pytest.raises(ProviderUnavailable):
        api().users_me(NA1, ApiKeyAuth(KEY))
    assert len(responses.calls) == 0


@responses.activate
def test_the_timeout_is_cut_to_the_invocations_time_left(monkeypatch):
    seen = {}

    def request(method, url, **kwargs):
        seen.update(kwargs)
        raise requests.ReadTimeout()

    client = api()
    monkeypatch.setattr(client.session, "request", request)
    monkeypatch.setattr(deadline, "seconds_left", lambda: 3.0)
    with pytest.raises(ProviderUnavailable):
        client.users_me(NA1, ApiKeyAuth(KEY))
    assert seen["timeout"] == (2.0, 2.0) and seen["allow_redirects"] is False


@responses.activate
def test_the_key_is_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    responses.get(f"{NA1}/Users/Me", status=401)
    with pytest.raises(BrokerError):
        api().users_me(NA1, ApiKeyAuth(KEY))
    encoded = base64.b64encode(f"{KEY}:".encode()).decode()
    assert KEY not in caplog.text and encoded not in caplog.text
