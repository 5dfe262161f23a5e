"""The proxy's building blocks (issue 9): path safety, headers, bodies, retries, the quota
guard and the log/metric fields. Outbound calls go to `responses`, never the network."""

import base64
import gzip
import json
import zlib
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import unquote, urlsplit

import pytest
import requests
import responses
from requests.auth import HTTPBasicAuth

from broker.platform.errors import BrokerError, InvalidRequest, ProviderUnavailable
from broker.proxy import rules as proxy
from broker.store import quota

BASE = "https://api.na1.insightly.com/v3.1"
BASE_HOST = urlsplit(BASE).netloc


def gateway_decoded(sent: str) -> str:
    """What API Gateway HTTP API puts in pathParameters for a path the client sent."""
    return unquote(sent)


# -- 1. path safety --------------------------------------------------------------------------

# As the client sends them (before API Gateway's one decode).
HOSTILE_AS_SENT = [
    "..", ".", "../Users", "Contacts/../../admin", "Contacts/./1", "Contacts/..",
    "%2e%2e", "%2E%2E/Users", "Contacts/%2e%2e/%2e%2e", "%2e", ".%2e", "%2e.",
    "Contacts%2f..%2fUsers", "Contacts%2F%2Fevil.com", "%2f%2fevil.com", "%2Fetc/passwd",
    "Contacts%5c..%5cUsers", "Contacts\\..\\Users", "%5c%5cevil.com",
    "%252e%252e", "%252e%252e/Users", "Contacts%252f..", "%25", "%2525", "a%252Fb",
    "//evil.com", "/evil.com", "Contacts//1", "Contacts/", "/", "",
    "http:", "http://evil.com", "https:%2f%2fevil.com", "javascript:alert(1)", "evil.com:443",
    "@evil.com", "user@evil.com/Contacts", "Contacts/1@evil.com", "%40evil.com",
    "Contacts%00", "Contacts%0d%0aHost:%20evil.com", "Contacts\t1", "Contacts%7f", "Contacts%c2%85",
    "..;/Users", "Contacts/..;x/Users", ".;/x",
    "\uff0e\uff0e/Users", "Contacts\uff0fevil", "\uff0e",
    "a" * 2049,
]


@pytest.mark.parametrize("sent", HOSTILE_AS_SENT, ids=range(len(HOSTILE_AS_SENT)))
def test_hostile_paths_are_refused_as_invalid_path(sent):
    with pytest.raises(InvalidRequest) as refused:
        proxy.safe_path(gateway_decoded(sent))
    assert refused.value.code == "invalid_path" and refused.value.status == 400


# Decoded values as they might reach the function by any route, including a caller that did
# not decode: whatever is accepted, the host is the connection's.
ODD_DECODED = HOSTILE_AS_SENT + [
    "Contacts?x=1#frag", "Contacts#@evil.com", "Contacts 1", "Contacts/é", "Contacts;jsessionid=1",
    "a:b/c", "Contacts/a:b", "~user", "Contacts/1/Links", "Contacts/Search",
    "\u2024\u2024/Users", "Contacts\u2215evil",
]


@pytest.mark.parametrize("path", ODD_DECODED, ids=range(len(ODD_DECODED)))
def test_whatever_is_accepted_keeps_the_connections_host(path):
    try:
        url = proxy.target_url(BASE, path)
    except InvalidRequest as refused:
        assert refused.code == "invalid_path"
        return
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", BASE_HOST)
    assert parts.path.startswith("/v3.1/")
    assert not parts.query and not parts.fragment
    assert ".." not in parts.path.split("/") and "." not in parts.path.split("/")


@pytest.mark.parametrize("path, expected", [
    ("Contacts", BASE + "/Contacts"),
    ("Contacts/123", BASE + "/Contacts/123"),
    ("Contacts/Search", BASE + "/Contacts/Search"),
    ("FileAttachments/5/Download", BASE + "/FileAttachments/5/Download"),
    ("Contacts 1", BASE + "/Contacts%201"),
    ("Contacts?x=1", BASE + "/Contacts%3Fx=1"),
    ("a" * 2048, BASE + "/" + "a" * 2048),
])
def test_ordinary_paths_are_forwarded_under_the_base(path, expected):
    assert proxy.target_url(BASE, path) == expected


