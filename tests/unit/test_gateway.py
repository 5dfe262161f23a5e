"""The local gateway: routes, SigV4 like API Gateway's IAM authorizer, and the payload 2.0
event and response translation, over real HTTP against moto in server mode.

No test here uses the in-process `stack` fixture (mock_aws patches botocore globally)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import http.client
import io
import json
import re
import threading
from urllib.parse import urlsplit

import botocore.auth
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.aws import MotoServer, put_client_credentials, session_for
from local.gateway import (
    BAD_SIGNATURE,
    UNKNOWN_KEY,
    AccessDenied,
    Gateway,
    SigV4Verifier,
    _FunctionPool,
    build_event,
    canonical_query,
    http_response,
)
from local.lambda_events import RecordingHandler, http_event, match_route
from local.stack import ACCOUNT_ID, Stack, load_template

# `sam local generate-event apigateway http-api-proxy` (SAM CLI 1.170.0), the reference shape.
SAM_HTTP_API_EVENT = {
    "version": "2.0", "routeKey": "$default", "rawPath": "/path/to/resource",
    "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value", "cookies": ["cookie1", "cookie2"],
    "headers": {"Header1": "value1", "Header2": "value1,value2"},
    "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
    "requestContext": {
        "accountId": "123456789012", "apiId": "api-id",
        "authentication": {"clientCert": {"clientCertPem": "CERT_CONTENT", "subjectDN": "www.example.com",
                                          "issuerDN": "Example issuer",
                                          "serialNumber": "a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1:a1",
                                          "validity": {"notBefore": "May 28 12:30:02 2019 GMT",
                                                       "notAfter": "Aug  5 09:36:04 2021 GMT"}}},
        "authorizer": {"jwt": {"claims": {"claim1": "value1", "claim2": "value2"}, "scopes": ["scope1", "scope2"]}},
        "domainName": "id.execute-api.us-east-1.amazonaws.com", "domainPrefix": "id",
        "http": {"method": "POST", "path": "/path/to/resource", "protocol": "HTTP/1.1", "sourceIp": "192.168.0.1/32",
                 "userAgent": "agent"},
        "requestId": "id", "routeKey": "$default", "stage": "$default", "time": "12/Mar/2020:19:03:58 +0000",
        "timeEpoch": 1583348638390,
    },
    "body": "eyJ0ZXN0IjoiYm9keSJ9", "pathParameters": {"parameter1": "value1"}, "isBase64Encoded": True,
    "stageVariables": {"stageVariable1": "value1", "stageVariable2": "value2"},
}
# Present only for mTLS custom domains and configured stage variables; the template has neither.
NOT_CONFIGURED = {"stageVariables"}
NOT_CONFIGURED_CONTEXT = {"authentication"}
IAM_IDENTITY_KEYS = {"accessKey", "accountId", "callerId", "cognitoIdentity", "principalOrgId", "userArn", "userId"}


@pytest.fixture(scope="module")
def gateway():
    """moto server + the template's resources + the gateway, on free loopback ports."""
    with MotoServer(port=0) as moto:
        stack = Stack(parameters={"AllowedReturnOrigins": "http://127.0.0.1:8080"})
        session = session_for(moto.url)
        stack.provision(session)
        put_client_credentials(stack, session, "test-client-id", "test-client-secret-value")
        # Gateway.start() sets the functions' environment (AWS_ENDPOINT_URL too) and resets the
        # broker's cached clients; stop() puts os.environ back.
        with Gateway(stack, port=0, credentials={"testing": "testing"},
                     env={"AWS_ENDPOINT_URL": moto.url}, access_log=False) as running:
            yield running


def signed(method: str, url: str, body: bytes | None = None, *, key: str = "testing", secret: str = "testing",
           headers: dict | None = None, region: str = "us-east-1") -> dict:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(key, secret), "execute-api", region).add_auth(request)
    return dict(request.headers)


