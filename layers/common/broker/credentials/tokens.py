"""TokenService: hand out valid access tokens, refresh them, report and delete connections.

A refresh takes a lease on the connection item first, so only one refresher at a time
reaches the provider; the new token set is written conditionally on the version it read
and on still holding the lease, so a stale writer never overwrites newer credentials.

The service decides when a credential is renewed and who waits for whom; it leaves to its
parts how a credential is sealed, stored and handed out (stored.StoredCredentials), what a
failed renewal leaves on the connection (refresh_failures.RefreshFailures) and what a renewal
saw of the Insightly quota (renewal_quota.RenewalQuota).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from broker.credentials.client_credentials import ClientCredentialSource
from broker.credentials.insightly import InsightlyApi
from broker.credentials.kinds import API_KEY, OAUTH2, CredentialKind
from broker.credentials.kinds.api_key import ApiKeyKind
from broker.credentials.kinds.oauth2 import OAuth2Kind, backoff, expiry_and_due, sealed_fields  # noqa: F401 - part of this module's API
from broker.credentials.provider import ProviderClient
from broker.credentials.refresh_failures import RefreshFailures, error_record
from broker.credentials.renewal_quota import RenewalQuota
from broker.credentials.stored import StoredCredentials
from broker.credentials.vault import TokenVault
from broker.platform import aws, deadline
from broker.platform.config import Settings
from broker.platform.errors import (
    BrokerError,
    Conflict,
    CredentialsUnreadable,
    NewerSchemaVersion,
    NotFound,
    ProviderRejected,
)
from broker.platform.lifecycle import DELETED, RECOVERED, LifecycleEvents
from broker.platform.observability import count, logger, metrics
from broker.store.connections import ACTIVE, Connection, ConnectionStore, StaleWrite
from broker.store.listing import connection_status
from broker.store.quota import QuotaRecord
from broker.store.quota_guard import QuotaGroups

REFRESHED, NOT_DUE, IN_PROGRESS, NEEDS_REAUTH, FAILED = "refreshed", "not_due", "in_progress", "needs_reauth", "failed"
DEFERRED = "deferred"  # not tried: too little of the invocation left to finish a refresh
POSTPONED = "postponed"  # an API-key check not worth a request of the daily quota now
NEWER_SCHEMA = "newer_schema"  # stored by a newer broker (rolled back): left for that version
# Time kept for storing the new token set: the KMS call, then the DynamoDB write, which
# platform.aws refuses to start with less than one whole attempt left.
PERSIST_SECONDS = aws.ATTEMPT_SECONDS + 0.5


class TokenService:
    def __init__(self, settings: Settings, *, connections: ConnectionStore, vault: TokenVault,
                 provider: ProviderClient, credentials: ClientCredentialSource,
                 events: LifecycleEvents | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float, float], float] = random.uniform, insightly: InsightlyApi | None = None):
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
        self.quota = RenewalQuota(settings, connections=connections, emit=self.emit)
        # Reads self.jitter at each call, as the kinds read self.sleep: a test's fake reaches it.
        self.failures = RefreshFailures(settings, connections=connections, quota=self.quota, emit=self.emit,
                                        events=events, jitter=lambda low, high: self.jitter(low, high))
        # One instance per credential kind, chosen by each connection's auth_mode. The kinds
        # and the stored credentials sleep through self.sleep, so a test's fake sleep reaches them.
        self.kinds: dict[str, CredentialKind] = {
            OAUTH2: OAuth2Kind(settings, provider=provider, credentials=credentials, clock=clock,
                               sleep=lambda seconds: self.sleep(seconds), jitter=jitter),
            API_KEY: ApiKeyKind(settings, api=insightly or InsightlyApi(
                timeout=(settings.http_connect_timeout, settings.http_read_timeout), clock=clock), clock=clock),
        }
        self.stored = StoredCredentials(settings, connections=connections, vault=vault, kinds=self.kinds,
                                        quota=self.quota, sleep=lambda seconds: self.sleep(seconds))

    def _now(self) -> int:
        return int(self.clock())

    # -- routes ------------------------------------------------------------------------------

    def status(self, connection_id: str) -> dict[str, Any]:
        conn, record = self.connections.get_with_quota(connection_id)
        if conn is None:
            raise NotFound("no such connection", code="connection_not_found")
        return self.status_of(conn, record)

    def status_of(self, conn: Connection, record: QuotaRecord | None = None) -> dict[str, Any]:
        """The status JSON of a connection already read; a grouped one's record is read here."""
        if record is None:
            record = self.quota_groups().record_of(conn)
        return connection_status(conn, record, reserve_percent=self.settings.background_quota_reserve_percent,
                                 now=self._now())

    def quota_groups(self, *, backoff_seconds: int | None = None) -> QuotaGroups:
        """The quota guard over shared records; its QuotaLow/QuotaExhausted events name the group."""
        return self.quota.groups(backoff_seconds=backoff_seconds)

    def access_token(self, connection_id: str) -> dict[str, Any]:
        """A credential that works now: an access token valid for at least the skew (refreshed
        first when it is not), or the API key; either way with the whole Authorization header."""
        return self.answer_for(self._active(connection_id))

    def answer_for(self, conn: Connection) -> dict[str, Any]:
        """/token's answer for a connection already read (and active): the proxy reads the
        item once for its quota guard and the credential alike."""
        connection_id = conn.connection_id
        if self.stored.kind(conn).fresh(conn, self._now()):
            return self.stored.current_answer(conn)
        with self._single_flight(connection_id) as waited:
            if waited:  # another request in this container just refreshed it, most likely
                conn = self._active(connection_id)
                if self.stored.kind(conn).fresh(conn, self._now()):
                    return self.stored.current_answer(conn)
            return self._refresh(conn, wait_for_winner=True)

    def force_refresh(self, connection_id: str) -> dict[str, Any]:
        """oauth2: refresh now; api_key: check the key with Users/Me now."""
        with self._single_flight(connection_id):
            return self._refresh(self._active(connection_id), wait_for_winner=True)

    def time_to_refresh(self) -> float:
        """What a refresh needs of the invocation: a provider call with its timeouts and the write."""
        return self.settings.http_connect_timeout + self.settings.http_read_timeout + PERSIST_SECONDS

    def refresh_if_due(self, connection_id: str) -> str:
        """The background path: refresh (or check) a connection the due index listed, if it
        still is due. Duplicate and late queue messages end here as not_due. With too little
        time left it does not start (deferred): nothing is recorded, the message goes back."""
        if deadline.seconds_left() < self.time_to_refresh():
            return DEFERRED
        try:
            conn = self.connections.get(connection_id)
        except NewerSchemaVersion:
            # Not a fault to retry: the message is done and the item stays as it is.
            logger.warning("refresh skipped: the connection was stored by a newer broker version",
                           extra={"connection_id": connection_id})
            return NEWER_SCHEMA
        now = self._now()
        if (conn is None or conn.status != ACTIVE or conn.refresh_due_at is None
                or conn.refresh_due_at > now):
            return NOT_DUE
        kind = self.stored.kind(conn)
        # A key check spends a request of the group's quota, as background work: it waits while
        # the quota is used up or in the reserve.
        record = self.quota_groups().record_of(conn) if kind.spends_quota else QuotaRecord.of_connection(conn)
        later = kind.postponed_until(conn, now, record)
        if later is not None:
            with contextlib.suppress(StaleWrite):  # changed meanwhile: its new due time stands
                self.connections.reschedule(conn, refresh_due_at=later, now=now)
            count("CheckPostponed")
            return POSTPONED
        try:
            answer = self._refresh(conn, wait_for_winner=False, record=record)
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
            self.stored.revoke(conn)
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
                self.emit(DELETED, conn, status="deleted", reason="deleted_by_backend")
                logger.info("connection deleted", extra={"connection_id": connection_id})
            return
        raise Conflict("the connection kept changing during the delete; try again", code="refresh_conflict")

    # -- refresh -----------------------------------------------------------------------------

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

    def _refresh(self, conn: Connection, *, wait_for_winner: bool,
                 record: QuotaRecord | None = None) -> dict[str, Any] | None:
        started = time.monotonic()
        owner = uuid.uuid4().hex
        kind = self.stored.kind(conn)
        if not self.connections.acquire_lease(conn, owner=owner, now=self._now(),
                                              seconds=self.settings.lease_seconds):
            count("RefreshLostRace")
            return self._await_winner(conn) if wait_for_winner else None
        # Renew only while the lease and the invocation outlast the call and the write after
        # it: the lease keeps a second refresher off the same refresh token, and the
        # invocation's end would cut the write of a token the provider has already rotated.
        end = min(started + self.settings.lease_seconds, time.monotonic() + deadline.seconds_left()) - PERSIST_SECONDS
        try:
            current = self.stored.open(conn)
            renewal = kind.renew(conn, current, end=end)
        except CredentialsUnreadable as exc:
            # Not the provider's fault and not transient: leave the item as it is.
            self.connections.release_lease(conn, owner=owner, error=error_record(exc, self._now()))
            raise
        except BrokerError as exc:
            reason = kind.rejected_reason(exc)
            if reason is not None:
                return self._terminal(conn, exc, reason)
            if isinstance(exc, ProviderRejected) and exc.oauth_error == "invalid_client":
                # still refused with a freshly fetched secret
                self.failures.client_rejected(conn, owner, now=self._now())
            self.failures.transient(conn, owner, exc, kind=kind, record=record, now=self._now())
            raise
        sealed = renewal.sealed or current
        self.stored.save_renewal(conn, owner, renewal, record, now=self._now())
        count("RefreshSucceeded")
        metrics.add_metric(name="RefreshLatency", unit=MetricUnit.Milliseconds,
                           value=(time.monotonic() - started) * 1000)
        if conn.failure_count:
            count("RefreshRecovered")
            self.emit(RECOVERED, conn, status=ACTIVE, reason=(conn.last_error or {}).get("code"))
        logger.info("credential renewed", extra={"connection_id": conn.connection_id, "auth_mode": kind.auth_mode})
        return self.stored.answer(dataclasses.replace(conn, expires_at=renewal.expires_at), sealed)

    def _terminal(self, conn: Connection, exc: BrokerError, reason: str) -> dict[str, Any]:
        """The provider no longer accepts this connection's credential (invalid_grant, no
        refresh token, a rejected API key)."""
        # A newer credential stored meanwhile (another refresher, a re-connect) means this
        # caller lost a race with one that was already replaced: not a dead connection.
        latest = self.connections.get(conn.connection_id)
        if latest is not None and latest.version != conn.version:
            count("RefreshLostRace")
            if latest.status == ACTIVE and latest.credentials:
                return self.stored.current_answer(latest)
            raise Conflict("this connection needs to be re-authorized", code="needs_reauth")
        self.failures.needs_reauth(conn, reason, exc, now=self._now())

    def emit(self, detail_type: str, conn: Connection, *, status: str, reason: str | None) -> None:
        if self.events is not None:
            self.events.emit(detail_type, connection_id=conn.connection_id, status=status, reason=reason,
                             at=self._now(), tags=conn.tags, quota_group=conn.quota_group)

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
                return self.stored.current_answer(latest)
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
