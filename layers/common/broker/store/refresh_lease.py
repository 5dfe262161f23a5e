"""RefreshLease: a renewal's writes on a connection item. A refresh (or key check) holds a
lease (owner + expiry) on the item so one at a time reaches the provider; its outcome (new
credentials, a failure and its cooldown, needs_reauth) is written under that lease or on the
version it read, so a stale writer never overwrites a newer token."""

from __future__ import annotations

import contextlib
from typing import Any

from broker.store.items import NEEDS_REAUTH, Connection, due_shard
from broker.store.table import ConnectionTable, StaleWrite


class RefreshLease(ConnectionTable):
    def acquire_lease(self, connection: Connection, *, owner: str, now: int, seconds: int) -> bool:
        try:
            self._update(
                connection.connection_id,
                sets={"lease_owner": owner, "lease_until": now + seconds},
                condition="version = :version AND (attribute_not_exists(lease_until) OR lease_until < :now)",
                extra_values={":version": connection.version, ":now": now},
            )
        except StaleWrite:
            return False
        return True

    def save_refreshed(self, connection: Connection, *, owner: str, credentials: bytes | None,
                       expires_at: int | None, refresh_due_at: int | None, now: int,
                       extra: dict[str, Any] | None = None) -> None:
        """A renewal under the lease: new credentials (a refresh) or None (a check that kept
        the stored key), plus what it observed (quota, check time)."""
        sets = {"last_refreshed_at": now, "updated_at": now, **(extra or {})}
        if credentials is not None:
            sets["credentials"] = credentials
        self._update(
            connection.connection_id,
            sets=sets,
            due=(expires_at, refresh_due_at),
            extra_set="version = version + :one",
            remove=["lease_owner", "lease_until", "last_error", "failure_count", "first_failed_at"],
            condition="version = :version AND lease_owner = :owner",
            extra_values={":version": connection.version, ":owner": owner, ":one": 1},
        )

    def reschedule(self, connection: Connection, *, refresh_due_at: int, now: int) -> None:
        """Move the next refresh or check without renewing (an API-key check postponed)."""
        self._update(
            connection.connection_id, sets={"updated_at": now}, due=(connection.expires_at, refresh_due_at),
            condition="version = :version AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            extra_values={":version": connection.version, ":now": now},
        )

    def mark_needs_reauth(self, connection: Connection, *, error: dict[str, Any], now: int) -> None:
        # Out of the due index: there is nothing left to refresh with.
        self._update(
            connection.connection_id,
            sets={"status": NEEDS_REAUTH, "last_error": error, "updated_at": now},
            extra_set="version = version + :one",
            remove=["lease_owner", "lease_until", "due_shard", "refresh_due_at"],
            condition="version = :version",
            extra_values={":version": connection.version, ":one": 1},
        )

    def record_failure(self, connection: Connection, *, owner: str, error: dict[str, Any], retry_at: int,
                       now: int, extra: dict[str, Any] | None = None) -> None:
        """A failed refresh: count it, and move the due time out (the cooldown) so a broken
        connection is not retried on every scheduled run."""
        with contextlib.suppress(StaleWrite):  # lease lost: the new holder's outcome stands
            self._update(
                connection.connection_id,
                sets={"last_error": error, "failure_count": connection.failure_count + 1,
                      "first_failed_at": connection.first_failed_at or now, "refresh_due_at": retry_at,
                      "due_shard": due_shard(connection.connection_id, self._shards), "updated_at": now,
                      **(extra or {})},
                remove=["lease_owner", "lease_until"],
                condition="lease_owner = :owner",
                extra_values={":owner": owner},
            )

    def record_deployment_fault(self, connection: Connection, *, owner: str, error: dict[str, Any],
                                retry_at: int, now: int) -> None:
        """A refresh that failed for the deployment's sake (the provider refused our client):
        cool down and release the lease, but leave the failure streak alone, so it never
        counts toward ReauthAfterFailingDays."""
        with contextlib.suppress(StaleWrite):
            self._update(
                connection.connection_id,
                sets={"last_error": error, "refresh_due_at": retry_at,
                      "due_shard": due_shard(connection.connection_id, self._shards), "updated_at": now},
                remove=["lease_owner", "lease_until"],
                condition="lease_owner = :owner",
                extra_values={":owner": owner},
            )

    def release_lease(self, connection: Connection, *, owner: str, error: dict[str, Any]) -> None:
        # If the lease expired and someone else holds it now, it is theirs to release.
        with contextlib.suppress(StaleWrite):
            self._update(
                connection.connection_id,
                sets={"last_error": error},
                remove=["lease_owner", "lease_until"],
                condition="lease_owner = :owner",
                extra_values={":owner": owner},
            )
