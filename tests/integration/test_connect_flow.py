"""POST /connect-sessions -> GET /oauth/authorize -> GET /oauth/callback, success and every refusal."""

import json
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from broker.connect.oauth_flow import pkce_challenge, pkce_verifier
from tests.conftest import all_items
from tests.support.inprocess import RETURN_TO, query_of

REDIRECT_URI = "https://abc123defg.execute-api.us-east-1.amazonaws.com/oauth/callback"


def flow_items(dynamodb, stack):
    return dynamodb.scan(TableName=stack.refs["FlowTable"])["Items"]


def connection_item(dynamodb, stack, connection_id="user-1"):
    return dynamodb.get_item(TableName=stack.refs["ConnectionsTable"],
                             Key={"connection_id": {"S": connection_id}}).get("Item")


def assert_json_error(answer, status, code):
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json["error"] == code and answer.json["message"]


# -- success --------------------------------------------------------------------------------


def test_connect_session_answers_a_connect_url_and_writes_one_item(broker, dynamodb, stack):
    answer = broker.create_session("user-1")

    assert answer.status == 201
    assert answer.json["connect_url"].startswith(
        "https://abc123defg.execute-api.us-east-1.amazonaws.com/oauth/authorize?session=")
    assert answer.json["expires_at"].endswith("Z")
    [item] = flow_items(dynamodb, stack)
    token = query_of(answer.json["connect_url"])["session"]
    assert token not in json.dumps(item)  # stored hashed
    assert int(item["expires_at"]["N"]) - time.time() == pytest.approx(600, abs=5)


def test_authorize_redirects_to_the_provider_with_state_pkce_and_a_callback_cookie(broker, dynamodb, stack):
    session = broker.create_session("user-1")

    answer = broker.authorize(session.json["connect_url"])

    assert answer.status == 302
    assert answer.location.startswith("https://api.insightly.com/v3.1/oauth2/authorize?")
    params = query_of(answer.location)
    assert params["response_type"] == "code"
    assert params["client_id"] == broker.provider.client_id
    assert params["redirect_uri"] == REDIRECT_URI
    assert params["code_challenge_method"] == "S256"
    assert len(params["state"]) >= 22  # >= 128 random bits
    cookie = answer.cookie("ic_oauth_browser")
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Lax"
    assert cookie["path"] == "/oauth/callback" and cookie["max-age"] == "600"
    assert params["code_challenge"] == pkce_challenge(pkce_verifier(cookie.value, params["state"]))
    assert answer.headers["Cache-Control"] == "no-store"
    [state_item] = flow_items(dynamodb, stack)  # the session was consumed, the state written
    assert state_item["flow_key"]["S"].startswith("state#")


def test_callback_returns_to_the_saas_which_completes_and_links_the_connection(broker, dynamodb, stack):
    answer = broker.connect("user-1")

    assert answer.status == 302
    returned = query_of(answer.location)
    assert answer.location.startswith(f"{RETURN_TO}?status=pending&session_id=")
    assert set(returned) == {"status", "session_id", "completion_code"}
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.cookie("ic_oauth_browser")["max-age"] == "0"
    assert broker.provider.calls["authorization_code"] == 1 and broker.provider.calls["users_me"] == 1
    assert answer.completion.status == 200  # the SaaS backend's complete call answers the status
    assert answer.completion.json == broker.call("GET", "/connections/user-1").json
    status = broker.call("GET", "/connections/user-1").json
    assert status["status"] == "active"
    assert status["provider_user"] == {"id": "4242", "email": "ada@example.com", "name": "Ada Lovelace"}
    assert status["next_refresh_at"] and status["expires_at"]
    assert flow_items(dynamodb, stack) == []  # session, state and completion all spent


def test_with_session_binding_off_the_callback_links_at_once(broker, dynamodb, stack, monkeypatch):
    from broker import services

    monkeypatch.setenv("SESSION_BINDING", "none")
    services.reset()

    answer = broker.connect("user-1")

    assert answer.location == f"{RETURN_TO}?status=connected&connection_id=user-1"
    assert answer.completion is None
    assert broker.call("GET", "/connections/user-1").json["status"] == "active"
    assert flow_items(dynamodb, stack) == []