def test_query_string_is_kept_as_sent_but_cannot_end_the_url():
    url = proxy.target_url(BASE + "/", "Contacts", "top=10&skip=20&field_name=EMAIL&field_value=a%40b.c")
    assert url == BASE + "/Contacts?top=10&skip=20&field_name=EMAIL&field_value=a%40b.c"
    assert urlsplit(proxy.target_url(BASE, "Contacts", "a=1 2#x")).fragment == ""


# -- 2. headers ------------------------------------------------------------------------------

def test_only_allowed_caller_headers_are_forwarded():
    sent = proxy.request_headers({
        "accept": "application/json", "accept-language": "de", "content-type": "application/json",
        "if-match": '"e1"', "if-none-match": '"e2"', "if-modified-since": "Wed, 21 Oct 2015 07:28:00 GMT",
        "authorization": "Bearer caller", "cookie": "s=1", "host": "evil.com", "x-amz-date": "x",
        "x-amz-security-token": "t", "connection": "close", "transfer-encoding": "chunked",
        "keep-alive": "1", "te": "trailers", "upgrade": "h2c", "proxy-authorization": "Basic x",
        "x-forwarded-for": "1.2.3.4", "content-length": "5",
    })
    assert sent == {"Accept": "application/json", "Accept-Language": "de", "Content-Type": "application/json",
                    "If-Match": '"e1"', "If-None-Match": '"e2"',
                    "If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT",
                    "User-Agent": proxy.USER_AGENT, "Accept-Encoding": "gzip, deflate"}


def test_only_allowed_insightly_headers_come_back():
    back = proxy.response_headers({
        "Content-Type": "application/json", "ETag": '"1"', "Last-Modified": "x", "Location": "/v3.1/Contacts/1",
        "Retry-After": "5", "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "999", "X-Total-Count": "3",
        "Set-Cookie": "s=1", "Transfer-Encoding": "chunked", "Connection": "keep-alive",
        "Content-Length": "10", "Content-Encoding": "gzip", "Server": "IIS",
    }, retries=2)
    assert set(back) == {"Content-Type", "ETag", "Last-Modified", "Location", "Retry-After", "X-RateLimit-Limit",
                         "X-RateLimit-Remaining", "X-Total-Count", "X-Broker-Retries"}
    assert back["X-Broker-Retries"] == "2"
    assert "X-Broker-Retries" not in proxy.response_headers({}, retries=0)


def test_broker_made_errors_are_marked_and_keep_the_error_shape():
    answer = proxy.broker_answer(BrokerError("quota", code="provider_quota_exhausted", status=429), retry_after=7)
    result = answer.as_lambda_result()
    assert result["statusCode"] == 429 and result["isBase64Encoded"] is False
    assert result["headers"]["X-Broker-Error"] == "provider_quota_exhausted"
    assert result["headers"]["Retry-After"] == "7"
    assert json.loads(result["body"]) == {"error": "provider_quota_exhausted", "message": "quota"}


# -- 3. bodies -------------------------------------------------------------------------------

@pytest.mark.parametrize("event, expected", [
    ({"body": '{"FIRST_NAME": "Zoë"}', "isBase64Encoded": False}, '{"FIRST_NAME": "Zoë"}'.encode()),
    ({"body": base64.b64encode(b"\x00\xff\x10PK").decode(), "isBase64Encoded": True}, b"\x00\xff\x10PK"),
    ({"body": None}, None),
    ({}, None),
])
def test_request_body_becomes_bytes(event, expected):
    assert proxy.request_body(event) == expected


