"""Call the real handlers in-process the way API Gateway would, and drive the OAuth flow."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from broker.http.api import KEY_PAGE_COOKIE
from local.fake_insightly import FakeInsightly
from local.lambda_events import LambdaContext, http_event, iam_identity, lambda_context, load_handler, match_route
from local.stack import Stack

RETURN_TO = "https://app.example.com/settings/integrations"


@dataclass
class Answer:
    status: int
    headers: dict
    cookies: list
    body: str | None
    completion: Answer | None = None  # set by connect(): the SaaS backend's complete call

    @property
    def linked(self) -> bool:
        """The flow ended with the connection linked: at once (SessionBinding=none), or pending
        and then completed by the SaaS backend (confirm)."""
        status = query_of(self.location).get("status")
        return status == "connected" or (status == "pending" and self.completion is not None
                                         and self.completion.status == 200)

    @property
    def json(self):
        return json.loads(self.body) if self.body else None

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def cookie(self, name: str):
        for raw in self.cookies:
            jar = SimpleCookie()
            jar.load(raw)
            if name in jar:
                return jar[name]
        return None


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


class InProcessBroker:
    def __init__(self, stack: Stack, provider: FakeInsightly):
        self.stack = stack
        self.provider = provider
        self.routes = stack.http_routes()

    def call(self, method: str, path: str, *, query: str = "", body=None, cookies=None, signed: bool = True,
             headers=None) -> Answer:
        found = match_route(self.routes, method, path)
        assert found, f"no route for {method} {path}"
        route, params = found
        if isinstance(body, dict):
            body = json.dumps(body)
        if body is not None and not any(name.lower() == "content-type" for name in headers or {}):
            # The SaaS backend sends JSON; HTTP API would base64-encode a body without a text type.
            headers = {**(headers or {}), "Content-Type": "application/json"}
        event = http_event(method, path, route=route, path_parameters=params, raw_query=query, body=body,
                           cookies=cookies, headers=headers,
                           iam_identity=iam_identity() if signed and route["auth"] == "AWS_IAM" else None)
        # The function's own Timeout as the deadline, as Lambda gives it.
        return self.invoke(route["code_uri"], event, lambda_context(self.stack, route["function"]))

    def invoke(self, code_uri: str, event: dict, context: LambdaContext | None = None) -> Answer:
        raw = load_handler(code_uri).lambda_handler(event, context or LambdaContext())
        return Answer(raw["statusCode"], raw.get("headers") or {}, raw.get("cookies") or [], raw.get("body"))

    # -- the connect flow, step by step --------------------------------------------------------

    def create_session(self, connection_id: str = "user-1", return_to: str = RETURN_TO) -> Answer:
        return self.call("POST", "/connect-sessions", body={"connection_id": connection_id, "return_to": return_to})

    def authorize(self, connect_url: str) -> Answer:
        return self.call("GET", "/oauth/authorize", query=urlsplit(connect_url).query)

    def callback(self, callback_url: str, cookie: str | None) -> Answer:
        cookies = [f"ic_oauth_browser={cookie}"] if cookie else None
        return self.call("GET", "/oauth/callback", query=urlsplit(callback_url).query, cookies=cookies)

    def complete(self, session_id: str, completion_code) -> Answer:
        return self.call("POST", f"/connect-sessions/{session_id}/complete",
                         body={"completion_code": completion_code})

    # -- the API-key page, step by step ---------------------------------------------------------

    def open_key_page(self, connect_url: str) -> Answer:
        return self.call("GET", "/connect/api-key", query=urlsplit(connect_url).query)

    def submit_key(self, page: Answer, api_key: str, api_url: str, *, cookie: str | None = "from-page") -> Answer:
        """POST the form the page rendered, as the browser would (its CSRF cookie unless told)."""
        fields = dict(re.findall(r'name="(session|csrf)" value="([^"]+)"', page.body))
        secret = page.cookie(KEY_PAGE_COOKIE).value if cookie == "from-page" else cookie
        return self.call("POST", "/connect/api-key", signed=False,
                         body=urlencode({**fields, "api_key": api_key, "api_url": api_url}),
                         headers={"Content-Type": "application/x-www-form-urlencoded"},
                         cookies=[f"{KEY_PAGE_COOKIE}={secret}"] if secret else None)

    def connect_with_key(self, connection_id: str, api_key: str, api_url: str) -> Answer:
        """An api_key session -> the key page -> a submit -> the SaaS backend completes it."""
        session = self.call("POST", "/connect-sessions", body={
            "connection_id": connection_id, "return_to": RETURN_TO, "auth_mode": "api_key"})
        assert session.status == 201, session.body
        landing = self.submit_key(self.open_key_page(session.json["connect_url"]), api_key, api_url)
        returned = query_of(landing.location)
        if returned.get("status") == "pending":
            assert returned["session_id"] == session.json["session_id"]
            landing.completion = self.complete(returned["session_id"], returned["completion_code"])
        return landing

    def connect(self, connection_id: str = "user-1", *, approve: bool = True) -> Answer:
        """Session -> authorize -> the person approves (or denies) -> callback -> and, when the
        broker asks for it (session binding), the SaaS backend completes the flow. Answers the
        callback's redirect, with the completion's answer in .completion."""
        session = self.create_session(connection_id)
        assert session.status == 201, session.body
        redirect = self.authorize(session.json["connect_url"])
        assert redirect.status == 302, redirect.body
        back = (self.provider.approve if approve else self.provider.deny)(redirect.location)
        landing = self.callback(back, redirect.cookie("ic_oauth_browser").value)
        returned = query_of(landing.location)
        if returned.get("status") == "pending":
            # What the SaaS does: the session id must be the one kept in this user's session.
            assert returned["session_id"] == session.json["session_id"]
            landing.completion = self.complete(returned["session_id"], returned["completion_code"])
        return landing