def test_the_whole_lifecycle_connect_token_refresh_delete(broker, dynamodb, stack):
    provider = broker.provider
    assert broker.connect("user-1").linked

    token = broker.call("GET", "/connections/user-1/token")
    assert token.status == 200 and token.json["access_token"] in provider.access_tokens
    assert provider.calls["refresh_token"] == 0  # still fresh: no provider call

    refreshed = broker.call("POST", "/connections/user-1/refresh")
    assert refreshed.status == 200 and refreshed.json["access_token"] != token.json["access_token"]
    assert provider.calls["refresh_token"] == 1
    assert broker.call("GET", "/connections/user-1/token").json["access_token"] == refreshed.json["access_token"]
    assert broker.call("GET", "/connections/user-1").json["last_refreshed_at"]

    deleted = broker.call("DELETE", "/connections/user-1")
    assert deleted.status == 204
    assert provider.revoked and provider.revoked[0] not in provider.current_refresh_tokens
    assert_json_error(broker.call("GET", "/connections/user-1"), 404, "connection_not_found")
    assert all_items(dynamodb, stack) == []


def test_reconnecting_replaces_the_old_credentials(broker, dynamodb, stack):
    broker.connect("user-1")
    first = broker.call("GET", "/connections/user-1/token").json["access_token"]

    broker.connect("user-1")

    second = broker.call("GET", "/connections/user-1/token").json["access_token"]
    assert second != first
    assert connection_item(dynamodb, stack)["version"]["N"] == "2"


def test_a_matching_iss_is_accepted(broker):
    session = broker.create_session()
    redirect = broker.authorize(session.json["connect_url"])
    back = broker.provider.approve(redirect.location) + "&iss=https%3A%2F%2Fapi.insightly.com"

    answer = broker.callback(back, redirect.cookie("ic_oauth_browser").value)

    assert query_of(answer.location)["status"] == "pending"


def test_without_pkce_no_challenge_is_sent(broker, monkeypatch):
    from broker import services

    monkeypatch.setenv("PROVIDER_USE_PKCE", "false")
    services.reset()
    session = broker.create_session()
    redirect = broker.authorize(session.json["connect_url"])
    assert "code_challenge" not in query_of(redirect.location)
    back = broker.provider.approve(redirect.location)
    assert query_of(broker.callback(back, redirect.cookie("ic_oauth_browser").value).location)["status"] == "pending"


# -- refusals: connect sessions ---------------------------------------------------------------

BAD_SESSION_BODIES = [
    (None, "invalid_body"),
    ("not json", "invalid_body"),
    ("[1, 2]", "invalid_body"),
    ('{"return_to": "https://app.example.com/"}', "invalid_body"),
    ('{"connection_id": "u", "return_to": "https://app.example.com/", "extra": 1}', "invalid_body"),
    ('{"connection_id": "u", "connection_id": "v", "return_to": "https://app.example.com/"}', "invalid_body"),
    (json.dumps({"connection_id": "x" * 129, "return_to": RETURN_TO}), "invalid_connection_id"),
    (json.dumps({"connection_id": "a b", "return_to": RETURN_TO}), "invalid_connection_id"),
    (json.dumps({"connection_id": 7, "return_to": RETURN_TO}), "invalid_connection_id"),
    (json.dumps({"connection_id": "u", "return_to": "https://evil.example.net/"}), "return_to_not_allowed"),
    (json.dumps({"connection_id": "u", "return_to": "javascript:alert(1)"}), "invalid_return_to"),
    (json.dumps({"connection_id": "u", "return_to": RETURN_TO, "pad": "x" * 9000}), "invalid_body"),
]


@pytest.mark.parametrize("body,code", BAD_SESSION_BODIES)
def test_a_bad_connect_session_request_is_refused_and_writes_nothing(broker, dynamodb, stack, body, code):
    answer = broker.call("POST", "/connect-sessions", body=body)

    assert_json_error(answer, 400, code)
    assert all_items(dynamodb, stack) == []