@pytest.mark.parametrize("event", [
    {"body": "a" * 6_000_001, "isBase64Encoded": False},
    {"body": base64.b64encode(b"\x00" * 6_000_001).decode(), "isBase64Encoded": True},
])
def test_request_body_over_6mb_is_payload_too_large(event):
    with pytest.raises(BrokerError) as refused:
        proxy.request_body(event)
    assert (refused.value.status, refused.value.code) == (413, "payload_too_large")


def test_request_body_of_exactly_6mb_passes():
    assert len(proxy.request_body({"body": "a" * 6_000_000})) == 6_000_000


def test_request_body_that_is_not_base64_is_invalid_body():
    with pytest.raises(InvalidRequest) as refused:
        proxy.request_body({"body": "not base64!", "isBase64Encoded": True})
    assert refused.value.code == "invalid_body"


@pytest.mark.parametrize("content_type, text", [
    ("application/json", True), ("application/json; charset=utf-8", True), ("text/plain", True),
    ("text/csv", True), ("application/problem+json", True), ("application/xml", True),
    ("application/atom+xml", True), ("application/octet-stream", False), ("application/pdf", False),
    ("image/png", False), (None, False),
])
def test_text_and_json_pass_as_text(content_type, text):
    assert proxy.is_text(content_type) is text


def session() -> requests.Session:
    return requests.Session()


def send(method="GET", url=BASE + "/Contacts", body=None, **kw):
    kw.setdefault("seconds_left", lambda: 30.0)
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("jitter", lambda a, b: b)
    return proxy.forward(session(), method, url, proxy.request_headers({}), body, HTTPBasicAuth("key", ""), **kw)


@responses.activate
def test_binary_attachment_round_trips_byte_for_byte():
    data = bytes(range(256)) * 41  # every byte value, not UTF-8
    responses.post(BASE + "/Contacts/1/FileAttachments", status=201, json={"FILE_ID": 9})
    responses.get(BASE + "/FileAttachments/9", body=data, content_type="application/octet-stream")
    upload = proxy.request_body({"body": base64.b64encode(data).decode(), "isBase64Encoded": True})
    send("POST", BASE + "/Contacts/1/FileAttachments", upload)
    assert responses.calls[0].request.body == data

    answer = proxy.upstream_answer(send(url=BASE + "/FileAttachments/9")[0])
    assert answer.is_base64 and base64.b64decode(answer.body) == data


@responses.activate
def test_json_passes_as_text_unchanged():
    body = '[{"CONTACT_ID": 1, "FIRST_NAME": "Zoë"}]'
    responses.get(BASE + "/Contacts", body=body.encode(), content_type="application/json; charset=utf-8",
                  headers={"ETag": '"7"', "Set-Cookie": "ASP.NET_SessionId=abc", "X-Total-Count": "1"})
    answer = proxy.upstream_answer(send()[0])
    assert (answer.status, answer.body, answer.is_base64) == (200, body, False)
    assert answer.headers == {"Content-Type": "application/json; charset=utf-8", "ETag": '"7"', "X-Total-Count": "1"}


@responses.activate
def test_text_that_is_not_utf8_passes_as_base64_so_bytes_survive():
    latin1 = "café".encode("latin-1")
    responses.get(BASE + "/Notes/1", body=latin1, content_type="text/plain; charset=iso-8859-1")
    answer = proxy.upstream_answer(send(url=BASE + "/Notes/1")[0])
    assert answer.is_base64 and base64.b64decode(answer.body) == latin1


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
@responses.activate
def test_compressed_answer_is_decompressed_and_content_encoding_dropped(encoding, compress):
    body = json.dumps([{"CONTACT_ID": i} for i in range(200)]).encode()
    responses.get(BASE + "/Contacts", body=compress(body), content_type="application/json",
                  headers={"Content-Encoding": encoding, "Content-Length": str(len(compress(body)))})
    answer = proxy.upstream_answer(send()[0])
    assert answer.body.encode() == body
    assert "Content-Encoding" not in answer.headers and "Content-Length" not in answer.headers


