"""Every events/*.json (the `sam local invoke -e` payloads) is accepted by its handler.

A file is named <function directory>[.<case>].json. Each test seeds what the event refers
to (the session, the state and its browser cookie, the provider's code, a connection), so
the payloads stay real requests, not just well-formed JSON."""

import json
import time
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from broker import services
from broker.connect.oauth_flow import pkce_challenge, pkce_verifier
from broker.store.connections import NewCredentials
from local.fake_insightly import OAUTH_ACCOUNT
from local.lambda_events import LambdaContext, load_handler
from local.stack import ROOT, Stack
from tests.integration.test_connect_flow import REDIRECT_URI
from tests.integration.test_tokens import make_due
from tests.support.inprocess import RETURN_TO

EVENT_FILES = sorted((ROOT / "events").glob("*.json"))
# The session id and completion code events/connections.complete-session.json carries.
SESSION_ID = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
COMPLETION_CODE = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8"
# The Insightly API key events/key_page.submit.json and connections.put-api-key.json carry.
API_KEY = "3f2b8c1e-7d4a-4e9b-a6c5-0d1e2f3a4b5c"
EXPECTED = {
    "authorize": (302, "https://api.insightly.com/v3.1/oauth2/authorize?"),
    "callback": (302, f"{RETURN_TO}?status=pending&session_id={SESSION_ID}&completion_code="),
    "callback.access-denied": (302, f"{RETURN_TO}?status=error&error=access_denied"),
    "connections.create-session": (201, None),
    "connections.complete-session": (200, None),
    "connections.get": (200, None),
    "connections.list": (200, None),
    "connections.delete": (204, None),
    "connections.patch": (200, None),
    "refresh.token": (200, None),
    "refresh.force": (200, None),
    "key_page": (200, None),
    "key_page.submit": (302, f"{RETURN_TO}?status=pending&session_id={SESSION_ID}&completion_code="),
    "connections.put-api-key": (200, None),
    "proxy.get-contacts": (200, None),
    "proxy.post-contact": (200, None),
}
# The contact Insightly holds when events/proxy.get-contacts.json lists the account's contacts.
CONTACT = {"CONTACT_ID": 1, "FIRST_NAME": "Ada", "LAST_NAME": "Lovelace", "EMAIL_ADDRESS": "ada@example.com"}
PROXY_EVENTS = sorted((ROOT / "events").glob("proxy.*.json"))


def test_every_event_file_is_covered():
    # webhooks.json is delivered to a receiver by test_fresh_functions (WebhookFunction exists
    # only with a WebhookUrl); scheduler and worker have their own tests below.
    assert {f.stem for f in EVENT_FILES} == set(EXPECTED) | {"scheduler", "worker", "webhooks"}


def seed(broker, event):
    """Put in place what the event's session, state, cookie and code stand for."""
    flow = services.connect_flow()
    query = dict(parse_qsl(event.get("rawQueryString", "")))
    expires = int(time.time()) + 600
    form = dict(parse_qsl(event.get("body") or "")) if event["routeKey"] == "POST /connect/api-key" else {}
    session = query.get("session") or form.get("session")
    if session:
        api_key_page = event["routeKey"].endswith("/connect/api-key")
        flow.flows.put_session(session, session_id=SESSION_ID, connection_id="user-1", return_to=RETURN_TO,
                               expires_at=expires, **({"auth_mode": "api_key"} if api_key_page else {}))
    if event["routeKey"] in ("POST /connect/api-key", "PUT /connections/{connection_id}/api-key"):
        # An Insightly account on pod na1 whose live key is the one in the event file.
        account = broker.provider.issue_api_key("na1")
        del broker.provider.api_keys[account["api_key"]]
        broker.provider.api_keys[API_KEY] = account["account"]
        broker.provider.accounts[account["account"]].api_key = API_KEY
    if "state" in query:
        cookie = event["cookies"][0].partition("=")[2]
        flow.flows.put_state(query["state"], browser_secret=cookie, connection_id="user-1", return_to=RETURN_TO,
                             expires_at=expires, session_id=SESSION_ID)
        broker.provider.codes[query.get("code", "-")] = {
            "client_id": broker.provider.client_id, "redirect_uri": REDIRECT_URI, "used": False,
            "challenge": pkce_challenge(pkce_verifier(cookie, query["state"]))}
    if event["routeKey"].startswith("ANY /connections/{connection_id}/proxy/"):
        broker.provider.accounts[OAUTH_ACCOUNT].contacts[1] = dict(CONTACT)
    if event["routeKey"].endswith("/complete"):
        sealed = flow.vault.seal("user-1", {"access_token": "at", "refresh_token": "rt", "token_type": "Bearer"})
        pending = NewCredentials("user-1", credentials=sealed, expires_at=expires, refresh_due_at=expires - 300,
                                    provider_user={"id": "4242"}, scopes="")
        flow.flows.put_completion(COMPLETION_CODE, session_id=SESSION_ID, complete_by=expires, pending=pending)


