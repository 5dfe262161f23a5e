"""StoredCredentials: each connection's credential as the broker keeps it.

The kind chosen by the item's auth_mode says how its credential is sealed in the vault (the
purpose and the item's attributes the seal binds), handed out (/token's answer) and given up
at the provider. A renewal is sealed and written under the refresh lease before anyone hears
of it, and a credential that nobody holds any more is revoked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.credentials.insightly import authorization_header
from broker.credentials.kinds import OAUTH2, CredentialKind, Renewal
from broker.credentials.renewal_quota import RenewalQuota
from broker.credentials.vault import TokenVault
from broker.platform.config import Settings
from broker.platform.errors import BrokerError, Conflict, NotFound, VaultUnavailable
from broker.platform.observability import count, logger
from broker.store.connections import Connection, ConnectionStore, StaleWrite
from broker.store.listing import iso
from broker.store.quota import QuotaRecord


class StoredCredentials:
    def __init__(self, settings: Settings, *, connections: ConnectionStore, vault: TokenVault,
                 kinds: dict[str, CredentialKind], quota: RenewalQuota, sleep: Callable[[float], None]):
        self.settings = settings
        self.connections = connections
        self.vault = vault
        self.kinds = kinds  # one instance per credential kind, by auth_mode
        self.quota = quota
        self.sleep = sleep

    def kind(self, conn: Connection) -> CredentialKind:
        return self.kinds[conn.auth_mode]

    def open(self, conn: Connection) -> dict[str, Any]:
        kind = self.kind(conn)
        return self.vault.open(conn.connection_id, conn.credentials, purpose=kind.purpose, bound=kind.bound(conn))

    def answer(self, conn: Connection, sealed: dict[str, Any]) -> dict[str, Any]:
        """/token's answer: one shape for both kinds, so a backend calls Insightly with one code path."""
        kind = self.kind(conn)
        return {"connection_id": conn.connection_id, "auth_mode": conn.auth_mode,
                "api_base_url": kind.api_base_url(conn),  # derived now, never the stored copy
                "authorization": authorization_header(kind.authorization(sealed)),
                "expires_at": iso(conn.expires_at), **kind.token_answer(conn, sealed)}

    def current_answer(self, conn: Connection) -> dict[str, Any]:
        """/token's answer with the credential stored on the item as read."""
        return self.answer(conn, self.open(conn))

    def save_renewal(self, conn: Connection, owner: str, renewal: Renewal, record: QuotaRecord | None, *,
                     now: int) -> None:
        """Store the renewal before anyone hears of it. The provider may already have retired
        the old refresh token, so a passing KMS or DynamoDB fault is retried. The quota it
        showed goes with it on the connection's own item, or to its group's record."""
        kind = self.kind(conn)
        extra, event = self.quota.on_item(conn, renewal.rate_limit)
        if renewal.checked_at is not None:
            extra["last_checked_at"] = renewal.checked_at
        for attempt in range(3):
            try:
                credentials = (self.vault.seal(conn.connection_id, renewal.sealed, purpose=kind.purpose,
                                               bound=kind.bound(conn))
                               if renewal.sealed is not None else None)
                self.connections.save_refreshed(
                    conn, owner=owner, credentials=credentials, expires_at=renewal.expires_at,
                    refresh_due_at=renewal.next_due_at, now=now, extra=extra)
                break
            except StaleWrite:
                self._lost_write(conn, kind, renewal)
            except (VaultUnavailable, ClientError, BotoCoreError):
                # KMS or DynamoDB (botocore has already retried throttles): try the write again.
                if attempt == 2:
                    logger.error("refreshed token set not stored", extra={"connection_id": conn.connection_id})
                    count("RefreshNotStored")
                    raise
            self.sleep(0.1 * 2 ** attempt)
        self.quota.after_write(conn, record, event, rate=renewal.rate_limit, status=200, retry_after=None, now=now)

    def _lost_write(self, conn: Connection, kind: CredentialKind, renewal: Renewal) -> None:
        """The item changed under the lease: deleted (the new credential is revoked), or
        changed by another writer (a conflict, retried by the caller)."""
        if self.connections.get(conn.connection_id) is None:
            # Deleted while the provider answered: the credential just received must
            # not stay live at the provider with nobody holding it.
            logger.warning("connection deleted during its refresh; revoking the new token set",
                           extra={"connection_id": conn.connection_id})
            if renewal.sealed is not None:
                kind.revoke(conn, renewal.sealed)
            raise NotFound("the connection was deleted during the refresh",
                           code="connection_not_found") from None
        raise Conflict("the connection changed during the refresh; try again",
                       code="refresh_conflict") from None

    def revoke(self, conn: Connection) -> None:
        """Give the stored credential up at the provider before its connection is deleted,
        where that gives something up (an OAuth token set, with a revocation endpoint).
        Best effort: a credential that cannot be opened is deleted anyway."""
        if not conn.credentials or not (conn.auth_mode == OAUTH2 and self.settings.provider.revocation_url):
            return
        try:
            sealed = self.open(conn)
        except BrokerError as exc:
            logger.warning("revocation failed; deleting anyway",
                           extra={"connection_id": conn.connection_id, "error": exc.code})
            return
        self.kind(conn).revoke(conn, sealed)
