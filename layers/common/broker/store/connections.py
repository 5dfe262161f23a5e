"""ConnectionStore: connection items in DynamoDB, versioned for optimistic locking.

Every write that follows a read is conditional on the version read, so a stale writer can
never overwrite newer credentials. A refresh holds a lease (owner + expiry) on the item so
one refresh at a time reaches the provider.

The store is built from parts, one responsibility each, over one table (table.py):
the item codec (items.py), the refresh lease and its outcomes (refresh_lease.py), the quota
records (quota_records.py) and the index queries (indexes.py). This class adds what a
connection's own life writes: connect, labels, delete, and the deployment's signal markers.
The parts' names stay importable from here.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from broker.store import schema
from broker.store.indexes import DUE_INDEX, ConnectionIndexes
from broker.store.items import (
    ACTIVE,
    LISTED_ATTRIBUTES,
    NEEDS_REAUTH,
    Connection,
    NewCredentials,
    as_written,
    due_shard,
    key,
    to_ddb,
)
from broker.store.quota_records import QuotaRecords
from broker.store.refresh_lease import RefreshLease
from broker.store.table import StaleWrite

__all__ = ["ACTIVE", "CLIENT_REJECTED_MARKER", "DUE_INDEX", "LISTED_ATTRIBUTES", "NEEDS_REAUTH", "Connection",
           "ConnectionStore", "NewCredentials", "StaleWrite", "due_shard"]

# Deployment-wide markers share the table. "#" is outside the connection_id pattern, so no
# request can name one, and they carry no due_shard, so the scheduler's index never lists one.
CLIENT_REJECTED_MARKER = "#deployment:client-rejected"


class ConnectionStore(ConnectionIndexes, QuotaRecords, RefreshLease):
    def __init__(self, dynamodb, table: str, *, shards: int, list_tag_key: str = ""):
        super().__init__(dynamodb, table, shards=shards)
        self._list_tag_key = list_tag_key

    def _list_tag(self, sets: dict[str, Any], remove: list[str], tags: dict[str, str]) -> None:
        """Keep list_tag (the tag-index's sparse key) in step with tags[ListTagKey]."""
        if self._list_tag_key and tags.get(self._list_tag_key):
            sets["list_tag"] = tags[self._list_tag_key]
        else:
            remove.append("list_tag")

    def save_connected(self, new: NewCredentials, *, now: int) -> tuple[Connection, Connection | None]:
        """Create or re-connect: new credentials (of either kind) replace old ones and the
        version moves on, which fences out any refresh that was in flight for the old ones.
        Answers the connection as stored and the one it replaced (None for a new one), so a
        replaced OAuth grant can be revoked."""
        sets = {
            "status": ACTIVE, "auth_mode": new.auth_mode, "credentials": new.credentials,
            "provider_user": new.provider_user, "scopes": new.scopes, "connected_at": now, "updated_at": now,
        }
        kind_fields = {"pod": new.pod, "api_base_url": new.api_base_url, "rate_limit": new.rate_limit,
                       "last_checked_at": new.checked_at}
        sets.update({k: v for k, v in kind_fields.items() if v is not None})
        remove = ["lease_owner", "lease_until", "last_error", "last_refreshed_at", "failure_count",
                  "first_failed_at", "quota_alert", "last_used_at", "throttled_until",
                  *(k for k, v in kind_fields.items() if v is None)]
        if new.tags is not None:
            sets["tags"] = new.tags
            self._list_tag(sets, remove, new.tags)
        if new.quota_group is not None:
            sets["quota_group"] = new.quota_group
        answer = self._update(
            new.connection_id, sets=sets, due=(new.expires_at, new.refresh_due_at),
            extra_set="version = if_not_exists(version, :zero) + :one, created_at = if_not_exists(created_at, :now)",
            extra_values={":zero": 0, ":one": 1, ":now": now}, remove=remove, return_old=True,
        )
        old = answer.get("Attributes")
        item = as_written(old, new, sets=sets, remove=remove, now=now)
        return Connection.from_item(item), (Connection.from_item(old) if old else None)

    def save_labels(self, connection_id: str, *, tags: dict[str, str] | None, metadata: str | None,
                    now: int, quota_group: Any = ...) -> Connection | None:
        """Set tags, metadata and/or the quota group of an existing connection (None, or ... for
        the group, leaves one as it is; a group of None leaves the group). No version bump:
        labels never race a credential write. None when there is no connection."""
        sets: dict[str, Any] = {"updated_at": now}
        remove: list[str] = []
        if tags is not None:
            sets["tags"] = tags
            self._list_tag(sets, remove, tags)
        if metadata is not None:
            sets["metadata"] = metadata
        if quota_group is None:
            remove.append("quota_group")
        elif quota_group is not ...:
            sets["quota_group"] = quota_group
        try:
            answer = self._update(connection_id, sets=sets, remove=remove,
                                  condition="attribute_exists(connection_id)", return_new=True)
        except StaleWrite:
            return None
        return Connection.from_item(answer["Attributes"])

    def claim_signal(self, marker: str, *, now: int, interval: int) -> bool:
        """True for one caller per `interval` seconds across all containers: a conditional
        write on a marker item decides who emits a deployment-level signal."""
        try:
            self._db.update_item(
                TableName=self._table, Key=key(marker),
                UpdateExpression="SET last_signal_at = :now",
                ConditionExpression="attribute_not_exists(last_signal_at) OR last_signal_at < :cutoff",
                ExpressionAttributeValues=to_ddb({":now": now, ":cutoff": now - interval}))
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def delete(self, connection_id: str, *, version: int | None = None) -> bool:
        """False when there was nothing to delete. With `version`, raises StaleWrite when the
        item changed since it was read (a refresh stored a newer token set meanwhile)."""
        kwargs: dict[str, Any] = {"ConditionExpression": f"attribute_exists(connection_id) AND {schema.NOT_NEWER}",
                                  "ExpressionAttributeValues": schema.NOT_NEWER_VALUES}
        if version is not None:
            kwargs = {"ConditionExpression": f"version = :version AND {schema.NOT_NEWER}",
                      "ExpressionAttributeValues": {**to_ddb({":version": version}), **schema.NOT_NEWER_VALUES}}
        try:
            self._db.delete_item(TableName=self._table, Key=key(connection_id),
                                 ReturnValuesOnConditionCheckFailure="ALL_OLD", **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            schema.check(exc.response.get("Item") or {}, "connection")
            if version is not None and self.get(connection_id) is not None:
                raise StaleWrite(connection_id) from None
            return False
        return True
