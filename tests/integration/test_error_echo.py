"""No error answer quotes what the caller chose (second security review, F7): parameter
names, tag keys, field names and values alike, across every route of the template."""

import json
from urllib.parse import quote

import pytest

MARK = "zqxcallertext"
MARK_KEY = "zqx.callertext"  # a name the tag pattern accepts


def cases():
    """(method, path, query, body) of requests each route refuses, with MARK in what the caller chose."""
    yield "GET", "/connections", f"{MARK}=1", None
    yield "GET", "/connections", f"tag.{MARK}=1", None
    yield "GET", "/connections", f"tag.{MARK}=1&tag.{MARK}=2", None
    yield "GET", "/connections", f"tag.{MARK}={'x' * 300}", None
    yield "GET", "/connections", f"status={MARK}", None
    yield "GET", "/connections", f"auth_mode={MARK}", None
    yield "GET", "/connections", f"limit={MARK}", None
    yield "GET", "/connections", f"cursor={MARK}", None
    yield "GET", "/connections", f"status=active&{MARK}=1", None
    yield "POST", "/connect-sessions", "", {MARK: 1}
    yield "POST", "/connect-sessions", "", {"connection_id": MARK + "!", "return_to": "https://app.example.com/"}
    yield "POST", "/connect-sessions", "", {"connection_id": "u", "return_to": f"https://{MARK}.example/"}
    yield "POST", "/connect-sessions", "", {"connection_id": "u", "return_to": "https://app.example.com/",
                                            "tags": {MARK + " KEY": "v"}}
    yield "POST", "/connect-sessions", "", {"connection_id": "u", "return_to": "https://app.example.com/",
                                            "auth_mode": MARK}
    yield "POST", "/connect-sessions", "", {"connection_id": "u", "return_to": "https://app.example.com/",
                                            "display": MARK}
    yield "POST", f"/connect-sessions/{MARK}/complete", "", {"completion_code": MARK}
    yield "POST", "/connect-sessions/s/complete", "", {MARK: 1}
    yield "GET", f"/connections/{MARK}", "", None
    yield "PATCH", f"/connections/{MARK}", "", {MARK: 1}
    yield "PATCH", f"/connections/{MARK}", "", {"tags": {MARK_KEY: 1}}
    yield "PATCH", f"/connections/{MARK}", "", {"metadata": MARK}
    yield "DELETE", f"/connections/{MARK}", "", None
    yield "PUT", f"/connections/{MARK}/api-key", "", {"api_key": MARK, "api_url": f"https://{MARK}.example/"}
    yield "PUT", f"/connections/{MARK}/api-key", "", {MARK: 1, "api_key": "k" * 20}
    yield "GET", f"/connections/{MARK}/token", "", None
    yield "POST", f"/connections/{MARK}/refresh", "", None
    yield "GET", f"/connections/{MARK}/proxy/Contacts", f"{MARK}=1", None
    yield "GET", f"/connections/u/proxy/{MARK}/../x", "", None
    yield "GET", "/oauth/authorize", f"session={MARK}", None
    yield "GET", "/oauth/authorize", f"{MARK}=1", None
    yield "GET", "/oauth/callback", f"state={MARK}&code={MARK}", None
    yield "GET", "/oauth/callback", f"error={MARK}&error_description={MARK}&state={MARK}", None
    yield "GET", "/connect/api-key", f"session={MARK}", None
    yield "POST", "/connect/api-key", "", f"session={MARK}&csrf={MARK}&api_key={MARK}&api_url={MARK}&{MARK}=1"


@pytest.mark.parametrize("method, path, query, body", list(cases()))
def test_no_error_answer_quotes_what_the_caller_chose(broker, method, path, query, body):
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if isinstance(body, str) else None
    answer = broker.call(method, path, query=query, body=json.dumps(body) if isinstance(body, dict) else body,
                         headers=headers)

    assert answer.status >= 300, (method, path, query)
    text = (answer.body or "") + json.dumps(answer.headers)
    assert MARK not in text.lower() and quote(MARK) not in text and MARK_KEY not in text, text


def test_the_requests_above_reach_every_route_of_the_template(stack):
    import re

    covered = {(m, p) for m, p, _, _ in cases()}
    for route in stack.http_routes():
        pattern = re.sub(r"\\\{[a-z_]+\\\+\\\}", ".+", re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(route["path"])))
        assert any((route["method"] in (m, "ANY")) and re.fullmatch(pattern, p) for m, p in covered), route
