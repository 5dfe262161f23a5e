"""The connections table's item codec: a Connection and what a connect obtained
(NewCredentials) as Python values, to and from DynamoDB's attribute values, and the update
expressions every writer of the table sends (schema version, due-index attributes).

No DynamoDB client here: the stores (table.py and the parts built on it) make the calls.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from broker.store import schema

ACTIVE, NEEDS_REAUTH = "active", "needs_reauth"
# What a listing page reads of each item: the status JSON's attributes, never credentials.
LISTED_ATTRIBUTES = ("connection_id", "status", "auth_mode", "created_at", "provider_user", "scopes", "expires_at",
                     "last_refreshed_at", "refresh_due_at", "connected_at", "first_failed_at", "last_error", "pod",
                     "api_base_url", "last_checked_at", "tags", "metadata", "rate_limit",
                     "quota_group", "throttled_until",  # the quota the status JSON shows
                     "list_tag",  # the tag-index key: to see an item is still where the index put it
                     "schema_version")  # a newer item is left out of the page, not misread

_ser, _de = TypeSerializer(), TypeDeserializer()


def to_ddb(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in values.items()}


def key(connection_id: str) -> dict[str, Any]:
    return {"connection_id": {"S": connection_id}}


def due_shard(connection_id: str, shards: int) -> str:
    """A stable shard so the due-time index spreads over several partitions."""
    return str(int(hashlib.sha256(connection_id.encode()).hexdigest()[:8], 16) % shards)


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


def plain(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """A raw item as Python values (a quota record), after its schema version is checked."""
    if not item:
        return None
    schema.check(item, "quota record")
    return {k: _de.deserialize(v) for k, v in item.items()}


def as_written(old: dict[str, Any] | None, new: NewCredentials, *, sets: dict[str, Any], remove: list[str],
               now: int) -> dict[str, Any]:
    """The item a connect wrote (`sets`, `remove`, new due times, the version moved on), from
    the one it replaced (ALL_OLD): one call instead of a write and a read."""
    item = {k: v for k, v in (old or {}).items() if k not in remove and k not in ("expires_at", "refresh_due_at",
                                                                                 "due_shard")}
    item.update(to_ddb({**sets, "connection_id": new.connection_id,
                        "version": (int(old["version"]["N"]) if old else 0) + 1,
                        "created_at": int(old["created_at"]["N"]) if old and "created_at" in old else now}))
    item.update(to_ddb({k: v for k, v in (("expires_at", new.expires_at), ("refresh_due_at", new.refresh_due_at))
                        if v is not None}))
    return item


def due_attributes(connection_id: str, due: tuple[int | None, int | None], *,
                   shards: int) -> tuple[dict[str, Any], list[str]]:
    """(expires_at, refresh_due_at) as what to SET and what to REMOVE. The due index is
    sparse: only connections with a due time carry a shard."""
    expires_at, refresh_due_at = due
    sets: dict[str, Any] = {}
    remove: list[str] = []
    for name, value in (("expires_at", expires_at), ("refresh_due_at", refresh_due_at)):
        if value is None:
            remove.append(name)
        else:
            sets[name] = value
    if refresh_due_at is None:
        remove.append("due_shard")
    else:
        sets["due_shard"] = due_shard(connection_id, shards)
    return sets, remove


def update_expression(sets: dict[str, Any], remove: list[str], *, extra_set: str = "",
                      condition: str | None = None, extra_values: dict[str, Any] | None = None,
                      extra_names: dict[str, str] | None = None) -> dict[str, Any]:
    """UpdateItem's expression, names, values and condition for `sets` and `remove`. Every
    writer writes the current format, and never over an item of a newer one."""
    sets = {**sets, schema.ATTRIBUTE: schema.SCHEMA_VERSION}
    names = {f"#{k}": k for k in [*sets, *remove]}
    names.update(extra_names or {})
    values = {f":{k}": v for k, v in sets.items()}
    values.update(extra_values or {})
    clauses = [f"#{k} = :{k}" for k in sets] + ([extra_set] if extra_set else [])
    expression = "SET " + ", ".join(clauses)
    if remove:
        expression += " REMOVE " + ", ".join(f"#{k}" for k in remove)
    return {
        "UpdateExpression": expression,
        "ExpressionAttributeNames": names,
        # NOT_NEWER's own placeholder, whatever `sets` holds
        "ExpressionAttributeValues": {**to_ddb(values), **schema.NOT_NEWER_VALUES},
        # Never over an item of a newer format, whether or not this writer read it first.
        "ConditionExpression": f"({condition}) AND {schema.NOT_NEWER}" if condition else schema.NOT_NEWER,
    }
