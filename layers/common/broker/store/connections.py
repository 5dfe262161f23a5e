"""ConnectionStore: connection items in DynamoDB, versioned for optimistic locking.

Every write that follows a read is conditional on the version read, so a stale writer can
never overwrite newer credentials. A refresh holds a lease (owner + expiry) on the item so
one refresh at a time reaches the provider.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from broker.platform import deadline
from broker.platform.errors import BrokerError
from broker.platform.observability import logger
from broker.store import schema
from broker.store.quota import ALERT_RANK, QuotaRecord, RateLimit, group_key

DUE_INDEX = "due-index"
ACTIVE, NEEDS_REAUTH = "active", "needs_reauth"
# What a listing page reads of each item: the status JSON's attributes, never credentials.
LISTED_ATTRIBUTES = ("connection_id", "status", "auth_mode", "created_at", "provider_user", "scopes", "expires_at",
                     "last_refreshed_at", "refresh_due_at", "connected_at", "first_failed_at", "last_error", "pod",
                     "api_base_url", "last_checked_at", "tags", "metadata", "rate_limit",
                     "quota_group", "throttled_until",  # the quota the status JSON shows
                     "list_tag",  # the tag-index key: to see an item is still where the index put it
                     "schema_version")  # a newer item is left out of the page, not misread
BATCH_GET_ATTEMPTS = 5
# Connections whose quota group this container has seen, so the proxy reads the connection
# and its group's record in one BatchGetItem (bounded: a container serves many connections).
GROUP_HINTS = 10_000
# Deployment-wide markers share the table. "#" is outside the connection_id pattern, so no
# request can name one, and they carry no due_shard, so the scheduler's index never lists one.
CLIENT_REJECTED_MARKER = "#deployment:client-rejected"

_ser, _de = TypeSerializer(), TypeDeserializer()


def _to_ddb(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in values.items()}


class StaleWrite(Exception):
    """The item changed since it was read (or the lease was lost): nothing was written."""


@dataclass(frozen=True, eq=False)  # as Connection
class NewCredentials:
    """What a successful connect obtained, sealed for the connection: linked at once, or kept
    as a pending completion until the SaaS backend confirms its session (session binding)."""

    connection_id: str
    credentials: bytes = field(repr=False)  # sealed for connection_id, as the connection stores it
    expires_at: int | None = None  # of the access token (oauth2)
    refresh_due_at: int | None = None  # next refresh (oauth2) or key check (api_key)
    provider_user: dict[str, Any] = field(default_factory=dict)
    scopes: str = ""
    auth_mode: str = "oauth2"
    pod: str | None = None  # api_key: the account's pod, and the base URL rebuilt from it
    api_base_url: str | None = None
    rate_limit: dict[str, int] | None = None  # {limit, remaining, observed_at} when Insightly sent them
    checked_at: int | None = None  # api_key: when Users/Me last accepted the key
    tags: dict[str, str] | None = None  # None: a re-connect keeps the connection's tags
    quota_group: str | None = None  # None: a re-connect keeps the connection's group


# No generated __eq__ (nothing compares two): one exec() less at import, in every cold start.
@dataclass(eq=False)
class Connection:
    """One connections-table item, as the broker reads it."""

    connection_id: str
    status: str
    version: int
    auth_mode: str = "oauth2"
    credentials: bytes | None = field(default=None, repr=False)
    expires_at: int | None = None
    refresh_due_at: int | None = None
    lease_owner: str | None = None
    lease_until: int | None = None
    provider_user: dict[str, Any] = field(default_factory=dict)
    scopes: str = ""
    created_at: int | None = None
    connected_at: int | None = None
    last_refreshed_at: int | None = None
    last_error: dict[str, Any] | None = None
    failure_count: int = 0  # refresh failures in a row
    first_failed_at: int | None = None
    pod: str | None = None
    api_base_url: str | None = None
    rate_limit: dict[str, int] | None = None
    quota_alert: str | None = None  # "low" | "exhausted": the quota event already sent
    last_checked_at: int | None = None
    last_used_at: int | None = None  # the last call this credential made that Insightly accepted
    throttled_until: int | None = None  # the proxy answers 429 itself until then (daily quota)
    tags: dict[str, str] = field(default_factory=dict)
    metadata: str | None = None  # the SaaS's JSON object, as text
    quota_group: str | None = None  # shares its quota record with the group's other connections

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Connection:
        schema.check(item, "connection")
        data = {k: _de.deserialize(v) for k, v in item.items()}
        number = lambda name: int(data[name]) if data.get(name) is not None else None  # noqa: E731
        credentials = data.get("credentials")
        return cls(
            connection_id=data["connection_id"],
            status=data.get("status", ACTIVE),
            version=int(data.get("version", 0)),
            auth_mode=data.get("auth_mode", "oauth2"),
            credentials=bytes(credentials) if credentials is not None else None,
            expires_at=number("expires_at"),
            refresh_due_at=number("refresh_due_at"),
            lease_owner=data.get("lease_owner"),
            lease_until=number("lease_until"),
            provider_user=dict(data.get("provider_user") or {}),
            scopes=data.get("scopes", ""),
            created_at=number("created_at"),
            connected_at=number("connected_at"),
            last_refreshed_at=number("last_refreshed_at"),
            last_error=dict(data["last_error"]) if data.get("last_error") else None,
            failure_count=number("failure_count") or 0,
            first_failed_at=number("first_failed_at"),
            pod=data.get("pod"),
            api_base_url=data.get("api_base_url"),
            rate_limit=({k: int(v) for k, v in data["rate_limit"].items() if v is not None}
                        if data.get("rate_limit") else None),
            quota_alert=data.get("quota_alert"),
            last_checked_at=number("last_checked_at"),
            last_used_at=number("last_used_at"),
            throttled_until=number("throttled_until"),
            tags=dict(data.get("tags") or {}),
            metadata=data.get("metadata"),
            quota_group=data.get("quota_group"),
        )

    @property
    def metadata_object(self) -> dict[str, Any] | None:
        return json.loads(self.metadata) if self.metadata else None


def _plain(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """A raw item as Python values (a quota record), after its schema version is checked."""
    if not item:
        return None
    schema.check(item, "quota record")
    return {k: _de.deserialize(v) for k, v in item.items()}


def due_shard(connection_id: str, shards: int) -> str:
    """A stable shard so the due-time index spreads over several partitions."""
    return str(int(hashlib.sha256(connection_id.encode()).hexdigest()[:8], 16) % shards)


class ConnectionStore:
    def __init__(self, dynamodb, table: str, *, shards: int, list_tag_key: str = ""):
        self._db = dynamodb
        self._table = table
        self._shards = shards
        self._list_tag_key = list_tag_key
        self._group_hints: dict[str, str] = {}  # connection_id -> quota group, as last read

    def _list_tag(self, sets: dict[str, Any], remove: list[str], tags: dict[str, str]) -> None:
        """Keep list_tag (the tag-index's sparse key) in step with tags[ListTagKey]."""
        if self._list_tag_key and tags.get(self._list_tag_key):
            sets["list_tag"] = tags[self._list_tag_key]
        else:
            remove.append("list_tag")

    def get(self, connection_id: str) -> Connection | None:
        answer = self._db.get_item(TableName=self._table, Key=self._key(connection_id), ConsistentRead=True)
        return Connection.from_item(answer["Item"]) if "Item" in answer else None

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
        # The item as written, from the one it replaced: one call instead of a write and a read.
        item = {k: v for k, v in (old or {}).items() if k not in remove and k not in ("expires_at", "refresh_due_at",
                                                                                     "due_shard")}
        item.update(_to_ddb({**sets, "connection_id": new.connection_id,
                             "version": (int(old["version"]["N"]) if old else 0) + 1,
                             "created_at": int(old["created_at"]["N"]) if old and "created_at" in old else now}))
        item.update(_to_ddb({k: v for k, v in (("expires_at", new.expires_at), ("refresh_due_at", new.refresh_due_at))
                             if v is not None}))
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

    # -- quota records (quota.py): a connection's own item, or its group's #quota:<group> ------

    def get_with_quota(self, connection_id: str) -> tuple[Connection | None, QuotaRecord | None]:
        """The connection and its quota record. One call: a GetItem for a connection without a
        group; a BatchGetItem of both items once this container knows the connection's group.
        The first read of a grouped connection in a container, or one whose group changed since,
        costs a second read (its group's record)."""
        group = self._group_hints.get(connection_id)
        if group is None:
            conn = self.get(connection_id)
            if conn is None:
                return None, None
        else:
            items = self._batch_get([connection_id, group_key(group)], consistent=True)
            if connection_id not in items:
                self._group_hints.pop(connection_id, None)
                return None, None
            conn = Connection.from_item(items[connection_id])
            if conn.quota_group == group:
                return conn, QuotaRecord.from_attributes(group, _plain(items.get(group_key(group))))
        if conn.quota_group is None:
            self._group_hints.pop(connection_id, None)
            return conn, QuotaRecord.of_connection(conn)
        if len(self._group_hints) >= GROUP_HINTS:
            self._group_hints.pop(next(iter(self._group_hints)))
        self._group_hints[connection_id] = conn.quota_group
        return conn, self.quota_record(conn.quota_group)

    def quota_record(self, group: str) -> QuotaRecord:
        answer = self._db.get_item(TableName=self._table, Key=self._key(group_key(group)), ConsistentRead=True)
        return QuotaRecord.from_attributes(group, _plain(answer.get("Item")))

    def quota_records(self, groups: list[str]) -> dict[str, QuotaRecord]:
        """The records of up to 100 groups (a listing page's), in one BatchGetItem."""
        if not groups:
            return {}
        items = self._batch_get([group_key(g) for g in groups])
        return {g: QuotaRecord.from_attributes(g, _plain(items.get(group_key(g)))) for g in groups}

    def record_quota(self, record: QuotaRecord, *, sets: dict[str, Any], remove: list[str],
                     observed: RateLimit | None, alert_event: bool) -> bool:
        """What an Insightly answer showed of the daily quota, on the record it belongs to: no
        version bump, nothing about credentials, never a write that recreates a deleted
        connection. Conditional, so concurrent writers of one record never step back: an
        observation older and higher than the stored one, the end of a throttle someone else
        started, or an alert already sent, writes nothing (False)."""
        conditions = [] if record.group is not None else ["attribute_exists(connection_id)"]
        names: dict[str, str] = {"#q_rl": "rate_limit", "#q_at": "observed_at", "#q_rem": "remaining",
                                 "#q_tu": "throttled_until", "#q_al": "quota_alert"}
        values: dict[str, Any] = {}
        probe_answer = "throttled_until" in remove and record.throttled_until is not None
        if observed is not None and not probe_answer:  # the probe's answer is the newest there is
            fresher = "#q_rl.#q_at < :q_at" if observed.remaining is not None else "#q_rl.#q_at <= :q_at"
            lower = " OR #q_rl.#q_rem >= :q_rem" if observed.remaining is not None else ""
            conditions.append(f"attribute_not_exists(#q_rl) OR {fresher}{lower}")
            values[":q_at"] = observed.observed_at
            if observed.remaining is not None:
                values[":q_rem"] = observed.remaining
        if "throttled_until" in remove:
            if record.throttled_until is None:
                conditions.append("attribute_not_exists(#q_tu)")
            else:
                conditions.append("attribute_not_exists(#q_tu) OR #q_tu = :q_tu")
                values[":q_tu"] = record.throttled_until
        if alert_event:  # QuotaLow / QuotaExhausted once per record: the writer that moves the alert up
            ranked = [a for a, rank in ALERT_RANK.items() if a and rank >= ALERT_RANK[sets["quota_alert"]]]
            values.update({f":q_al{n}": alert for n, alert in enumerate(ranked)})
            conditions.append(f"attribute_not_exists(#q_al) OR NOT #q_al IN "
                              f"({', '.join(f':q_al{n}' for n in range(len(ranked)))})")
        if record.group is not None:
            sets = {**sets, "quota_group": record.group}
        # _update brackets the whole; DynamoDB refuses brackets around a lone clause.
        condition = " AND ".join(f"({c})" if len(conditions) > 1 and " OR " in c else c for c in conditions)
        try:
            self._update(record.key, sets=sets, remove=remove, condition=condition or None, extra_values=values,
                         extra_names={k: v for k, v in names.items() if k in condition})
        except StaleWrite:
            return False
        return True

    def mark_used(self, connection_id: str, *, now: int) -> None:
        """A grouped connection's credential worked (its own item: the quota is on the group's)."""
        with contextlib.suppress(StaleWrite):
            self._update(connection_id, sets={"last_used_at": now}, condition="attribute_exists(connection_id)")

    def claim_probe(self, record: QuotaRecord, *, until: int) -> bool:
        """After a quota throttle passed, one caller may call Insightly to see if the quota is
        back: the one whose write moves throttled_until on from the value everyone read."""
        try:
            self._update(record.key, sets={"throttled_until": until},
                         condition="throttled_until = :seen",
                         extra_values={":seen": record.throttled_until})
        except StaleWrite:
            return False
        return True

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

    def claim_signal(self, marker: str, *, now: int, interval: int) -> bool:
        """True for one caller per `interval` seconds across all containers: a conditional
        write on a marker item decides who emits a deployment-level signal."""
        try:
            self._db.update_item(
                TableName=self._table, Key=self._key(marker),
                UpdateExpression="SET last_signal_at = :now",
                ConditionExpression="attribute_not_exists(last_signal_at) OR last_signal_at < :cutoff",
                ExpressionAttributeValues=_to_ddb({":now": now, ":cutoff": now - interval}))
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

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

    def delete(self, connection_id: str, *, version: int | None = None) -> bool:
        """False when there was nothing to delete. With `version`, raises StaleWrite when the
        item changed since it was read (a refresh stored a newer token set meanwhile)."""
        kwargs: dict[str, Any] = {"ConditionExpression": f"attribute_exists(connection_id) AND {schema.NOT_NEWER}",
                                  "ExpressionAttributeValues": schema.NOT_NEWER_VALUES}
        if version is not None:
            kwargs = {"ConditionExpression": f"version = :version AND {schema.NOT_NEWER}",
                      "ExpressionAttributeValues": {**_to_ddb({":version": version}), **schema.NOT_NEWER_VALUES}}
        try:
            self._db.delete_item(TableName=self._table, Key=self._key(connection_id),
                                 ReturnValuesOnConditionCheckFailure="ALL_OLD", **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            schema.check(exc.response.get("Item") or {}, "connection")
            if version is not None and self.get(connection_id) is not None:
                raise StaleWrite(connection_id) from None
            return False
        return True

    def due_connection_ids(self, shard: int, *, now: int, page_size: int = 100) -> Iterator[str]:
        """Ids whose refresh is due, from the sparse index only: never a table scan."""
        kwargs = {
            "TableName": self._table,
            "IndexName": DUE_INDEX,
            "KeyConditionExpression": "due_shard = :shard AND refresh_due_at <= :now",
            "ExpressionAttributeValues": {":shard": {"S": str(shard)}, ":now": {"N": str(now)}},
            "Limit": page_size,
        }
        while True:
            page = self._db.query(**kwargs)
            for item in page.get("Items", []):
                yield item["connection_id"]["S"]
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def list_page(self, index: str, key_name: str, key_value: str, *, limit: int,
                  start_key: dict[str, Any] | None) -> tuple[list[Connection], dict[str, Any] | None]:
        """One page of one index partition, newest first: reads only the items it answers. The
        listing indexes hold keys only (a refresh never writes them), so the page's keys come
        from the index and its items from the table, in one BatchGetItem. An item that changed
        partition (or went) since the index was written is left out: the index lags the table."""
        kwargs: dict[str, Any] = {
            "TableName": self._table, "IndexName": index, "Limit": limit, "ScanIndexForward": False,
            "KeyConditionExpression": "#k = :v", "ExpressionAttributeNames": {"#k": key_name},
            "ExpressionAttributeValues": {":v": {"S": key_value}},
        }
        if start_key:
            kwargs["ExclusiveStartKey"] = start_key
        page = self._db.query(**kwargs)
        ids = [item["connection_id"]["S"] for item in page.get("Items", [])]
        items = self._batch_get(ids, attributes=LISTED_ATTRIBUTES)
        listed = [items[i] for i in ids if i in items and items[i].get(key_name, {}).get("S") == key_value]
        newer = [item for item in listed if schema.is_newer(item)]
        if newer:  # after a rollback: one such item must not fail the page (GET of it answers 409)
            logger.warning("connections of a newer schema version left out of a listing page",
                           extra={"count": len(newer)})
        readable = [Connection.from_item(item) for item in listed if not schema.is_newer(item)]
        return readable, page.get("LastEvaluatedKey")

    def _batch_get(self, ids: list[str], *, attributes: tuple[str, ...] | None = None,
                   consistent: bool = False) -> dict[str, dict[str, Any]]:
        """Up to 100 items (all or the given attributes), by id (BatchGetItem; what DynamoDB
        leaves unprocessed is asked again, a few times)."""
        found: dict[str, dict[str, Any]] = {}
        request: dict[str, Any] = {"Keys": [self._key(i) for i in dict.fromkeys(ids)]}
        if attributes:
            request["ProjectionExpression"] = ", ".join(f"#a{n}" for n in range(len(attributes)))
            request["ExpressionAttributeNames"] = {f"#a{n}": name for n, name in enumerate(attributes)}
        if consistent:
            request["ConsistentRead"] = True
        for attempt in range(BATCH_GET_ATTEMPTS):
            if not request["Keys"]:
                break
            if attempt:  # unprocessed keys mean throttling: back off (full jitter) within the invocation
                pause = random.uniform(0, 0.05 * 2 ** attempt)  # noqa: S311  # nosec B311  # backoff jitter, no secret
                if deadline.seconds_left() < pause + 1:
                    break
                time.sleep(pause)
            answer = self._db.batch_get_item(RequestItems={self._table: request})
            for item in answer.get("Responses", {}).get(self._table, []):
                found[item["connection_id"]["S"]] = item
            request = {**request, "Keys": (answer.get("UnprocessedKeys", {}).get(self._table) or {}).get("Keys", [])}
        if request["Keys"]:
            raise BrokerError("the connection store is busy; try again", code="storage_unavailable", status=503)
        return found

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _key(connection_id: str) -> dict[str, Any]:
        return {"connection_id": {"S": connection_id}}

    def _update(self, connection_id: str, *, sets: dict[str, Any], due: tuple | None = None,
                extra_set: str = "", remove: list[str] | None = None, condition: str | None = None,
                extra_values: dict[str, Any] | None = None, return_new: bool = False,
                return_old: bool = False, extra_names: dict[str, str] | None = None) -> dict:
        sets = {**sets, schema.ATTRIBUTE: schema.SCHEMA_VERSION}  # every writer writes the current format
        remove = list(remove or [])
        if due is not None:
            expires_at, refresh_due_at = due
            for name, value in (("expires_at", expires_at), ("refresh_due_at", refresh_due_at)):
                if value is None:
                    remove.append(name)
                else:
                    sets[name] = value
            # The index is sparse: only connections with a due time carry a shard.
            if refresh_due_at is None:
                remove.append("due_shard")
            else:
                sets["due_shard"] = due_shard(connection_id, self._shards)
        names = {f"#{k}": k for k in [*sets, *remove]}
        names.update(extra_names or {})
        values = {f":{k}": v for k, v in sets.items()}
        values.update(extra_values or {})
        clauses = [f"#{k} = :{k}" for k in sets] + ([extra_set] if extra_set else [])
        expression = "SET " + ", ".join(clauses)
        if remove:
            expression += " REMOVE " + ", ".join(f"#{k}" for k in remove)
        kwargs = {
            "TableName": self._table,
            "Key": self._key(connection_id),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            # NOT_NEWER's own placeholder, whatever `sets` holds
            "ExpressionAttributeValues": {**_to_ddb(values), **schema.NOT_NEWER_VALUES},
        }
        # Never over an item of a newer format, whether or not this writer read it first.
        kwargs["ConditionExpression"] = f"({condition}) AND {schema.NOT_NEWER}" if condition else schema.NOT_NEWER
        kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if return_new or return_old:
            kwargs["ReturnValues"] = "ALL_NEW" if return_new else "ALL_OLD"
        try:
            return self._db.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                schema.check(exc.response.get("Item") or {}, "connection")
                raise StaleWrite(connection_id) from None
            raise