# -- refusals: authorize ----------------------------------------------------------------------

@pytest.mark.parametrize("query,code", [
    ("", "missing_session"),
    ("session=" + "a" * 43 + "&session=" + "b" * 43, "invalid_request"),
    ("session=garbage", "invalid_session"),
    ("session=" + "a" * 5000, "invalid_request"),
    ("session=" + "a" * 43, "invalid_session"),  # well-formed, never issued
])
def test_a_bad_authorize_request_is_refused_and_writes_nothing(broker, dynamodb, stack, query, code):
    assert_json_error(broker.call("GET", "/oauth/authorize", query=query), 400, code)
    assert all_items(dynamodb, stack) == []


def test_a_replayed_connect_session_is_refused(broker, dynamodb, stack):
    session = broker.create_session()
    assert broker.authorize(session.json["connect_url"]).status == 302

    again = broker.authorize(session.json["connect_url"])

    assert_json_error(again, 400, "invalid_session")
    assert len(flow_items(dynamodb, stack)) == 1  # only the first state


def test_an_expired_connect_session_is_refused(broker, dynamodb, stack):
    session = broker.create_session()
    [item] = flow_items(dynamodb, stack)
    dynamodb.update_item(TableName=stack.refs["FlowTable"], Key={"flow_key": item["flow_key"]},
                         UpdateExpression="SET expires_at = :past", ExpressionAttributeValues={":past": {"N": "1"}})

    assert_json_error(broker.authorize(session.json["connect_url"]), 400, "session_expired")


# -- refusals: callback -------------------------------------------------------------------------

def started(broker):
    """A flow waiting at the provider: (callback URL after approval, the browser's cookie)."""
    session = broker.create_session()
    redirect = broker.authorize(session.json["connect_url"])
    return broker.provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value


def test_a_replayed_state_links_nothing(broker):
    back, cookie = started(broker)
    assert query_of(broker.callback(back, cookie).location)["status"] == "pending"

    again = broker.callback(back, cookie)

    assert_json_error(again, 400, "invalid_state")
    assert broker.provider.calls["authorization_code"] == 1  # the code was exchanged once


def test_a_state_from_another_browser_links_nothing_and_stays_usable(broker, dynamodb, stack):
    back, cookie = started(broker)
    other_browser = "z" * 43

    assert_json_error(broker.callback(back, other_browser), 400, "state_mismatch")
    assert_json_error(broker.callback(back, None), 400, "state_mismatch")

    assert broker.provider.calls["token"] == 0
    assert connection_item(dynamodb, stack) is None
    assert query_of(broker.callback(back, cookie).location)["status"] == "pending"  # the rightful browser still can


def test_an_expired_state_links_nothing(broker, dynamodb, stack):
    back, cookie = started(broker)
    [item] = flow_items(dynamodb, stack)
    dynamodb.update_item(TableName=stack.refs["FlowTable"], Key={"flow_key": item["flow_key"]},
                         UpdateExpression="SET expires_at = :past", ExpressionAttributeValues={":past": {"N": "1"}})

    assert_json_error(broker.callback(back, cookie), 400, "state_expired")
    assert broker.provider.calls["token"] == 0 and connection_item(dynamodb, stack) is None


@pytest.mark.parametrize("query,code", [
    ("code=abc", "missing_state"),
    ("code=abc&state=short", "invalid_state"),
    ("code=abc&state=" + "s" * 43, "invalid_state"),
    ("code=abc&state=" + "s" * 43 + "&state=" + "t" * 43, "invalid_request"),
    ("state=" + "s" * 5000, "invalid_request"),
])
def test_a_garbage_callback_is_refused_before_any_provider_call(broker, dynamodb, stack, query, code):
    assert_json_error(broker.call("GET", "/oauth/callback", query=query, cookies=["ic_oauth_browser=" + "c" * 43]),
                      400, code)
    assert broker.provider.calls["token"] == 0 and all_items(dynamodb, stack) == []


