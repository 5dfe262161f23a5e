"""RefreshFailures: what a failed renewal leaves on its connection, and who is told.

A transient fault (a 429, a 5xx, a timeout) cools the connection down, tells the SaaS on the
first one, and gives the connection up after failing for days. A credential the provider no
longer accepts marks it needs_reauth, once. Client credentials refused even when freshly
fetched are the deployment's fault, never the connection's: it rests without counting toward
re-auth and the operator is paged once per interval, deployment-wide.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any, NoReturn

from botocore.exceptions import BotoCoreError, ClientError

from broker.credentials.insightly import QuotaExhausted
from broker.credentials.kinds import CredentialKind
from broker.credentials.renewal_quota import Emit, RenewalQuota
from broker.platform.config import Settings
from broker.platform.errors import BrokerError, Conflict
from broker.platform.lifecycle import CLIENT_REJECTED, REFRESH_FAILED, LifecycleEvents
from broker.platform.lifecycle import NEEDS_REAUTH as NEEDS_REAUTH_EVENT
from broker.platform.observability import count, logger
from broker.platform.outbound import MAX_RETRY_AFTER
from broker.store.connections import (
    ACTIVE,
    CLIENT_REJECTED_MARKER,
    NEEDS_REAUTH,
    Connection,
    ConnectionStore,
    StaleWrite,
)
from broker.store.quota import QuotaRecord, RateLimit

# A connection refused because of our client credentials rests this long (jittered): the
# scheduler does not hammer the provider with a secret it refuses, /token still tries.
CLIENT_REJECTED_COOLDOWN = 600
SIGNAL_INTERVAL = 300  # at most one ClientRejected event per this many seconds, deployment-wide


def cooldown(failures: int, *, base: int = 60, cap: int = 3600,
             jitter: Callable[[float, float], float] = random.uniform) -> int:
    """How long a connection whose refresh keeps failing rests before the next try."""
    return int(min(cap, base * 2 ** (failures - 1)) * jitter(0.8, 1.2))


def error_record(exc: BrokerError, now: int) -> dict[str, Any]:
    # Codes and our own messages only: never a provider body, never a token.
    return {"code": exc.code, "message": exc.message[:200], "at": now}


class RefreshFailures:
    """Records a failed renewal on the connection's item and emits what the SaaS or the
    operator must hear. `transient` returns (its caller re-raises the provider's error);
    `client_rejected` and `needs_reauth` raise the error that is the caller's answer."""

    def __init__(self, settings: Settings, *, connections: ConnectionStore, quota: RenewalQuota, emit: Emit,
                 events: LifecycleEvents | None, jitter: Callable[[float, float], float]):
        self.settings = settings
        self.connections = connections
        self.quota = quota
        self.emit = emit
        self.events = events
        self.jitter = jitter

    def transient(self, conn: Connection, owner: str, exc: BrokerError, *, kind: CredentialKind,
                  record: QuotaRecord | None, now: int) -> None:
        """A transient failure: cool the connection down, tell the SaaS on the first one, and
        give up on it after failing for days."""
        count("RefreshTransientFailure")
        failing_for = now - (conn.first_failed_at or now)
        if kind.gives_up_after_failing_days and failing_for >= self.settings.reauth_after_failing_days * 86400:
            with contextlib.suppress(Conflict):
                self.needs_reauth(conn, "refresh_failing", exc, now=now)
            return
        retry_after = min(getattr(exc, "retry_after", None) or 0, MAX_RETRY_AFTER)
        retry_at = now + max(cooldown(conn.failure_count + 1, jitter=self.jitter), retry_after)
        rate = getattr(exc, "rate_limit", None)
        if isinstance(exc, QuotaExhausted) and (rate is None or not rate.is_exhausted()):
            # Insightly's 429 is the daily quota: remaining is 0 whatever the headers said.
            limit = rate.limit if rate else (conn.rate_limit or {}).get("limit")
            rate = RateLimit(limit=limit, remaining=0, observed_at=now)
        extra, event = self.quota.on_item(conn, rate)
        self.connections.record_failure(conn, owner=owner, error=error_record(exc, now), retry_at=retry_at, now=now,
                                        extra=extra)
        if conn.failure_count == 0:
            self.emit(REFRESH_FAILED, conn, status=ACTIVE, reason=exc.code)
        self.quota.after_write(conn, record, event, rate=rate, now=now,
                               status=429 if isinstance(exc, QuotaExhausted) else exc.status,
                               retry_after=str(exc.retry_after) if getattr(exc, "retry_after", None) else None)

    def client_rejected(self, conn: Connection, owner: str, *, now: int) -> NoReturn:
        """The provider refuses the broker's client credentials, even freshly fetched: a fault
        of the deployment (a rotated or wrong secret), never of this connection. Cool it down
        without counting toward re-auth, answer 503, and page the operator once."""
        exc = BrokerError("the provider refused the broker's client credentials; the operator must fix "
                          "the client secret", code="client_rejected", status=503)
        retry_at = now + int(CLIENT_REJECTED_COOLDOWN * self.jitter(0.8, 1.2))
        self.connections.record_deployment_fault(conn, owner=owner, error=error_record(exc, now),
                                                 retry_at=retry_at, now=now)
        self._signal_client_rejected(now)
        raise exc

    def _signal_client_rejected(self, now: int) -> None:
        count("ClientRejected")
        logger.error("the provider refused the client credentials (invalid_client) after a refetch")
        try:
            first = self.connections.claim_signal(CLIENT_REJECTED_MARKER, now=now, interval=SIGNAL_INTERVAL)
        except (ClientError, BotoCoreError):
            first = False  # the metric above still pages; the event is best effort
        if first and self.events is not None:
            self.events.emit(CLIENT_REJECTED, connection_id=None, status="deployment", reason="invalid_client",
                             at=now)

    def needs_reauth(self, conn: Connection, reason: str, exc: BrokerError, *, now: int) -> NoReturn:
        """The provider no longer accepts this connection's credential: mark it, once."""
        try:
            self.connections.mark_needs_reauth(conn, error=error_record(exc, now), now=now)
        except StaleWrite:
            pass  # someone re-connected meanwhile: their credentials stand
        else:
            count("NeedsReauth")
            self.emit(NEEDS_REAUTH_EVENT, conn, status=NEEDS_REAUTH, reason=reason)
            logger.warning("connection needs re-authorization",
                           extra={"connection_id": conn.connection_id, "reason": reason})
        raise Conflict("the provider no longer accepts this connection's credential; reconnect it",
                       code="needs_reauth")
