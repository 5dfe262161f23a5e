"""TokenService: hand out valid access tokens, refresh them, report and delete connections.

A refresh takes a lease on the connection item first, so only one refresher at a time
reaches the provider; the new token set is written conditionally on the version it read
and on still holding the lease, so a stale writer never overwrites newer credentials.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .client_credentials import ClientCredentialSource
from .config import Settings
from .connections import ACTIVE, Connection, ConnectionStore, StaleWrite
from .errors import BrokerError, Conflict, NotFound, ProviderRejected, VaultUnavailable
from .observability import count, logger
from .provider import ProviderClient, TokenSet
from .vault import TokenVault

REFRESHED, NOT_DUE, IN_PROGRESS, NEEDS_REAUTH, FAILED = "refreshed", "not_due", "in_progress", "needs_reauth", "failed"


def iso(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")



def expiry_and_due(expires_in: int | None, can_refresh: bool, now: int, lead: int) -> tuple[int | None, int | None]:
    """When the access token expires, and when the background refresh should renew it."""
    if expires_in is None:
        return None, None
    expires_at = now + expires_in
    if not can_refresh:
        return expires_at, None
    # Never due before half the lifetime has passed, so short-lived tokens don't churn.
    return expires_at, max(now + expires_in // 2, expires_at - lead)


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


class TokenService:
    def __init__(self, settings: Settings, *, connections: ConnectionStore, vault: TokenVault,
                 provider: ProviderClient, credentials: ClientCredentialSource,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.connections = connections
        self.vault = vault
        self.provider = provider
        self.credentials = credentials
        self.clock = clock
        self.sleep = sleep

    def _now(self) -> int:
        return int(self.clock())

    # -- routes ------------------------------------------------------------------------------

    def status(self, connection_id: str) -> dict[str, Any]:
        conn = self._get(connection_id)
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
            "last_error": {**conn.last_error, "at": iso(int(conn.last_error["at"]))} if conn.last_error else None,
        }

    def access_token(self, connection_id: str) -> dict[str, Any]:
        """A token valid for at least the skew; refreshed first when it is not."""
        conn = self._active(connection_id)
        if conn.expires_at is None or conn.expires_at - self.settings.token_skew_seconds > self._now():
            return self._token_answer(conn, self.vault.open(connection_id, conn.credentials))
        return self._refresh(conn, wait_for_winner=True)

    def force_refresh(self, connection_id: str) -> dict[str, Any]:
        return self._refresh(self._active(connection_id), wait_for_winner=True)

    def refresh_if_due(self, connection_id: str) -> str:
        """The scheduled path: refresh a connection the due index listed, if it still is due."""
        conn = self.connections.get(connection_id)
        if (conn is None or conn.status != ACTIVE or conn.refresh_due_at is None
                or conn.refresh_due_at > self._now()):
            return NOT_DUE  # the index is eventually consistent: it may lag a write
        try:
            answer = self._refresh(conn, wait_for_winner=False)
        except BrokerError as exc:
            return NEEDS_REAUTH if exc.code == "needs_reauth" else FAILED
        return REFRESHED if answer else IN_PROGRESS

    def delete(self, connection_id: str) -> None:
        conn = self._get(connection_id)
        if self.settings.provider.revocation_url and conn.credentials:
            self._revoke(conn)
        if self.connections.delete(connection_id):
            count("ConnectionsDeleted")
            logger.info("connection deleted", extra={"connection_id": connection_id})

    # -- refresh -----------------------------------------------------------------------------

    def _refresh(self, conn: Connection, *, wait_for_winner: bool) -> dict[str, Any] | None:
        owner = uuid.uuid4().hex
        if not self.connections.acquire_lease(conn, owner=owner, now=self._now(),
                                              seconds=self.settings.lease_seconds):
            return self._await_winner(conn) if wait_for_winner else None
        try:
            current = self.vault.open(conn.connection_id, conn.credentials)
            if not current.get("refresh_token"):
                raise Conflict("this connection has no refresh token; reconnect it", code="not_refreshable")
            tokens = self._call_refresh(current["refresh_token"])
        except ProviderRejected as exc:
            count("RefreshFailed")
            if exc.oauth_error == "invalid_grant":
                return self._needs_reauth(conn, exc)
            self.connections.release_lease(conn, owner=owner, error=error_record(exc, self._now()))
            raise
        except BrokerError as exc:
            count("RefreshFailed")
            self.connections.release_lease(conn, owner=owner, error=error_record(exc, self._now()))
            raise
        sealed = sealed_fields(tokens, current)
        expires_at = self._persist(conn, owner, tokens, sealed)
        count("RefreshSucceeded")
        logger.info("token refreshed", extra={"connection_id": conn.connection_id})
        return {"connection_id": conn.connection_id, "access_token": sealed["access_token"],
                "token_type": sealed["token_type"], "expires_at": iso(expires_at)}

    def _call_refresh(self, refresh_token: str) -> TokenSet:
        try:
            return self.provider.refresh(self.credentials.get(), refresh_token)
        except ProviderRejected as exc:
            if exc.oauth_error != "invalid_client":
                raise
            # The secret may have been rotated since it was cached: fetch it once more.
            return self.provider.refresh(self.credentials.get(force_fetch=True), refresh_token)

    def _persist(self, conn: Connection, owner: str, tokens: TokenSet, sealed: dict[str, Any]) -> int | None:
        """Store the new token set before anyone hears of it. The provider may already have
        retired the old refresh token, so a passing KMS or DynamoDB fault is retried."""
        now = self._now()
        expires_at, due = expiry_and_due(tokens.expires_in, bool(sealed["refresh_token"]), now,
                                         self.settings.refresh_lead_seconds)
        for attempt in range(3):
            try:
                self.connections.save_refreshed(
                    conn, owner=owner, credentials=self.vault.seal(conn.connection_id, sealed),
                    expires_at=expires_at, refresh_due_at=due, now=now)
                return expires_at
            except StaleWrite:
                raise Conflict("the connection changed during the refresh; try again",
                               code="refresh_conflict") from None
            except (VaultUnavailable, ClientError, BotoCoreError):
                # KMS or DynamoDB (botocore has already retried throttles): try the write again.
                if attempt == 2:
                    raise
            self.sleep(0.1 * 2 ** attempt)
        return expires_at  # unreachable: the loop returns or raises

    def _needs_reauth(self, conn: Connection, exc: ProviderRejected) -> None:
        try:
            self.connections.mark_needs_reauth(conn, error=error_record(exc, self._now()), now=self._now())
            count("NeedsReauth")
            logger.warning("connection needs re-authorization", extra={"connection_id": conn.connection_id})
        except StaleWrite:
            pass  # someone re-connected meanwhile: their credentials stand
        raise Conflict("the provider revoked this connection's grant; reconnect it", code="needs_reauth")

    def _await_winner(self, conn: Connection) -> dict[str, Any]:
        """Another caller holds the lease: wait briefly for the token it stores."""
        for attempt in range(10):
            self.sleep(min(0.1 * 2 ** attempt, 1.0))
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
            token, hint = ((sealed["refresh_token"], "refresh_token") if sealed.get("refresh_token")
                           else (sealed["access_token"], "access_token"))
            self.provider.revoke(self.credentials.get(), token, hint)
            count("ConnectionsRevoked")
        except BrokerError as exc:
            # Deleting is what the SaaS asked for; a provider that cannot revoke must not block it.
            logger.warning("revocation failed; deleting anyway",
                           extra={"connection_id": conn.connection_id, "error": exc.code})