def call(gateway, method: str, path: str, body: dict | None = None, sign: bool = True, **sign_kwargs):
    url = gateway.url + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if sign:
        headers = signed(method, url, data, headers=headers, **sign_kwargs)
    return requests.request(method, url, data=data, headers=headers, timeout=10)


@pytest.fixture
def capture(gateway, monkeypatch):
    """Swap the ConnectionsFunction and AuthorizeFunction handlers for one RecordingHandler."""
    stub = RecordingHandler(answer={"statusCode": 200, "body": "{}"})

    class Pool:
        def acquire(self):
            return stub

        def release(self, module):
            pass

    for logical in ("ConnectionsFunction", "AuthorizeFunction"):
        monkeypatch.setitem(gateway._pools, logical, Pool())
    return stub


# -- SigV4 on backend routes -----------------------------------------------------------------

def test_an_unsigned_backend_call_is_forbidden(gateway):
    answer = call(gateway, "POST", "/connect-sessions", {"connection_id": "u1"}, sign=False)
    assert answer.status_code == 403
    assert answer.json() == {"message": "Forbidden"}


def test_a_call_signed_with_the_wrong_secret_is_forbidden(gateway):
    answer = call(gateway, "POST", "/connect-sessions", {"connection_id": "u1"}, secret="not-the-secret")
    assert answer.status_code == 403
    assert answer.json() == {"message": BAD_SIGNATURE}


def test_an_unknown_access_key_is_forbidden(gateway):
    answer = call(gateway, "GET", "/connections/u1", key="AKIDUNKNOWN")
    assert (answer.status_code, answer.json()) == (403, {"message": UNKNOWN_KEY})


def test_a_body_changed_after_signing_is_forbidden(gateway):
    url = gateway.url + "/connect-sessions"
    body = json.dumps({"connection_id": "u1", "return_to": "http://127.0.0.1:8080/"}).encode()
    headers = signed("POST", url, body, headers={"Content-Type": "application/json"})
    answer = requests.post(url, data=body.replace(b"u1", b"u2"), headers=headers, timeout=10)
    assert (answer.status_code, answer.json()) == (403, {"message": BAD_SIGNATURE})


def test_a_stale_signature_is_forbidden(gateway, monkeypatch):
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=6)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: old)
    answer = call(gateway, "GET", "/connections/u1")
    assert answer.status_code == 403
    assert answer.json()["message"].startswith("Signature expired:")


def test_a_signature_for_another_region_is_forbidden(gateway):
    answer = call(gateway, "GET", "/connections/u1", region="eu-west-1")
    assert answer.status_code == 403
    assert "valid region" in answer.json()["message"]