@responses.activate
def test_brotli_is_never_asked_for_and_an_undecodable_encoding_is_a_broker_502():
    responses.get(BASE + "/Contacts", body=b"\x0b\x00\x80", content_type="application/json",
                  headers={"Content-Encoding": "br"})
    response, _ = send()
    assert responses.calls[0].request.headers["Accept-Encoding"] == "gzip, deflate"
    answer = proxy.upstream_answer(response)
    assert answer.status == 502 and answer.headers["X-Broker-Error"] == "provider_bad_answer"


@pytest.mark.parametrize("content_type, size", [
    ("application/octet-stream", 4_800_000),   # fits raw, not once base64 inflates it by 4/3
    ("application/octet-stream", 7_000_000),
    ("application/json", 6_400_000),
])
@responses.activate
def test_answer_too_large_for_lambda_is_502_never_truncated(content_type, size):
    responses.get(BASE + "/Contacts", body=b"1" * size, content_type=content_type)
    answer = proxy.upstream_answer(send()[0])
    assert answer.status == 502 and answer.headers["X-Broker-Error"] == "response_too_large"
    assert "top" in json.loads(answer.body)["message"] and "skip" in json.loads(answer.body)["message"]


@responses.activate
def test_text_whose_json_escaping_overflows_the_limit_is_502():
    # 3.5 MB of quotes: fine as raw bytes, 7 MB once escaped inside the result JSON.
    responses.get(BASE + "/Notes", body=b'"' * 3_500_000, content_type="text/plain")
    answer = proxy.upstream_answer(send(url=BASE + "/Notes")[0])
    assert (answer.status, answer.headers["X-Broker-Error"]) == (502, "response_too_large")


@responses.activate
def test_largest_binary_that_fits_passes_whole():
    size = (proxy.MAX_LAMBDA_RESPONSE - 400) // 4 * 3
    responses.get(BASE + "/FileAttachments/1", body=b"\x00" * size, content_type="application/octet-stream")
    answer = proxy.upstream_answer(send(url=BASE + "/FileAttachments/1")[0])
    assert answer.status == 200 and len(base64.b64decode(answer.body)) == size
    assert len(json.dumps(answer.as_lambda_result())) <= 6 * 1024 * 1024


# -- 4. retries ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@responses.activate
def test_idempotent_call_is_retried_on_503_at_most_three_attempts(method):
    responses.add(method, BASE + "/Contacts/1", status=503)
    response, retries = send(method, BASE + "/Contacts/1")
    assert len(responses.calls) == 3 and (response.status_code, retries) == (503, 2)


@responses.activate
def test_get_recovers_after_a_502_and_counts_the_retry():
    responses.get(BASE + "/Contacts", status=502)
    responses.get(BASE + "/Contacts", status=200, json=[])
    response, retries = send()
    assert (response.status_code, retries, len(responses.calls)) == (200, 1, 2)
    assert proxy.upstream_answer(response, retries=retries).headers["X-Broker-Retries"] == "1"


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@responses.activate
def test_post_and_patch_are_never_retried(method):
    responses.add(method, BASE + "/Contacts", status=503)
    response, retries = send(method, body=b"{}")
    assert (len(responses.calls), response.status_code, retries) == (1, 503, 0)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@responses.activate
def test_post_and_patch_are_not_retried_after_a_timeout(method):
    responses.add(method, BASE + "/Contacts", body=requests.ReadTimeout("slow"))
    with pytest.raises(proxy.UpstreamTimeout):
        send(method, body=b"{}")
    assert len(responses.calls) == 1


@responses.activate
def test_429_is_never_retried():
    responses.get(BASE + "/Contacts", status=429, headers={"Retry-After": "1"})
    response, retries = send()
    assert (len(responses.calls), response.status_code, retries) == (1, 429, 0)


@responses.activate
def test_get_retries_timeouts_and_connection_errors_then_gives_504_or_503():
    responses.get(BASE + "/Contacts", body=requests.ReadTimeout("slow"))
    with pytest.raises(proxy.UpstreamTimeout) as timed_out:
        send()
    assert len(responses.calls) == 3 and timed_out.value.status == 504

    responses.reset()
    responses.get(BASE + "/Contacts", body=requests.ConnectionError("refused"))
    with pytest.raises(ProviderUnavailable):
        send()
    assert len(responses.calls) == 3