def test_consent_denied_returns_an_error_to_the_saas_and_stores_nothing(broker, dynamodb, stack):
    answer = broker.connect("user-1", approve=False)

    assert answer.status == 302
    assert answer.location == f"{RETURN_TO}?status=error&error=access_denied"
    assert broker.provider.calls["token"] == 0 and connection_item(dynamodb, stack) is None


def test_an_unknown_provider_error_is_not_reflected(broker, dynamodb, stack):
    session = broker.create_session()
    redirect = broker.authorize(session.json["connect_url"])
    state = query_of(redirect.location)["state"]

    answer = broker.callback(f"{REDIRECT_URI}?error=%3Cscript%3E&state={state}",
                             redirect.cookie("ic_oauth_browser").value)

    assert answer.location == f"{RETURN_TO}?status=error&error=provider_error"


def test_an_iss_from_another_server_links_nothing(broker, dynamodb, stack):
    back, cookie = started(broker)

    answer = broker.callback(back + "&iss=https%3A%2F%2Fevil.example.net", cookie)

    assert answer.location == f"{RETURN_TO}?status=error&error=issuer_mismatch"
    assert broker.provider.calls["token"] == 0 and connection_item(dynamodb, stack) is None


@pytest.mark.parametrize("fault,code", [
    ("invalid_grant", "token_exchange_failed"),
    ("500", "provider_unavailable"),
    ("429", "provider_unavailable"),
    ("timeout", "provider_unavailable"),
])
def test_a_failed_code_exchange_links_nothing_and_is_not_retried(broker, dynamodb, stack, fault, code):
    back, cookie = started(broker)
    broker.provider.fail_next(fault)

    answer = broker.callback(back, cookie)

    assert answer.location == f"{RETURN_TO}?status=error&error={code}"
    assert broker.provider.calls["token"] == 1
    assert connection_item(dynamodb, stack) is None


def test_the_broker_never_redirects_off_the_provider_or_allowed_origins(broker):
    """Invariant 3, over every redirect the flow produced above."""
    locations = [broker.authorize(broker.create_session().json["connect_url"]).location,
                 broker.connect("user-2").location, broker.connect("user-3", approve=False).location]
    for location in locations:
        assert location.startswith(("https://api.insightly.com/v3.1/oauth2/authorize?", RETURN_TO + "?"))


def test_a_storage_fault_on_the_callback_returns_an_error_redirect(broker, dynamodb, stack, monkeypatch):
    from botocore.exceptions import ClientError

    from broker import services

    back, cookie = started(broker)

    def unavailable(*args, **kwargs):
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "UpdateItem")

    monkeypatch.setattr(services.connect_flow().flows, "put_completion", unavailable)

    answer = broker.callback(back, cookie)

    assert answer.location == f"{RETURN_TO}?status=error&error=storage_unavailable"
    assert connection_item(dynamodb, stack) is None


def test_a_misconfigured_client_secret_does_not_spend_the_connect_session(broker, dynamodb, stack):
    import boto3
    from aws_lambda_powertools.utilities import parameters

    session = broker.create_session()
    boto3.client("secretsmanager").put_secret_value(SecretId=stack.refs["ClientSecret"], SecretString="not json")
    parameters.clear_caches()

    failed = broker.authorize(session.json["connect_url"])

    assert failed.status == 500 and failed.json["error"] == "internal_error"
    assert flow_items(dynamodb, stack)[0]["flow_key"]["S"].startswith("session#")  # still there


# -- redirect hygiene (issue 7, finding 9) --------------------------------------------------------

