"""TokenService: hand out valid access tokens, refresh them, report and delete connections.

A refresh takes a lease on the connection item first, so only one refresher at a time
reaches the provider; the new token set is written conditionally on the version it read
and on still holding the lease, so a stale writer never overwrites newer credentials.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from . import aws, deadline
from .client_credentials import ClientCredentialSource
from .config import Settings
from .connections import ACTIVE, CLIENT_REJECTED_MARKER, Connection, ConnectionStore, StaleWrite
from .errors import (
    BrokerError,
    Conflict,
    CredentialsUnreadable,
    NotFound,
    ProviderRejected,
    ProviderUnavailable,
    VaultUnavailable,
)
from .lifecycle import CLIENT_REJECTED, DELETED, RECOVERED, REFRESH_FAILED, LifecycleEvents
from .lifecycle import NEEDS_REAUTH as NEEDS_REAUTH_EVENT
from .observability import count, logger, metrics
from .provider import MAX_RETRY_AFTER, ProviderClient, TokenSet
from .vault import TokenVault

REFRESHED, NOT_DUE, IN_PROGRESS, NEEDS_REAUTH, FAILED = "refreshed", "not_due", "in_progress", "needs_reauth", "failed"
DEFERRED = "deferred"  # not tried: too little of the invocation left to finish a refresh
# OAuth answers that no retry will fix: this connection's grant is gone. invalid_client is
# not one of them: it is the deployment's fault (DESIGN.md invariant 9), not the connection's.
TERMINAL_ERRORS = frozenset({"invalid_grant"})
MAX_PROVIDER_ATTEMPTS = 3
# Time kept for storing the new token set: the KMS call, then the DynamoDB write, which
# aws.py refuses to start with less than one whole attempt left.
PERSIST_SECONDS = aws.ATTEMPT_SECONDS + 0.5
# A connection refused because of our client credentials rests this long (jittered): the
# scheduler does not hammer the provider with a secret it refuses, /token still tries.
CLIENT_REJECTED_COOLDOWN = 600
SIGNAL_INTERVAL = 300  # at most one ClientRejected event per this many seconds, deployment-wide


def iso(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def expiry_and_due(expires_in: int | None, can_refresh: bool, now: int, lead: int, *, keep_alive: int = 0,
                   jitter: Callable[[float, float], float] = random.uniform) -> tuple[int | None, int | None]:
    """When the access token expires, and when the background refresh should renew it.

    Due = expiry - lead - a random spread (up to a tenth of the lifetime), so connections
    made together do not all come due together; never before half the lifetime has
    passed; and at least every `keep_alive` seconds, for tokens without expires_in and for
    refresh tokens that expire when unused.
    """
    expires_at = None if expires_in is None else now + expires_in
    if not can_refresh:
        return expires_at, None
    if expires_in is None:
        return None, (now + keep_alive if keep_alive else None)
    spread = int(jitter(0, min(lead, expires_in / 10)))
    due = max(now + expires_in // 2, expires_at - lead - spread)
    return expires_at, (min(due, now + keep_alive) if keep_alive else due)


def backoff(attempt: int, *, base: float = 0.5, cap: float = 4.0,
            jitter: Callable[[float, float], float] = random.uniform) -> float:
    """Capped exponential backoff with full jitter."""
    return jitter(0, min(cap, base * 2 ** attempt))


def cooldown(failures: int, *, base: int = 60, cap: int = 3600,
             jitter: Callable[[float, float], float] = random.uniform) -> int:
    """How long a connection whose refresh keeps failing rests before the next try."""
    return int(min(cap, base * 2 ** (failures - 1)) * jitter(0.8, 1.2))


def sealed_fields(tokens: TokenSet, previous: dict | None = None) -> dict:
    """The token set as it is encrypted; a refresh without a new refresh token keeps the old one."""
    previous = previous or {}
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token or previous.get("refresh_token"),
        "token_type": tokens.token_type,
        "scope": tokens.scope if tokens.scope is not None else previous.get("scope"),
    }


def error_record(exc: BrokerError, now: int) -> dict[str, Any]:
    # Codes and our own messages only: never a provider body, never a token.
    return {"code": exc.code, "message": exc.message[:200], "at": now}


def connection_status(conn: Connection) -> dict[str, Any]:
    """What GET /connections/{id} answers: never a credential."""
    return {
        "connection_id": conn.connection_id,
        "status": conn.status,
        "auth_mode": conn.auth_mode,
        "provider_user": conn.provider_user or None,
        "scopes": conn.scopes.split() if conn.scopes else [],
        "expires_at": iso(conn.expires_at),
        "last_refreshed_at": iso(conn.last_refreshed_at),
        "next_refresh_at": iso(conn.refresh_due_at) if conn.status == ACTIVE else None,
        "connected_at": iso(conn.connected_at),
        "created_at": iso(conn.created_at),
        "failing_since": iso(conn.first_failed_at),
        "last_error": {**conn.last_error, "at": iso(int(conn.last_error["at"]))} if conn.last_error else None,
    }


class TokenService:
    def __init__(self, settings: Settings, *, connections: ConnectionStore, vault: TokenVault,
                 provider: ProviderClient, credentials: ClientCredentialSource,
                 events: LifecycleEvents | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float, float], float] = random.uniform):
        self.settings = settings
        self.connections = connections
        self.vault = vault
        self.provider = provider
        self.credentials = credentials
        self.events = events
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter
        self._flights: dict[str, threading.Lock] = {}
        self._flights_guard = threading.Lock()

    def _now(self) -> int:
        return int(self.clock())

    # -- routes ------------------------------------------------------------------------------

    def status(self, connection_id: str) -> dict[str, Any]:
        return connection_status(self._get(connection_id))

    def access_token(self, connection_id: str) -> dict[str, Any]:
        """A token valid for at least the skew; refreshed first when it is not."""
        conn = self._active(connection_id)
        if self._fresh(conn):
            return self._token_answer(conn, self.vault.open(connection_id, conn.credentials))
        with self._single_flight(connection_id) as waited:
            if waited:  # another request in this container just refreshed it, most likely
                conn = self._active(connection_id)
                if self._fresh(conn):
                    return self._token_answer(conn, self.vault.open(connection_id, conn.credentials))
            return self._refresh(conn, wait_for_winner=True)

    def force_refresh(self, connection_id: str) -> dict[str, Any]:
        with self._single_flight(connection_id):
            return self._refresh(self._active(connection_id), wait_for_winner=True)

    def time_to_refresh(self) -> float:
        """What a refresh needs of the invocation: a provider call with its timeouts and the write."""
        return self.settings.http_connect_timeout + self.settings.http_read_timeout + PERSIST_SECONDS

    def refresh_if_due(self, connection_id: str) -> str:
        """The background path: refresh a connection the due index listed, if it still is
        due. Duplicate and late queue messages end here as not_due. With too little time
        left it does not start (deferred): nothing is recorded, the message goes back."""
        if deadline.seconds_left() < self.time_to_refresh():
            return DEFERRED
        conn = self.connections.get(connection_id)
        if (conn is None or conn.status != ACTIVE or conn.refresh_due_at is None
                or conn.refresh_due_at > self._now()):
            return NOT_DUE
        try:
            answer = self._refresh(conn, wait_for_winner=False)
        except BrokerError as exc:
            if exc.code == "connection_not_found":
                return NOT_DUE  # deleted meanwhile
            return NEEDS_REAUTH if exc.code == "needs_reauth" else FAILED
        return REFRESHED if answer else IN_PROGRESS

    def delete(self, connection_id: str) -> None:
        """Revoke, then delete only the version whose tokens were revoked: a refresh that
        stored a newer token set meanwhile makes the delete read and revoke that one too. A
        refresh that stores after the delete finds the item gone and revokes its own."""
        conn = self._get(connection_id)
        for _ in range(3):
            if self.settings.provider.revocation_url and conn.credentials:
                self._revoke(conn)
            try:
                deleted = self.connections.delete(connection_id, version=conn.version)
            except StaleWrite:
                latest = self.connections.get(connection_id)
                if latest is None:
                    return
                conn = latest
                continue
            if deleted:
                count("ConnectionsDeleted")
                self._emit(DELETED, conn, status="deleted", reason="deleted_by_backend")
                logger.info("connection deleted", extra={"connection_id": connection_id})
            return
        raise Conflict("the connection kept changing during the delete; try again", code="refresh_conflict")

    # -- refresh -----------------------------------------------------------------------------

    def _fresh(self, conn: Connection) -> bool:
        return conn.expires_at is None or conn.expires_at - self.settings.token_skew_seconds > self._now()

    @contextlib.contextmanager
    def _single_flight(self, connection_id: str) -> Iterator[bool]:
        """One refresh per connection per container; yields whether this caller had to wait."""
        with self._flights_guard:
            lock = self._flights.setdefault(connection_id, threading.Lock())
        waited = not lock.acquire(blocking=False)
        if waited:
            lock.acquire()
        try:
            yield waited
        finally:
            lock.release()
            with self._flights_guard:  # forget idle locks: a worker sees many connections
                if not lock.locked() and self._flights.get(connection_id) is lock:
                    del self._flights[connection_id]

    def _refresh(self, conn: Connection, *, wait_for_winner: bool) -> dict[str, Any] | None:
        started = time.monotonic()
        owner = uuid.uuid4().hex
        if not self.connections.acquire_lease(conn, owner=owner, now=self._now(),
                                              seconds=self.settings.lease_seconds):
            count("RefreshLostRace")
            return self._await_winner(conn) if wait_for_winner else None
        lease_end = started + self.settings.lease_seconds
        try:
            current = self.vault.open(conn.connection_id, conn.credentials)
            if not current.get("refresh_token"):
                raise ProviderRejected("this connection has no refresh token", oauth_error="no_refresh_token")
            tokens = self._call_refresh(current["refresh_token"], lease_end)
        except ProviderRejected as exc:
            if exc.oauth_error in TERMINAL_ERRORS or exc.oauth_error == "no_refresh_token":
                return self._terminal(conn, exc)
            if exc.oauth_error == "invalid_client":  # still refused with a freshly fetched secret
                self._client_rejected(conn, owner)
            self._failed(conn, owner, exc)
            raise
        except CredentialsUnreadable as exc:
            # Not the provider's fault and not transient: leave the item as it is.
            self.connections.release_lease(conn, owner=owner, error=error_record(exc, self._now()))
            raise
        except BrokerError as exc:
            self._failed(conn, owner, exc)
            raise
        sealed = sealed_fields(tokens, current)
        expires_at = self._persist(conn, owner, tokens, sealed)
        count("RefreshSucceeded")
        metrics.add_metric(name="RefreshLatency", unit=MetricUnit.Milliseconds,
                           value=(time.monotonic() - started) * 1000)
        if conn.failure_count:
            count("RefreshRecovered")
            self._emit(RECOVERED, conn, status=ACTIVE, reason=(conn.last_error or {}).get("code"))
        logger.info("token refreshed", extra={"connection_id": conn.connection_id})
        return {"connection_id": conn.connection_id, "access_token": sealed["access_token"],
                "token_type": sealed["token_type"], "expires_at": iso(expires_at)}

    def _call_refresh(self, refresh_token: str, lease_end: float) -> TokenSet:
        """One refresh at the provider, retried on transient faults while the lease and the
        invocation last."""
        # Retry only while both outlast the wait, a whole further call and the write after it:
        # the lease keeps a second refresher off the same refresh token, and the invocation's
        # end would cut the write of a token the provider has already rotated.
        end = min(lease_end, time.monotonic() + deadline.seconds_left())
        attempt = 0
        while True:
            called = time.monotonic()
            try:
                tokens = self.credentials.call(lambda creds: self.provider.refresh(creds, refresh_token))
            except ProviderUnavailable as exc:
                attempt += 1
                wait = max(exc.retry_after or 0, backoff(attempt, jitter=self.jitter))
                if attempt >= MAX_PROVIDER_ATTEMPTS or time.monotonic() + wait + self.time_to_refresh() > end:
                    raise
                count("ProviderRetries")
                self.sleep(wait)
                continue
            finally:
                metrics.add_metric(name="ProviderLatency", unit=MetricUnit.Milliseconds,
                                   value=(time.monotonic() - called) * 1000)
            return tokens

    def _persist(self, conn: Connection, owner: str, tokens: TokenSet, sealed: dict[str, Any]) -> int | None:
        """Store the new token set before anyone hears of it. The provider may already have
        retired the old refresh token, so a passing KMS or DynamoDB fault is retried."""
        now = self._now()
        expires_at, due = expiry_and_due(tokens.expires_in, bool(sealed["refresh_token"]), now,
                                         self.settings.refresh_lead_seconds,
                                         keep_alive=self.settings.keep_alive_refresh_seconds, jitter=self.jitter)
        for attempt in range(3):
            try:
                self.connections.save_refreshed(
                    conn, owner=owner, credentials=self.vault.seal(conn.connection_id, sealed),
                    expires_at=expires_at, refresh_due_at=due, now=now)
                return expires_at
            except StaleWrite:
                if self.connections.get(conn.connection_id) is None:
                    # Deleted while the provider answered: the token set just received must
                    # not stay live at the provider with nobody holding it.
                    logger.warning("connection deleted during its refresh; revoking the new token set",
                                   extra={"connection_id": conn.connection_id})
                    if self.settings.provider.revocation_url:
                        self._revoke_token_set(conn.connection_id, sealed)
                    raise NotFound("the connection was deleted during the refresh",
                                   code="connection_not_found") from None
                raise Conflict("the connection changed during the refresh; try again",
                               code="refresh_conflict") from None
            except (VaultUnavailable, ClientError, BotoCoreError):
                # KMS or DynamoDB (botocore has already retried throttles): try the write again.
                if attempt == 2:
                    logger.error("refreshed token set not stored", extra={"connection_id": conn.connection_id})
                    count("RefreshNotStored")
                    raise
            self.sleep(0.1 * 2 ** attempt)
        return expires_at  # unreachable: the loop returns or raises

    def _terminal(self, conn: Connection, exc: ProviderRejected) -> dict[str, Any]:
        """invalid_grant, no refresh token."""
        if exc.oauth_error == "invalid_grant":
            # A newer token set stored meanwhile (another refresher, a re-connect) means this
            # caller lost a race with a token that was already rotated: not a dead connection.
            latest = self.connections.get(conn.connection_id)
            if latest is not None and latest.version != conn.version:
                count("RefreshLostRace")
                if latest.status == ACTIVE and latest.credentials:
                    return self._token_answer(latest, self.vault.open(latest.connection_id, latest.credentials))
                raise Conflict("this connection needs to be re-authorized", code="needs_reauth")
        self._needs_reauth(conn, exc.oauth_error, exc)

    def _failed(self, conn: Connection, owner: str, exc: BrokerError) -> None:
        """A transient failure: cool the connection down, tell the SaaS on the first one, and
        give up on it after failing for days."""
        now = self._now()
        count("RefreshTransientFailure")
        failing_for = now - (conn.first_failed_at or now)
        if failing_for >= self.settings.reauth_after_failing_days * 86400:
            with contextlib.suppress(Conflict):
                self._needs_reauth(conn, "refresh_failing", exc)
            return
        retry_after = min(getattr(exc, "retry_after", None) or 0, MAX_RETRY_AFTER)
        retry_at = now + max(cooldown(conn.failure_count + 1, jitter=self.jitter), retry_after)
        self.connections.record_failure(conn, owner=owner, error=error_record(exc, now), retry_at=retry_at, now=now)
        if conn.failure_count == 0:
            self._emit(REFRESH_FAILED, conn, status=ACTIVE, reason=exc.code)

    def _client_rejected(self, conn: Connection, owner: str) -> None:
        """The provider refuses the broker's client credentials, even freshly fetched: a fault
        of the deployment (a rotated or wrong secret), never of this connection. Cool it down
        without counting toward re-auth, answer 503, and page the operator once."""
        now = self._now()
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

    def _needs_reauth(self, conn: Connection, reason: str, exc: BrokerError) -> None:
        try:
            self.connections.mark_needs_reauth(conn, error=error_record(exc, self._now()), now=self._now())
        except StaleWrite:
            pass  # someone re-connected meanwhile: their credentials stand
        else:
            count("NeedsReauth")
            self._emit(NEEDS_REAUTH_EVENT, conn, status=NEEDS_REAUTH, reason=reason)
            logger.warning("connection needs re-authorization",
                           extra={"connection_id": conn.connection_id, "reason": reason})
        raise Conflict("the provider no longer accepts this connection's grant; reconnect it", code="needs_reauth")

    def _emit(self, detail_type: str, conn: Connection, *, status: str, reason: str | None) -> None:
        if self.events is not None:
            self.events.emit(detail_type, connection_id=conn.connection_id, status=status, reason=reason,
                             at=self._now())

    def _await_winner(self, conn: Connection) -> dict[str, Any]:
        """Another caller holds the lease: wait briefly for the token it stores."""
        for attempt in range(10):
            pause = min(0.1 * 2 ** attempt, 1.0)
            if deadline.seconds_left() < pause + 1.0:
                break  # never wait past the invocation's end
            self.sleep(pause)
            latest = self._get(conn.connection_id)
            if latest.version > conn.version:
                if latest.status != ACTIVE:
                    raise Conflict("this connection needs to be re-authorized", code="needs_reauth")
                return self._token_answer(latest, self.vault.open(latest.connection_id, latest.credentials))
            if latest.lease_until is None or latest.lease_until < self._now():
                break  # the winner gave up or crashed
        raise BrokerError("a refresh of this connection is in progress; retry shortly",
                          code="refresh_in_progress", status=503)

    # -- plumbing ----------------------------------------------------------------------------

    def _get(self, connection_id: str) -> Connection:
        conn = self.connections.get(connection_id)
        if conn is None:
            raise NotFound("no such connection", code="connection_not_found")
        return conn

    def _active(self, connection_id: str) -> Connection:
        conn = self._get(connection_id)
        if conn.status != ACTIVE or not conn.credentials:
            raise Conflict("this connection needs to be re-authorized", code="needs_reauth")
        return conn

    @staticmethod
    def _token_answer(conn: Connection, sealed: dict[str, Any]) -> dict[str, Any]:
        return {"connection_id": conn.connection_id, "access_token": sealed["access_token"],
                "token_type": sealed.get("token_type") or "Bearer", "expires_at": iso(conn.expires_at)}

    def _revoke(self, conn: Connection) -> None:
        try:
            sealed = self.vault.open(conn.connection_id, conn.credentials)
        except BrokerError as exc:
            logger.warning("revocation failed; deleting anyway",
                           extra={"connection_id": conn.connection_id, "error": exc.code})
            return
        self._revoke_token_set(conn.connection_id, sealed)

    def _revoke_token_set(self, connection_id: str, sealed: dict[str, Any]) -> None:
        token, hint = ((sealed["refresh_token"], "refresh_token") if sealed.get("refresh_token")
                       else (sealed["access_token"], "access_token"))
        try:
            self.credentials.call(lambda creds: self.provider.revoke(creds, token, hint))
            count("ConnectionsRevoked")
        except BrokerError as exc:
            # Deleting is what the SaaS asked for; a provider that cannot revoke must not block it.
            if getattr(exc, "oauth_error", None) == "invalid_client":
                count("ClientRejected")
            logger.warning("revocation failed; deleting anyway",
                           extra={"connection_id": connection_id, "error": exc.code})
