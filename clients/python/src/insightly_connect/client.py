"""Broker: every backend route of Insightly Connect, signed with SigV4 (service execute-api).

Retries: the broker already retries Insightly and the OAuth provider; this client retries
only the broker itself, and only when that is safe: a call that never reached it (the
connection could not be made), or an idempotent call (GET, PUT, DELETE, a forced refresh)
that met a passing state of the broker (`refresh_in_progress`, `refresh_conflict`,
`storage_unavailable`, `vault_unavailable`) or API Gateway's throttling or 5xx. A
`Retry-After` is waited out when it is at most `max_retry_wait` seconds; a longer one ends
the retries and is on the error (`error.retry_after`).
"""

from __future__ import annotations

import json as jsonlib
import random
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import botocore.session
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from insightly_connect.errors import error_for, retry_after
from insightly_connect.models import AuthMode, Connection, ConnectSession, Priority, Token

SERVICE = "execute-api"
DEFAULT_TIMEOUT = (3.05, 30.0)  # connect, read: a proxied call may include a refresh and the broker's retries
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# The broker's own passing states: the same call succeeds a moment later.
TRANSIENT_CODES = frozenset({"refresh_in_progress", "refresh_conflict", "storage_unavailable", "vault_unavailable"})
GATEWAY_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})  # API Gateway's own answers ({"message"})
BACKOFF_BASE, BACKOFF_CAP = 0.2, 2.0
_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def _segment(value: str) -> str:
    return quote(value, safe="")


