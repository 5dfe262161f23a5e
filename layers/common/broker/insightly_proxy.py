"""InsightlyProxy: the SaaS calls Insightly through the broker, which injects the connection's
credential, follows its pod, recovers from a 401 once and guards the daily quota.

One DynamoDB read per call (the item serves the quota guard and the credential alike), one
KMS decrypt, one Insightly call; a locally answered 429 costs the read only. Quota
observations are written only when they matter (proxy.should_write): a 10 % step, a 429,
the end of a throttle, or at most once a minute.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import deadline, proxy, requests_in
from .connections import ACTIVE, Connection
from .errors import BrokerError, Conflict, NotFound
from .insightly import RateLimit
from .observability import logger, metrics
from .outbound import HttpClient
from .tokens import TokenService, quota_change

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


class QuotaExhaustedHere(BrokerError):
    """The broker answers Insightly's 429 itself: the quota is used up until the throttle ends."""

    status = 429
    code = "provider_quota_exhausted"

    def __init__(self, retry_after: int):
        super().__init__("Insightly's daily API limit for this account is used up; retry after the time given")
        self.retry_after = retry_after


def quota_state(conn: Connection) -> proxy.QuotaState:
    rate = conn.rate_limit or {}
    observed = RateLimit(rate.get("limit"), rate.get("remaining"), rate.get("observed_at", 0)) if rate else None
    return proxy.QuotaState(throttled_until=conn.throttled_until, rate_limit=observed,
                            last_written_at=rate.get("observed_at"))


class InsightlyProxy:
    def __init__(self, tokens: TokenService, *, quota_backoff_seconds: int = 900,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float, float], float] = random.uniform):
        self.tokens = tokens
        self.quota_backoff_seconds = quota_backoff_seconds
        self.http = HttpClient(session=session)  # its session only: forward() times each attempt
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter

    def call(self, connection_id: str, event: Mapping[str, Any]) -> proxy.ProxyAnswer:
        """One proxied call; the answer is Insightly's (allowed headers, decompressed body) or
        the broker's own error with X-Broker-Error. One log line and its metrics either way."""
        started, outcome = time.monotonic(), {"insightly_ms": 0.0, "retries": 0, "local": False, "recovered": False}
        method, path = str(event.get("requestContext", {}).get("http", {}).get("method", "GET")).upper(), None
        try:
            connection_id = requests_in.connection_id(connection_id)
            path = proxy.safe_path((event.get("pathParameters") or {}).get("path") or "")
            answer = self._call(connection_id, method, path, event, outcome)
        except BrokerError as exc:
            answer = proxy.broker_answer(exc, retry_after=getattr(exc, "retry_after", None))
        total_ms = (time.monotonic() - started) * 1000
        logger.info("proxied call", extra=proxy.log_fields(
            method=method, connection_id=str(connection_id)[:128], path=path, status=answer.status,
            total_ms=total_ms, insightly_ms=outcome["insightly_ms"], retries=outcome["retries"],
            answered_locally=outcome["local"]))
        for name, unit, value in proxy.metric_values(
                status=answer.status, total_ms=total_ms, insightly_ms=outcome["insightly_ms"],
                retries=outcome["retries"], answered_locally=outcome["local"], recovered_401=outcome["recovered"]):
            metrics.add_metric(name=name, unit=unit, value=value)
        return answer

    def _call(self, connection_id: str, method: str, path: str, event: Mapping[str, Any],
              outcome: dict) -> proxy.ProxyAnswer:
        body = proxy.request_body(event)
        conn = self.tokens.connections.get(connection_id)
        if conn is None:
            raise NotFound("no such connection", code="connection_not_found")
        if conn.status != ACTIVE or not conn.credentials:
            raise Conflict("this connection needs to be re-authorized", code="needs_reauth")
        now = int(self.clock())
        state = quota_state(conn)
        wait = proxy.locally_throttled(state, now)
        probe = proxy.probe_claim(state, now) if wait is None else None
        # The throttle has passed: one caller probes, the others keep being answered here.
        if probe is not None and not self.tokens.connections.claim_probe(conn, until=int(probe.throttled_until)):
            wait = proxy.PROBE_SECONDS
        if wait is not None:
            outcome["local"] = True
            raise QuotaExhaustedHere(wait)

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
        self._observe(conn, state, response, now)
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

    def _observe(self, conn: Connection, state: proxy.QuotaState, response: requests.Response, now: int) -> None:
        """Record the quota Insightly showed (and that the credential worked), when it matters."""
        rate = RateLimit.from_headers(response.headers, now=now)
        if response.status_code == 429 and (rate is None or not rate.is_exhausted()):
            rate = RateLimit(limit=rate.limit if rate else None, remaining=0, observed_at=now)
        observed = proxy.after_response(state, status=response.status_code,
                                        retry_after=response.headers.get("Retry-After"), observed=rate, now=now,
                                        backoff_seconds=self.quota_backoff_seconds)
        if not proxy.should_write(state, observed, now):
            return
        sets, event = quota_change(conn, rate) if rate is not None else ({}, None)
        remove = []
        if observed.throttled_until is None:
            remove.append("throttled_until")
        else:
            sets["throttled_until"] = int(observed.throttled_until)
        if 200 <= response.status_code < 300:
            sets["last_used_at"] = now  # the key works: its next scheduled check can wait
        if sets or remove:
            self.tokens.connections.record_quota(conn.connection_id, sets=sets, remove=remove)
        if event:
            self.tokens.emit(event, conn, status=ACTIVE, reason="quota")