@responses.activate
def test_backoff_is_capped_full_jitter():
    responses.get(BASE + "/Contacts", status=503)
    asked, slept = [], []
    send(jitter=lambda low, high: asked.append((low, high)) or high, sleep=slept.append)
    assert asked == [(0.0, 0.2), (0.0, 0.4)] and slept == [0.2, 0.4]


class Clock:
    """A monotonic clock that sleep and slow endpoints advance."""

    def __init__(self, left: float):
        self.left = left

    def seconds_left(self) -> float:
        return self.left

    def sleep(self, seconds: float) -> None:
        self.left -= seconds


@responses.activate
def test_timeouts_never_reach_past_the_invocations_remaining_time():
    clock = Clock(left=4.0)
    timeouts = []

    def slow(request):
        timeouts.append(request.req_kwargs["timeout"])
        clock.left -= request.req_kwargs["timeout"][1]  # it used its whole read timeout
        raise requests.ReadTimeout("slow")

    responses.add_callback(responses.GET, BASE + "/Contacts", callback=slow)
    with pytest.raises(proxy.UpstreamTimeout):
        send(seconds_left=clock.seconds_left, sleep=clock.sleep)
    assert timeouts[0] == (3.0, 3.0)  # 4 s left less the 1 s margin
    assert len(timeouts) == 1  # nothing left for a second attempt
    assert clock.left >= proxy.TIME_MARGIN


@responses.activate
def test_a_failing_endpoint_stops_retrying_when_time_runs_out():
    clock = Clock(left=2.3)
    responses.get(BASE + "/Contacts", status=503)
    response, retries = send(seconds_left=clock.seconds_left, sleep=clock.sleep, jitter=lambda a, b: 0.5)
    # After one 0.5 s wait, 0.8 s remain: less than the margin plus a useful attempt.
    assert (len(responses.calls), retries, response.status_code) == (2, 1, 503)
    assert clock.left >= proxy.TIME_MARGIN


def test_no_call_at_all_when_the_invocation_is_nearly_over():
    with responses.RequestsMock() as mock, pytest.raises(proxy.UpstreamTimeout):
        send(seconds_left=lambda: 1.2)
    assert len(mock.calls) == 0


@responses.activate
def test_a_503_asking_for_longer_than_we_wait_is_passed_on_at_once():
    responses.get(BASE + "/Contacts", status=503, headers={"Retry-After": "120"})
    response, retries = send()
    assert (len(responses.calls), retries, response.headers["Retry-After"]) == (1, 0, "120")


@responses.activate
def test_credentials_come_from_auth_and_redirects_are_not_followed():
    responses.get(BASE + "/Contacts", status=302, headers={"Location": "https://evil.com/"})
    response, _ = proxy.forward(session(), "GET", BASE + "/Contacts",
                                proxy.request_headers({"Authorization": "Bearer caller", "Cookie": "a=b"}),
                                None, HTTPBasicAuth("the-key", ""), seconds_left=lambda: 30.0)
    sent = responses.calls[0].request.headers
    assert sent["Authorization"] == "Basic " + base64.b64encode(b"the-key:").decode()
    assert "Cookie" not in sent and len(responses.calls) == 1 and response.status_code == 302


# -- 5. the quota guard -----------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0), (" 5 ", 5.0), ("0", 0.0), ("999999", 86400.0),
    (format_datetime(datetime.fromtimestamp(NOW + 300, UTC), usegmt=True), 300.0),
    (format_datetime(datetime.fromtimestamp(NOW - 300, UTC), usegmt=True), 0.0),
    (format_datetime(datetime.fromtimestamp(NOW + 3 * 86400, UTC), usegmt=True), 86400.0),
    ("-5", None), ("1.5", None), ("soon", None), ("", None), (None, None), ("٣", None),
    ("Wed, 99 Foo 2015 07:28:00 GMT", None), ("Wed, 21 Oct 2015 07:28:00", None),
])
def test_retry_after_is_seconds_or_an_http_date_capped_at_a_day(value, seconds):
    assert quota.retry_after_seconds(value, NOW) == seconds