class Broker:
    """The SaaS backend's side of Insightly Connect.

    `session` is a botocore or boto3 session (default: a new botocore session, i.e. the default
    credential chain: environment, shared files, container or instance role). `role_arn` (with
    `external_id` for `BrokerCallerRole`) assumes that role from the session's credentials and
    renews it before it expires. `region` defaults to the one in an execute-api URL, then the
    session's.
    """

    def __init__(self, api_url: str, region: str | None = None, session: Any = None,
                 timeout: float | tuple[float, float] = DEFAULT_TIMEOUT, *, role_arn: str | None = None,
                 external_id: str | None = None, max_attempts: int = 3, max_retry_wait: float = 10.0):
        self.api_url = api_url.rstrip("/")
        session = session if session is not None else botocore.session.Session()
        self.region = region or _region_of(self.api_url) or _session_region(session)
        if not self.region:
            raise ValueError("no region: pass region=..., or use the execute-api URL, or configure one")
        credentials = session.get_credentials()
        if credentials is None:
            raise ValueError("no AWS credentials found (environment, shared files, container or instance role)")
        if role_arn:
            extra = {"RoleSessionName": "insightly-connect-client"}
            if external_id:
                extra["ExternalId"] = external_id
            create_client = getattr(session, "create_client", None) or session.client
            fetcher = AssumeRoleCredentialFetcher(create_client, credentials, role_arn, extra_args=extra)
            credentials = DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
        self._credentials = credentials
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait = max_retry_wait
        self.http = requests.Session()

    # -- connect -------------------------------------------------------------------------------

    def create_connect_session(self, connection_id: str, return_to: str, auth_mode: AuthMode | None = None,
                               tags: Mapping[str, str] | None = None, display: str | None = None, *,
                               quota_group: str | None = None) -> ConnectSession:
        """POST /connect-sessions: where to send the user's browser to connect Insightly."""
        body = _given(connection_id=connection_id, return_to=return_to, auth_mode=auth_mode,
                      tags=dict(tags) if tags is not None else None, display=display, quota_group=quota_group)
        return ConnectSession.from_json(self._call("POST", "/connect-sessions", body, idempotent=False))

    def complete_connect_session(self, session_id: str, completion_code: str) -> Connection:
        """POST /connect-sessions/{session_id}/complete, with the code from the return_to redirect.
        Call it only for the session_id your user's own session holds."""
        path = f"/connect-sessions/{_segment(session_id)}/complete"
        return Connection.from_json(self._call("POST", path, {"completion_code": completion_code}, idempotent=False))

    def put_api_key(self, connection_id: str, api_key: str, pod: str | None = None, api_url: str | None = None, *,
                    tags: Mapping[str, str] | None = None) -> Connection:
        """PUT /connections/{id}/api-key: connect with a key your own UI collected (give pod or api_url)."""
        body = _given(api_key=api_key, pod=pod, api_url=api_url, tags=dict(tags) if tags is not None else None)
        return Connection.from_json(self._call("PUT", self._connection_path(connection_id, "api-key"), body))

    # -- connections ---------------------------------------------------------------------------

    def status(self, connection_id: str) -> Connection:
        """GET /connections/{id}: status, Insightly user, quota; never a credential."""
        return Connection.from_json(self._call("GET", self._connection_path(connection_id)))

    def token(self, connection_id: str) -> Token:
        """GET /connections/{id}/token: a credential that works now (refreshed first when due)."""
        return Token.from_json(self._call("GET", self._connection_path(connection_id, "token")))

    def refresh(self, connection_id: str) -> Token:
        """POST /connections/{id}/refresh: refresh now (oauth2) or check the key now (api_key)."""
        return Token.from_json(self._call("POST", self._connection_path(connection_id, "refresh"), idempotent=True))

    def update(self, connection_id: str, tags: Mapping[str, str] | None = None,
               metadata: Mapping[str, Any] | None = None, *, quota_group: str | None = None) -> Connection:
        """PATCH /connections/{id}: replaces what is given (tags, metadata, quota_group), keeps the rest."""
        body = _given(tags=dict(tags) if tags is not None else None,
                      metadata=dict(metadata) if metadata is not None else None, quota_group=quota_group)
        # Replacing with the same values again changes nothing: safe to retry.
        return Connection.from_json(self._call("PATCH", self._connection_path(connection_id), body, idempotent=True))

    def delete(self, connection_id: str) -> None:
        """DELETE /connections/{id}: revoke when the provider allows, then forget the connection."""
        self._call("DELETE", self._connection_path(connection_id))

    def connections(self, status: str | None = None, auth_mode: AuthMode | None = None,
                    tag: Mapping[str, str] | tuple[str, str] | None = None, *,
                    limit: int | None = None) -> Iterator[Connection]:
        """GET /connections, every page (it follows next_cursor). One filter at a time: `status`,
        `auth_mode` or `tag` ({ListTagKey: value}). `limit` is the page size (1-100)."""
        query = _given(status=status, auth_mode=auth_mode, limit=str(limit) if limit is not None else None)
        pairs = [tag] if isinstance(tag, tuple) else list((tag or {}).items())
        query.update({f"tag.{key}": value for key, value in pairs})
        cursor: str | None = None
        while True:
            page = self._call("GET", "/connections", query={**query, **({"cursor": cursor} if cursor else {})})
            for item in page.get("connections", []):
                yield Connection.from_json(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def proxy(self, connection_id: str, priority: Priority | None = None) -> ProxySession:
        """Insightly's API through the broker, with the connection's credential injected there."""
        return ProxySession(self, connection_id, priority)

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection_path(self, connection_id: str, *rest: str) -> str:
        return "/".join(["/connections", _segment(connection_id), *rest])

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
              query: Mapping[str, str] | None = None, idempotent: bool | None = None) -> Any:
        data = jsonlib.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        response = self.send(method, path, query=query, data=data, headers=headers,
                             idempotent=method in IDEMPOTENT_METHODS if idempotent is None else idempotent)
        if response.status_code >= 400:
            raise error_for(response.status_code, response.content, response.headers, response=response)
        return response.json() if response.content else None

    def send(self, method: str, path: str, *, query: Mapping[str, str] | str | None = None, data: bytes | None = None,
             headers: Mapping[str, str] | None = None, idempotent: bool, proxied: bool = False,
             timeout: float | tuple[float, float] | None = None) -> requests.Response:
        """One signed call, retried as the module doc says. `path` is sent byte for byte as given
        (already percent-encoded): requests would otherwise drop `.` and `..` segments after they
        were signed, and the broker could not refuse them."""
        if isinstance(query, str):
            url = self.api_url + path + (f"?{query}" if query else "")
        else:
            url = self.api_url + path + (f"?{urlencode(query, quote_via=quote)}" if query else "")
        attempt = 1
        while True:
            request = AWSRequest(method=method, url=url, data=data, headers=dict(headers or {}))
            SigV4Auth(self._credentials.get_frozen_credentials(), SERVICE, self.region).add_auth(request)
            signed = requests.Request(method, url, data=data, headers=dict(request.headers))
            prepared = self.http.prepare_request(signed)
            prepared.url = url
            # As Session.request would: HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE from the environment.
            settings = self.http.merge_environment_settings(url, {}, None, None, None)
            try:
                response = self.http.send(prepared, timeout=timeout or self.timeout, allow_redirects=False,
                                          **settings)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.max_attempts or not (idempotent or _never_sent(exc)):
                    raise
                time.sleep(_backoff(attempt))
            else:
                wait = self._retry_wait(response, attempt, idempotent, proxied)
                if wait is None:
                    return response
                response.close()
                time.sleep(wait)
            attempt += 1

    def _retry_wait(self, response: requests.Response, attempt: int, idempotent: bool, proxied: bool) -> float | None:
        """Seconds to wait before the next attempt, or None: this answer is final."""
        if response.status_code < 400 or attempt >= self.max_attempts or not idempotent:
            return None
        code = response.headers.get("X-Broker-Error") if proxied else _error_code(response)
        # API Gateway's own answers have no code; through the proxy they cannot be told from
        # Insightly's, which the broker has retried already (and whose 429 is a daily quota).
        transient = code in TRANSIENT_CODES or (
            not proxied and code is None and response.status_code in GATEWAY_TRANSIENT_STATUSES)
        if not transient:
            return None
        asked = retry_after(response.headers.get("Retry-After"))
        if asked is None:
            return _backoff(attempt)
        return asked if asked <= self.max_retry_wait else None