def test_parameters_return_to_already_carries_are_replaced_not_appended(broker, dynamodb, stack):
    dirty = (RETURN_TO + "?tab=crm&status=connected&connection_id=someone-else&error=none"
             "&session_id=forged&completion_code=forged")
    session = broker.call("POST", "/connect-sessions", body={"connection_id": "user-1", "return_to": dirty})
    redirect = broker.authorize(session.json["connect_url"])

    denied = broker.callback(broker.provider.deny(redirect.location), redirect.cookie("ic_oauth_browser").value)

    assert denied.location == f"{RETURN_TO}?tab=crm&status=error&error=access_denied"
    session = broker.call("POST", "/connect-sessions", body={"connection_id": "user-1", "return_to": dirty})
    redirect = broker.authorize(session.json["connect_url"])
    approved = broker.callback(broker.provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value)
    pairs = parse_qsl(urlsplit(approved.location).query)
    assert [k for k, _ in pairs] == ["tab", "status", "session_id", "completion_code"]
    assert dict(pairs)["session_id"] == session.json["session_id"]


@pytest.mark.parametrize("extra,code", [
    ("", "missing_code"),
    ("&code=", "missing_code"),
    ("&code=one&code=two", "invalid_request"),
    ("&error=access_denied&code=one&code=two", "invalid_request"),
])
def test_a_missing_or_repeated_code_is_refused_before_the_state_is_spent(broker, dynamodb, stack, extra, code):
    back, cookie = started(broker)
    state = query_of(back)["state"]

    assert_json_error(broker.call("GET", "/oauth/callback", query=f"state={state}{extra}",
                                  cookies=[f"ic_oauth_browser={cookie}"]), 400, code)

    assert broker.provider.calls["token"] == 0
    assert query_of(broker.callback(back, cookie).location)["status"] == "pending"  # the state still works


# -- every failure after the state is spent is a redirect (issue 7, finding 5) ----------------------

def secrets_manager_down(*args, **kwargs):
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    raise GetParameterError("An error occurred (InternalServiceError) when calling GetSecretValue")


def kms_down(*args, **kwargs):
    from botocore.exceptions import ClientError

    raise ClientError({"Error": {"Code": "KMSInternalException", "Message": "boom"}}, "Encrypt")


def crash(*args, **kwargs):
    raise RuntimeError("a message that may quote what was sent: secret-ish")


@pytest.mark.parametrize("target,attribute,fault,code", [
    ("credentials", "get", secrets_manager_down, "internal_error"),
    ("vault._kms", "generate_data_key", kms_down, "vault_unavailable"),
    ("flows", "put_completion", kms_down, "storage_unavailable"),
    ("provider", "fetch_user", crash, "internal_error"),
])
def test_any_fault_after_the_state_is_spent_redirects_with_an_error_code(broker, dynamodb, stack, monkeypatch,
                                                                         captured_logs, target, attribute, fault,
                                                                         code):
    from broker import services

    back, cookie = started(broker)
    owner = services.connect_flow()
    for name in target.split("."):
        owner = getattr(owner, name)
    monkeypatch.setattr(owner, attribute, fault)

    answer = broker.callback(back, cookie)

    assert answer.status == 302 and answer.location == f"{RETURN_TO}?status=error&error={code}"
    assert connection_item(dynamodb, stack) is None
    assert "secret-ish" not in captured_logs.getvalue() and "boom" not in captured_logs.getvalue()


def test_without_public_base_url_the_redirect_uri_is_the_stacks_own_api_whatever_host_the_request_named(broker):
    # Second security review, F8: HTTP API puts the Host header in requestContext.domainName.
    own = "https://abc123defg.execute-api.us-east-1.amazonaws.com"
    foreign = {"Host": "broker.attacker.example"}

    session = broker.call("POST", "/connect-sessions", body={"connection_id": "user-1", "return_to": RETURN_TO},
                          headers={**foreign, "Content-Type": "application/json"})
    assert session.status == 201 and session.json["connect_url"].startswith(own + "/oauth/authorize?")
    authorize = broker.call("GET", "/oauth/authorize", query=urlsplit(session.json["connect_url"]).query,
                            headers=foreign)

    assert authorize.status == 302
    redirect_uri = query_of(authorize.location)["redirect_uri"]
    assert redirect_uri == own + "/oauth/callback"
    assert authorize.cookie("ic_oauth_browser")["path"] == "/oauth/callback"