@pytest.mark.parametrize("path", [f for f in EVENT_FILES if f.stem not in ("scheduler", "worker", "webhooks")],
                         ids=lambda p: p.stem)
def test_an_http_event_file_is_served_by_its_handler(broker, path: Path):
    event = json.loads(path.read_text())
    function_dir = path.stem.split(".")[0]
    routes = {f"{r['method']} {r['path']}": r for r in Stack().http_routes()}
    assert event["version"] == "2.0"
    assert routes[event["routeKey"]]["code_uri"].rstrip("/") == f"functions/{function_dir}"
    broker.connect("user-1")
    seed(broker, event)

    answer = broker.invoke(f"functions/{function_dir}/", event)

    status, location = EXPECTED[path.stem]
    assert answer.status == status, answer.body
    if location:
        assert answer.location.startswith(location)


@pytest.mark.parametrize("path", PROXY_EVENTS, ids=lambda p: p.stem)
def test_a_proxy_event_file_reaches_insightly_as_the_connection(broker, path: Path):
    """What the proxy route sends on: the event's method, path and query at the connection's
    API base with the connection's credential, never the caller's SigV4 headers; and what
    comes back is Insightly's answer."""
    event = json.loads(path.read_text())
    assert event["pathParameters"]["path"] == event["rawPath"].split("/proxy/", 1)[1]  # decoded once
    broker.connect("user-1")
    seed(broker, event)
    token = broker.call("GET", "/connections/user-1/token").json
    before = len(broker.provider.api_requests)

    answer = broker.invoke("functions/proxy/", event)

    sent = list(broker.provider.api_requests)[before:]
    assert [(r["method"], r["path"]) for r in sent] == [(event["requestContext"]["http"]["method"],
                                                         "/" + event["pathParameters"]["path"])]
    assert sent[0]["headers"]["authorization"] == token["authorization"]
    assert not {"x-amz-date", "cookie"} & set(sent[0]["headers"])
    contacts = broker.provider.accounts[OAUTH_ACCOUNT].contacts
    if event["requestContext"]["http"]["method"] == "GET":
        assert json.loads(answer.body) == [CONTACT] and answer.headers["X-Total-Count"] == "1"
    else:
        created = json.loads(answer.body)
        assert contacts[created["CONTACT_ID"]] == created
        assert {k: created[k] for k in json.loads(event["body"])} == json.loads(event["body"])
    assert "Set-Cookie" not in answer.headers and "X-Broker-Error" not in answer.headers


def test_the_schedule_event_file_runs_the_scheduler(broker, dynamodb, stack):
    event = json.loads((ROOT / "events" / "scheduler.json").read_text())
    assert event["source"] == "aws.events" and event["detail-type"] == "Scheduled Event"
    broker.connect("user-1")
    make_due(dynamodb, stack)

    answer = load_handler("functions/scheduler/").lambda_handler(event, LambdaContext(timeout_seconds=300))

    assert answer == {"enqueued": 1, "not_enqueued": 0}


def test_the_queue_event_file_runs_the_worker(broker, dynamodb, stack):
    event = json.loads((ROOT / "events" / "worker.json").read_text())
    assert event["Records"][0]["eventSource"] == "aws:sqs"
    broker.connect("user-1")
    make_due(dynamodb, stack)

    answer = load_handler("functions/worker/").lambda_handler(event, LambdaContext(timeout_seconds=30))

    assert answer == {"batchItemFailures": []}
    assert broker.provider.calls["refresh_token"] == 1