class ProxySession:
    """Insightly's API through the broker, like a requests.Session on Insightly's base URL:
    `get("Contacts", params={"top": 5})`, `post("Contacts", json={...})`. Answers are Insightly's
    own `requests.Response`s (4xx and 5xx included); the broker's own refusals raise
    BrokerError subclasses (NeedsReauthError, QuotaExhaustedError, ...). The path is sent
    exactly as written (each character percent-encoded, `..` kept), so what the broker checks is
    what you wrote."""

    def __init__(self, broker: Broker, connection_id: str, priority: Priority | None = None):
        self.broker = broker
        self.connection_id = connection_id
        self.priority = priority

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                data: bytes | str | None = None, json: Any = None, headers: Mapping[str, str] | None = None,
                timeout: float | tuple[float, float] | None = None) -> requests.Response:
        method = method.upper()
        path, _, raw_query = path.lstrip("/").partition("?")
        query = "&".join(filter(None, [raw_query, urlencode(params or {}, doseq=True, quote_via=quote)]))
        sent = {"Accept": "application/json", **(headers or {})}
        if json is not None:
            data = jsonlib.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        if self.priority:
            sent["X-Broker-Priority"] = self.priority
        body = data.encode() if isinstance(data, str) else data
        full_path = f"{self.broker._connection_path(self.connection_id, 'proxy')}/{quote(path, safe='/')}"
        response = self.broker.send(method, full_path, query=query, data=body, headers=sent,
                                    idempotent=method in IDEMPOTENT_METHODS, proxied=True, timeout=timeout)
        code = response.headers.get("X-Broker-Error")
        if code:
            raise error_for(response.status_code, response.content, response.headers, code=code, response=response)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that were given: None means "not sent", so the broker keeps its default."""
    return {name: value for name, value in fields.items() if value is not None}


def _region_of(api_url: str) -> str | None:
    found = _EXECUTE_API_HOST.match(urlsplit(api_url).hostname or "")
    return found.group(1) if found else None


def _session_region(session: Any) -> str | None:
    region = getattr(session, "region_name", None)
    if region is None and hasattr(session, "get_config_variable"):
        region = session.get_config_variable("region")
    return region


def _error_code(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None


def _never_sent(exc: BaseException) -> bool:
    """True when the connection was never made, so the broker cannot have seen the request."""
    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, requests.ConnectTimeout | NewConnectionError | ConnectTimeoutError):
            return True
        linked = (getattr(error, "reason", None), error.__cause__, error.__context__, *error.args)
        pending += [link for link in linked if isinstance(link, BaseException)]
    return False


def _backoff(attempt: int) -> float:
    """Capped full jitter: spreads the retries of many callers."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not a secret

