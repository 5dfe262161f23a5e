"""InsightlyProxy: the SaaS calls Insightly through the broker, which injects the connection's
credential, follows its pod, recovers from a 401 once and guards the daily quota of the
connection's quota group (store.quota), with a reserve that background calls cannot spend.

One DynamoDB call per call (a GetItem, or for a grouped connection a BatchGetItem of the
connection and its group's record), one KMS decrypt, one Insightly call; a locally answered
429 costs the read only. Quota observations are written only when they matter
(store.quota.should_write, and the reserve line): a 10 % step, a 429, the end of a throttle, or at
most once a minute.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from broker.credentials.tokens import TokenService
from broker.http import requests_in
from broker.platform import deadline
from broker.platform.errors import BrokerError, Conflict, NotFound
from broker.platform.observability import logger, metrics
from broker.platform.outbound import HttpClient
from broker.proxy import rules as proxy
from broker.store import quota
from broker.store.connections import ACTIVE
from broker.store.quota import QuotaExhaustedHere, QuotaRecord, RateLimit  # noqa: F401 - QuotaExhaustedHere: this module's API

if TYPE_CHECKING:  # loaded by the proxy function's handler module (it always calls out)
    import requests


# A 401 within this long of the credential's last renewal is passed back, not renewed again.
RENEWED_RECENTLY_SECONDS = 60


class HeaderAuth:  # a requests auth (any callable is)
    """The Authorization header /token would hand out, for either credential kind."""

    def __init__(self, value: str):
        self.value = value

    def __call__(self, request):
        request.headers["Authorization"] = self.value
        return request

    def __repr__(self) -> str:  # never print a credential
        return "HeaderAuth(...)"


class InsightlyProxy:
    def __init__(self, tokens: TokenService, *, quota_backoff_seconds: int = 900,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float, float], float] = random.uniform):
        self.tokens = tokens
        self.quotas = tokens.quota_groups(backoff_seconds=quota_backoff_seconds)
        self.http = HttpClient(session=session)  # its session only: forward() times each attempt
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter

    def call(self, connection_id: str, event: Mapping[str, Any]) -> proxy.ProxyAnswer:
        """One proxied call; the answer is Insightly's (allowed headers, decompressed body) or
        the broker's own error with X-Broker-Error. One log line and its metrics either way."""
        started = time.monotonic()
        outcome = {"insightly_ms": 0.0, "retries": 0, "local": None, "recovered": False, "priority": None}
        method, path = str(event.get("requestContext", {}).get("http", {}).get("method", "GET")).upper(), None
        try:
            connection_id = requests_in.connection_id(connection_id)
            path = proxy.safe_path((event.get("pathParameters") or {}).get("path") or "")
            outcome["priority"] = quota.priority(event.get("headers"))
            answer = self._call(connection_id, method, path, event, outcome)
        except BrokerError as exc:
            answer = proxy.broker_answer(exc, retry_after=getattr(exc, "retry_after", None),
                                         headers=getattr(exc, "headers", None))
        total_ms = (time.monotonic() - started) * 1000
        logger.info("proxied call", extra=proxy.log_fields(
            method=method, connection_id=str(connection_id)[:128], path=path, status=answer.status,
            total_ms=total_ms, insightly_ms=outcome["insightly_ms"], retries=outcome["retries"],
            answered_locally=outcome["local"] is not None, priority=outcome["priority"],
            refusal=outcome["local"]))
        for name, unit, value in proxy.metric_values(
                status=answer.status, total_ms=total_ms, insightly_ms=outcome["insightly_ms"],
                retries=outcome["retries"], answered_locally=outcome["local"] is not None,
                recovered_401=outcome["recovered"], refusal=outcome["local"]):
            metrics.add_metric(name=name, unit=unit, value=value)
        return answer

    def _call(self, connection_id: str, method: str, path: str, event: Mapping[str, Any],
              outcome: dict) -> proxy.ProxyAnswer:
        body = proxy.request_body(event)
        conn, record = self.tokens.connections.get_with_quota(connection_id)
        if conn is None:
            raise NotFound("no such connection", code="connection_not_found")
        if conn.status != ACTIVE or not conn.credentials:
            raise Conflict("this connection needs to be re-authorized", code="needs_reauth")
        now = int(self.clock())
        try:
            record = self.quotas.admit(record, outcome["priority"], now)
        except (quota.QuotaExhaustedHere, quota.QuotaReserved) as refused:
            outcome["local"] = refused.reason
            raise

        headers = proxy.request_headers(event.get("headers") or {})
        credential = self.tokens.answer_for(conn)
        url = proxy.target_url(credential["api_base_url"], path, event.get("rawQueryString") or "")
        response = self._forward(method, url, headers, body, credential, outcome)
        if response.status_code == 401:
            if conn.last_refreshed_at is not None and now - conn.last_refreshed_at < RENEWED_RECENTLY_SECONDS:
                # A renewal a moment ago did not help: another would rotate the refresh token (or
                # spend a Users/Me request of the daily quota) on every call for nothing.
                response.close()
                raise BrokerError("Insightly refused the connection's credential, which was renewed less than "
                                  "a minute ago; it is not renewed again yet", code="credential_recently_renewed",
                                  status=401)
            # Renewed through the token service's lease and single flight: a refresh for
            # oauth2, a Users/Me check for a key (which marks it needs_reauth if refused: 409).
            renewed = self.tokens.force_refresh(connection_id)
            if self.tokens.kinds[conn.auth_mode].retry_after_renewal:
                response.close()  # streamed: give its connection back before the next attempt
                response = self._forward(method, url, headers, body, renewed, outcome)
                if response.status_code == 401:
                    raise BrokerError("Insightly did not accept the connection's credential even after a refresh",
                                      code="provider_unauthorized", status=401)
                outcome["recovered"] = True
        self.quotas.observe(conn, record, status=response.status_code,
                            rate=RateLimit.from_headers(response.headers, now=now),
                            retry_after=response.headers.get("Retry-After"), now=now)
        return proxy.upstream_answer(response, retries=outcome["retries"])

    def _forward(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                 credential: dict[str, Any], outcome: dict) -> requests.Response:
        called = time.monotonic()
        try:
            response, retries = proxy.forward(self.http.session, method, url, headers, body,
                                              HeaderAuth(credential["authorization"]),
                                              seconds_left=deadline.seconds_left, sleep=self.sleep, jitter=self.jitter)
        finally:
            outcome["insightly_ms"] += (time.monotonic() - called) * 1000
        outcome["retries"] += retries
        return response