def test_a_correctly_signed_call_creates_a_connect_session(gateway):
    answer = call(gateway, "POST", "/connect-sessions",
                  {"connection_id": "user-1", "return_to": "http://127.0.0.1:8080/settings"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["connect_url"].startswith(gateway.url + "/oauth/authorize?session=")


def test_signed_calls_with_encoded_paths_and_queries_verify(gateway):
    answer = call(gateway, "GET", "/connections/user%40example.com?b=2&a=1&a=0")
    assert answer.status_code == 404, answer.text  # reached the function: no such connection
    assert answer.json()["error"]


def test_a_public_route_needs_no_signature(gateway):
    answer = requests.get(gateway.url + "/oauth/authorize?session=not-a-session", timeout=10)
    assert 400 <= answer.status_code < 500
    assert "error" in answer.json()  # the broker's own error, not the gateway's


def test_an_unknown_route_is_not_found(gateway):
    assert requests.get(gateway.url + "/nothing-here", timeout=10).json() == {"message": "Not Found"}
    wrong_method = requests.put(gateway.url + "/oauth/authorize", timeout=10)
    assert (wrong_method.status_code, wrong_method.json()) == (404, {"message": "Not Found"})


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND"])
def test_a_method_no_route_has_is_not_found_like_api_gateway(gateway, method):
    # Found by `make fuzz`: the gateway answered http.server's HTML 501 (a 5xx) for TRACE.
    answer = requests.request(method, gateway.url + "/connect-sessions", timeout=10)
    assert (answer.status_code, answer.json()) == (404, {"message": "Not Found"})


# -- the event ---------------------------------------------------------------------------------

def _raw_request(gateway, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""):
    parts = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.putrequest(method, target, skip_host=any(name.lower() == "host" for name, _ in headers))
    for name, value in headers:
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    answer = connection.getresponse()
    result = answer.status, answer.getheaders(), answer.read()
    connection.close()
    return result


def test_the_event_has_the_http_api_payload_2_shape(gateway, capture):
    body = json.dumps({"hello": "world"}).encode()
    target = "/connections/a%40b?x=1&x=2&y=%20z&empty="
    headers = list(signed("GET", gateway.url + target, body, headers={"Content-Type": "application/json"}).items())
    headers += [("Cookie", "a=1; b=2"), ("Cookie", "c=3"), ("X-Thing", "one"), ("X-Thing", "two"),
                ("User-Agent", "gateway-test")]
    status, _, _ = _raw_request(gateway, "GET", target, headers, body)
    assert status == 200
    event = capture.events[-1]

    assert set(event) == set(SAM_HTTP_API_EVENT) - NOT_CONFIGURED
    context = event["requestContext"]
    reference = SAM_HTTP_API_EVENT["requestContext"]
    assert set(context) == set(reference) - NOT_CONFIGURED_CONTEXT
    assert set(context["http"]) == set(reference["http"])
    for key in event:
        assert type(event[key]) is type(SAM_HTTP_API_EVENT[key]), key
    for key in context:
        assert type(context[key]) is type(reference[key]), key
    for key in context["http"]:
        assert type(context["http"][key]) is type(reference["http"][key]), key

    assert event["version"] == "2.0"
    assert event["routeKey"] == context["routeKey"] == "GET /connections/{connection_id}"
    assert event["rawPath"] == context["http"]["path"] == "/connections/a@b"  # HTTP API decodes the path
    assert event["pathParameters"] == {"connection_id": "a@b"}
    assert event["rawQueryString"] == "x=1&x=2&y=%20z&empty="
    assert event["queryStringParameters"] == {"x": "1,2", "y": " z", "empty": ""}
    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in event["headers"]
    assert all(name == name.lower() for name in event["headers"])
    assert event["headers"]["x-thing"] == "one,two"
    assert event["headers"]["host"] == context["domainName"] == urlsplit(gateway.url).netloc
    assert event["headers"]["x-forwarded-proto"] == "http"
    assert context["http"]["method"] == "GET" and context["http"]["userAgent"] == "gateway-test"
    assert context["http"]["sourceIp"] == "127.0.0.1"
    assert context["stage"] == "$default" and isinstance(context["timeEpoch"], int)
    assert (event["body"], event["isBase64Encoded"]) == (body.decode(), False)
    assert set(context["authorizer"]) == {"iam"}
    assert set(context["authorizer"]["iam"]) == IAM_IDENTITY_KEYS
    assert context["authorizer"]["iam"]["accessKey"] == "testing"


def test_a_public_route_event_has_no_authorizer_and_a_binary_body_is_base64(gateway, capture):
    payload = bytes(range(256))
    status, _, _ = _raw_request(gateway, "GET", "/oauth/authorize?session=s",
                                [("Content-Type", "application/octet-stream")], payload)
    assert status == 200
    event = capture.events[-1]
    assert "authorizer" not in event["requestContext"]
    assert "cookies" not in event and "pathParameters" not in event
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_a_form_body_arrives_base64_encoded_like_http_api_sends_it(gateway, capture):
    _raw_request(gateway, "GET", "/oauth/authorize", [("Content-Type", "application/x-www-form-urlencoded")],
                 b"a=1&b=2")
    event = capture.events[-1]
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"a=1&b=2"
    assert "queryStringParameters" not in event and event["rawQueryString"] == ""


# -- the response ------------------------------------------------------------------------------

def test_each_cookie_comes_back_as_its_own_set_cookie_header(gateway, capture):
    capture.answer = {"statusCode": 302, "headers": {"Location": "https://example.com/next"},
                      "cookies": ["a=1; Path=/; HttpOnly", "b=2; Path=/oauth/callback; Max-Age=0"]}
    status, headers, body = _raw_request(gateway, "GET", "/oauth/authorize?session=s", [])
    assert status == 302
    assert [v for k, v in headers if k.lower() == "set-cookie"] == capture.answer["cookies"]
    assert ("Location", "https://example.com/next") in headers
    assert body == b""


def test_a_base64_response_body_is_decoded(gateway, capture):
    capture.answer = {"statusCode": 200, "headers": {"Content-Type": "image/png"},
                      "body": base64.b64encode(b"\x89PNG\x00\xff").decode(), "isBase64Encoded": True}
    answer = requests.get(gateway.url + "/oauth/authorize", timeout=10)
    assert answer.content == b"\x89PNG\x00\xff"
    assert answer.headers["Content-Type"] == "image/png"


def test_a_result_without_status_code_is_a_200_json_answer(gateway, capture):
    capture.answer = {"hello": "world"}
    answer = requests.get(gateway.url + "/oauth/authorize", timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"hello": "world"})


def test_a_failing_handler_is_api_gateways_500(gateway, capture):
    capture.fail = True
    answer = requests.get(gateway.url + "/oauth/authorize", timeout=10)
    assert (answer.status_code, answer.json()) == (500, {"message": "Internal Server Error"})


def test_a_signed_request_with_an_unparseable_host_is_answered(gateway, capture):
    # The Host value is signed as a header; it is never parsed as part of a URL.
    url = gateway.url + "/connections/x"
    headers = list(signed("GET", url, headers={"Host": "["}).items())
    assert ("Host", "[") in headers
    status, _, body = _raw_request(gateway, "GET", "/connections/x", headers)
    assert status == 200, body
    assert capture.events[-1]["headers"]["host"] == "["
    # Signed for the real host, sent with another one: refused, not dropped.
    headers = [(k, v) for k, v in signed("GET", url).items()] + [("Host", "[")]
    status, _, body = _raw_request(gateway, "GET", "/connections/x", headers)
    assert (status, json.loads(body)) == (403, {"message": BAD_SIGNATURE})


def test_an_unexpected_gateway_error_is_a_500_and_logs_only_its_type(gateway, monkeypatch, capsys):
    def explode(*args, **kwargs):
        raise ValueError("secret-detail-that-must-not-be-logged")

    monkeypatch.setattr(gateway, "handle", explode)
    answer = requests.get(gateway.url + "/oauth/authorize?code=abc", timeout=10)
    assert (answer.status_code, answer.json()) == (500, {"message": "Internal Server Error"})
    assert answer.headers["apigw-requestid"]
    logged = capsys.readouterr().err
    assert "ValueError" in logged and "secret-detail" not in logged and "Traceback" not in logged


def test_the_request_id_is_the_same_in_header_event_and_access_log(gateway, capture, monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(gateway, "access_log", log)
    answer = requests.get(gateway.url + "/oauth/authorize?session=s", timeout=10)
    request_id = answer.headers["apigw-requestid"]
    assert capture.events[-1]["requestContext"]["requestId"] == request_id
    lines = []
    for _ in range(200):  # the access log line is written just after the answer
        lines = [line for line in log.getvalue().splitlines() if line.endswith(f"[{request_id}]")]
        if lines:
            break
        threading.Event().wait(0.01)
    # One line a person reads: time, method, path (never the query), status, function, duration.
    assert re.fullmatch(rf"\d\d:\d\d:\d\d GET /oauth/authorize 200 AuthorizeFunction \d+ ms  \[{request_id}\]",
                        lines[0])


def test_the_callers_ip_is_appended_to_x_forwarded_for(gateway, capture):
    requests.get(gateway.url + "/oauth/authorize", headers={"X-Forwarded-For": "198.51.100.7"}, timeout=10)
    assert capture.events[-1]["headers"]["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"
    requests.get(gateway.url + "/oauth/authorize", timeout=10)
    assert capture.events[-1]["headers"]["x-forwarded-for"] == "127.0.0.1"


# -- pieces ------------------------------------------------------------------------------------

def test_the_functions_environment_is_set_for_the_local_http_stack(gateway):
    assert gateway.env["PUBLIC_BASE_URL"] == gateway.url
    assert gateway.env["COOKIE_SECURE"] == "false"
    assert gateway.env["CONNECTIONS_TABLE"] == "insightly-connect-ConnectionsTable"
    assert gateway.env["TOKEN_KEY_ID"].startswith("arn:aws:kms:us-east-1:123456789012:key/")
    assert gateway.env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_routes_match_like_api_gateway():
    routes = [{"method": "GET", "path": "/connections/{connection_id}", "function": "A"},
              {"method": "GET", "path": "/connections/{connection_id}/token", "function": "B"},
              {"method": "GET", "path": "/connections/special", "function": "C"},
              {"method": "ANY", "path": "/files/{proxy+}", "function": "D"}]
    assert match_route(routes, "GET", "/connections/x")[0]["function"] == "A"
    assert match_route(routes, "GET", "/connections/x/token") == (routes[1], {"connection_id": "x"})
    assert match_route(routes, "GET", "/connections/special")[0]["function"] == "C"
    assert match_route(routes, "POST", "/files/a/b.txt") == (routes[3], {"proxy": "a/b.txt"})
    assert match_route(routes, "POST", "/connections/x") is None
    catch_all = {"method": "ANY", "path": "$default", "function": "E"}
    assert match_route([*routes, catch_all], "POST", "/connections/x") == (catch_all, {})


@pytest.mark.parametrize("any_first", [True, False])
def test_an_exact_method_beats_any_on_the_same_path_whatever_the_order(any_first):
    exact = {"method": "GET", "path": "/items/{id}", "function": "Exact"}
    anything = {"method": "ANY", "path": "/items/{id}", "function": "Any"}
    routes = [anything, exact] if any_first else [exact, anything]
    assert match_route(routes, "GET", "/items/7") == (exact, {"id": "7"})
    assert match_route(routes, "DELETE", "/items/7") == (anything, {"id": "7"})


def test_the_canonical_query_is_decoded_re_encoded_and_sorted():
    assert canonical_query("b=2&a=%7E1&a=0&c") == "a=0&a=~1&b=2&c="
    assert canonical_query("q=a b&r=%2f&s=x+y") == "q=a%20b&r=%2F&s=x%2By"
    assert canonical_query("") == ""


def test_the_verifier_checks_the_signature_over_the_canonical_query_only():
    verifier = SigV4Verifier({"AK": "SK"}, "us-east-1")
    host = [("Host", "127.0.0.1:3000")]  # what the HTTP client adds
    # Signed over the canonical query, sent in another order and encoding: AWS accepts it.
    headers = list(signed("GET", "http://127.0.0.1:3000/connections/x?a=~1&b=2", key="AK", secret="SK").items())
    assert verifier.verify("GET", "/connections/x", "b=2&a=%7E1", headers + host, b"") == "AK"
    # Signed over the query as sent (%7E kept, not re-encoded): not the canonical form, refused.
    as_sent = list(signed("GET", "http://127.0.0.1:3000/connections/x?b=2&a=%7E1", key="AK", secret="SK").items())
    with pytest.raises(AccessDenied, match="signature we calculated"):
        verifier.verify("GET", "/connections/x", "b=2&a=%7E1", as_sent + host, b"")
    with pytest.raises(AccessDenied):
        verifier.verify("GET", "/connections/y", "b=2&a=%7E1", headers + host, b"")
    with pytest.raises(AccessDenied, match="Forbidden"):
        verifier.verify("GET", "/connections/x", "", host, b"")


def test_each_concurrent_invocation_gets_its_own_container():
    pool = _FunctionPool("functions/connections/")
    first, second = pool.acquire(), pool.acquire()
    assert first is not second and first.routes is not second.routes
    pool.release(first)
    assert pool.acquire() is first


def test_concurrent_requests_are_served_concurrently(gateway, monkeypatch):
    inside = threading.Barrier(2, timeout=5)

    class Slow:
        def lambda_handler(self, event, context):
            inside.wait()  # both requests are in a handler at the same time
            return {"statusCode": 204}

    class Pool:
        def acquire(self):
            return Slow()

        def release(self, module):
            pass

    monkeypatch.setitem(gateway._pools, "AuthorizeFunction", Pool())
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        requests.get(gateway.url + "/oauth/authorize", timeout=10).status_code)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [204, 204]


def test_http_response_and_build_event_round_trip_without_a_server():
    route = {"method": "POST", "path": "/connect-sessions", "function": "F", "auth": "AWS_IAM"}
    event = build_event(route, {}, method="POST", raw_path="/connect-sessions", raw_query="", port=3000,
                        headers=[("Host", "127.0.0.1:3000")], body=b"", source_ip="127.0.0.1")
    assert "body" not in event and event["isBase64Encoded"] is False
    assert "user-agent" not in event["headers"]
    status, headers, body = http_response({"statusCode": 201, "headers": {"X": "1"}, "cookies": ["a=1"],
                                           "body": "{}"})
    assert (status, headers, body) == (201, [("X", "1"), ("Set-Cookie", "a=1")], b"{}")


def test_http_event_applies_http_apis_content_type_rule_to_any_body():
    route = {"method": "POST", "path": "/connect-sessions", "function": "F", "auth": "AWS_IAM"}
    as_json = http_event("POST", "/connect-sessions", route=route, body='{"a": 1}',
                         headers={"Content-Type": "application/json; charset=utf-8"}, request_id="RID")
    assert (as_json["body"], as_json["isBase64Encoded"]) == ('{"a": 1}', False)
    assert as_json["requestContext"]["requestId"] == "RID"
    assert as_json["requestContext"]["accountId"] == ACCOUNT_ID
    untyped = http_event("POST", "/connect-sessions", route=route, body='{"a": 1}')
    assert untyped["isBase64Encoded"] is True and base64.b64decode(untyped["body"]) == b'{"a": 1}'
    not_utf8 = http_event("POST", "/connect-sessions", route=route, body=b"\xff",
                          headers={"Content-Type": "text/plain"})
    assert not_utf8["isBase64Encoded"] is True
    sent = http_event("GET", "/x", route={"method": "ANY", "path": "/{proxy+}"}, user_agent=None,
                      headers=[("Cookie", "a=1"), ("X-Forwarded-For", "198.51.100.7"), ("X-Thing", "1"),
                               ("x-thing", "2")])
    assert sent["routeKey"] == "ANY /{proxy+}" and sent["cookies"] == ["a=1"]
    assert sent["headers"]["x-thing"] == "1,2" and "user-agent" not in sent["headers"]
    assert sent["headers"]["x-forwarded-for"] == "198.51.100.7, 203.0.113.10"
    assert sent["requestContext"]["http"]["userAgent"] == ""


def test_a_configuration_error_binds_no_socket(monkeypatch):
    import local.gateway as gateway_module

    template = copy.deepcopy(load_template())
    function = next(v for v in template["Resources"].values() if v["Type"] == "AWS::Serverless::Function")
    function["Properties"]["Environment"] = {"Variables": {"POWERTOOLS_SERVICE_NAME": "another-name"}}

    def no_binding(*args, **kwargs):
        raise AssertionError("bound a socket before the configuration was checked")

    monkeypatch.setattr(gateway_module, "ThreadedServer", no_binding)
    with pytest.raises(ValueError, match="functions disagree"):
        Gateway(Stack(template=template), port=0)