def test_after_a_429_the_broker_answers_itself_until_retry_after():
    state = quota.after_response(quota.QuotaState(), status=429, retry_after="60", observed=None,
                                 now=NOW, backoff_seconds=900)
    assert state.throttled_until == NOW + 60
    assert quota.locally_throttled(state, NOW + 1) == 59
    assert quota.locally_throttled(state, NOW + 59.5) == 1
    assert quota.locally_throttled(state, NOW + 60) is None


@pytest.mark.parametrize("retry_after", [None, "garbage", "1.5"])
def test_a_429_without_a_readable_retry_after_backs_off_quota_backoff_seconds(retry_after):
    state = quota.after_response(quota.QuotaState(), status=429, retry_after=retry_after, observed=None,
                                 now=NOW, backoff_seconds=900)
    assert state.throttled_until == NOW + 900


def test_remaining_zero_throttles_like_a_429():
    observed = quota.RateLimit(limit=1000, remaining=0, observed_at=NOW)
    state = quota.after_response(quota.QuotaState(), status=200, retry_after=None, observed=observed,
                                 now=NOW, backoff_seconds=900)
    assert state.throttled_until == NOW + 900 and state.rate_limit == observed
    assert quota.locally_throttled(state, NOW + 10) == 890


def test_once_the_throttle_passes_one_probe_is_claimed_and_its_success_ends_it():
    throttled = quota.QuotaState(throttled_until=NOW)
    assert quota.probe_claim(throttled, NOW - 1) is None  # still throttled: nothing to claim
    claimed = quota.probe_claim(throttled, NOW + 1)
    assert quota.locally_throttled(claimed, NOW + 2) is not None  # others wait for the probe
    healthy = quota.after_response(claimed, status=200, retry_after=None,
                                   observed=quota.RateLimit(1000, 500, NOW + 2), now=NOW + 2, backoff_seconds=900)
    assert healthy.throttled_until is None and quota.locally_throttled(healthy, NOW + 2) is None
    assert quota.probe_claim(quota.QuotaState(), NOW) is None


def rl(remaining, limit=1000, at=NOW):
    return quota.RateLimit(limit=limit, remaining=remaining, observed_at=at)


@pytest.mark.parametrize("previous, observed, now, write", [
    # crossing a 10 % step writes, staying inside one does not
    (quota.QuotaState(rate_limit=rl(905), last_written_at=NOW), quota.QuotaState(rate_limit=rl(899)), NOW + 1, True),
    (quota.QuotaState(rate_limit=rl(905), last_written_at=NOW), quota.QuotaState(rate_limit=rl(901)), NOW + 1, False),
    # a throttle starting or ending writes
    (quota.QuotaState(rate_limit=rl(500), last_written_at=NOW),
     quota.QuotaState(throttled_until=NOW + 60, rate_limit=rl(500)), NOW + 1, True),
    (quota.QuotaState(throttled_until=NOW, rate_limit=rl(500), last_written_at=NOW),
     quota.QuotaState(rate_limit=rl(500)), NOW + 1, True),
    # a minute-old figure that changed is refreshed; an unchanged one is not
    (quota.QuotaState(rate_limit=rl(905), last_written_at=NOW), quota.QuotaState(rate_limit=rl(901)), NOW + 60, True),
    (quota.QuotaState(rate_limit=rl(905), last_written_at=NOW), quota.QuotaState(rate_limit=rl(905)), NOW + 600, False),
    # nothing observed: nothing to write
    (quota.QuotaState(rate_limit=rl(905), last_written_at=NOW), quota.QuotaState(rate_limit=None), NOW + 600, False),
    # first observation ever
    (quota.QuotaState(), quota.QuotaState(rate_limit=rl(905)), NOW, True),
])
def test_should_write_only_on_steps_throttles_or_once_a_minute(previous, observed, now, write):
    assert quota.should_write(previous, observed, now) is write


