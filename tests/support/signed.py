"""The broker's backend routes as raw answers, for tests that check statuses, headers and
bodies themselves (and the contract checker, which sees every answer). Signed by the Python
client (`insightly_connect.Broker.send`), with its retries off: a test sees each answer the
broker gave, not the client's recovery from it. A backend uses `Broker` itself."""

from __future__ import annotations

import json
from urllib.parse import quote

import botocore.session
import requests

from insightly_connect import Broker


def keyed_session(access_key: str, secret_key: str) -> botocore.session.Session:
    """A botocore session holding these credentials (the local stack's), as a backend holds its role's."""
    session = botocore.session.Session()
    session.set_credentials(access_key, secret_key)
    return session


class SignedCaller:
    """SigV4-signed calls to the broker (service execute-api), answered as requests.Response."""

    def __init__(self, url: str, region: str, access_key: str, secret_key: str):
        self.broker = Broker(url, region, keyed_session(access_key, secret_key), max_attempts=1)

    def call(self, method: str, path: str, body: dict | None = None, *, query: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> requests.Response:
        """`path` is sent as written (already percent-encoded)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {**({"Content-Type": "application/json"} if data else {}), **(headers or {})}
        return self.broker.send(method, path, query=query, data=data, headers=headers, idempotent=False)

    def create_connect_session(self, connection_id: str, return_to: str) -> requests.Response:
        return self.call("POST", "/connect-sessions",
                         {"connection_id": connection_id, "return_to": return_to, "auth_mode": "oauth2"})

    def complete_connect_session(self, session_id: str, completion_code: str) -> requests.Response:
        return self.call("POST", f"/connect-sessions/{quote(session_id, safe='')}/complete",
                         {"completion_code": completion_code})

    def connection(self, connection_id: str) -> requests.Response:
        return self.call("GET", f"/connections/{quote(connection_id, safe='')}")

    def token(self, connection_id: str) -> requests.Response:
        return self.call("GET", f"/connections/{quote(connection_id, safe='')}/token")

    def delete(self, connection_id: str) -> requests.Response:
        return self.call("DELETE", f"/connections/{quote(connection_id, safe='')}")