def test_a_burst_of_calls_costs_few_writes():
    stored, writes = quota.QuotaState(rate_limit=rl(1000), last_written_at=NOW), 0
    for i in range(1, 301):  # 300 calls in 30 s, each using one request of the quota
        now = NOW + i * 0.1
        observed = quota.after_response(stored, status=200, retry_after=None, observed=rl(1000 - i, at=now),
                                        now=now, backoff_seconds=900)
        if quota.should_write(stored, observed, now):
            stored, writes = replace(observed, last_written_at=now), writes + 1
    assert writes == 3  # 90 %, 80 %, 70 %


# -- 6. observability -------------------------------------------------------------------------

@pytest.mark.parametrize("path, template", [
    ("Contacts/123", "Contacts/{id}"),
    ("Contacts/123/Links/45", "Contacts/{id}/Links/{id}"),
    ("Contacts/Search", "Contacts/Search"),
    ("Opportunities/12a", "Opportunities/12a"),
    ("v3.1/Contacts", "v3.1/Contacts"),
])
def test_path_template_hides_numeric_ids(path, template):
    assert proxy.path_template(path) == template


def test_log_fields_have_no_query_header_or_body():
    fields = proxy.log_fields(method="get", connection_id="c1", path="Contacts/123", status=200,
                              total_ms=123.456, insightly_ms=100.0, retries=1, priority="background")
    assert fields == {"method": "GET", "connection_id": "c1", "path": "Contacts/{id}", "status": 200,
                      "latency_ms": 123.5, "insightly_ms": 100.0, "retries": 1, "answered_locally": False,
                      "priority": "background", "refusal": None}
    assert proxy.log_fields(method="GET", connection_id="c1", path=None, status=400, total_ms=1,
                            insightly_ms=0)["path"] == "{invalid}"


def test_metrics_split_broker_and_insightly_time_and_count_local_429s():
    names = {name: value for name, _, value in proxy.metric_values(status=200, total_ms=130, insightly_ms=100,
                                                                    retries=2, recovered_401=True)}
    assert names == {"ProxyStatus2xx": 1, "ProxyBrokerLatency": 30, "ProxyInsightlyLatency": 100,
                     "ProxyRetries": 2, "Proxy401Recovered": 1}
    local = {name for name, _, _ in proxy.metric_values(status=429, total_ms=5, insightly_ms=0, answered_locally=True)}
    assert local == {"ProxyStatus4xx", "ProxyBrokerLatency", "ProxyLocal429"}


def test_a_429_from_insightly_is_counted_apart_from_the_brokers_own():
    # Quota trouble at Insightly (an alarm watches it) versus the broker's quota guard answering.
    upstream = {name for name, _, _ in proxy.metric_values(status=429, total_ms=90, insightly_ms=80)}
    assert upstream == {"ProxyStatus4xx", "ProxyBrokerLatency", "ProxyInsightlyLatency", "ProxyProvider429"}


def gzip_bomb(decompressed_mb: int) -> bytes:
    """A gzip body of `decompressed_mb` MB of zeros, built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(decompressed_mb)), packer.flush()])


@responses.activate
def test_a_gzip_bomb_is_refused_with_memory_bounded_by_the_limit_not_the_bomb():
    # Second security review, F4: a 200 MB answer in a ~200 KB gzip body.
    import tracemalloc

    bomb = gzip_bomb(200)
    responses.get(BASE + "/Contacts", body=bomb, content_type="application/json",
                  headers={"Content-Encoding": "gzip", "Content-Length": str(len(bomb))})
    tracemalloc.start()
    try:
        answer = proxy.upstream_answer(send()[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert answer.status == 502 and answer.headers["X-Broker-Error"] == "response_too_large"
    assert peak < 3 * proxy.MAX_LAMBDA_RESPONSE  # the limit and its copy, never the 200 MB
