"""Pending completions (session binding): the credentials a connect flow obtained, kept under
the hash of a completion code until the SaaS backend completes the flow for its session, and
swept (their grant revoked) when nobody did in time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from broker.connect.flow_table import FlowTable, digest
from broker.platform.errors import InvalidRequest
from broker.platform.observability import logger
from broker.store import schema
from broker.store.items import NewCredentials

PENDING_INDEX = "pending-index"
PENDING_SHARD = "pending"  # one partition: completions live minutes, a few per second at most
# TTL only cleans up behind the sweep, which revokes the grant of an uncompleted completion
# first: a day later, so a sweep that could not run for a while still finds it.
PENDING_CLEANUP_SECONDS = 86400

_ser, _de = TypeSerializer(), TypeDeserializer()


class PendingCompletions(FlowTable):
    def put_completion(self, code: str, *, session_id: str, pending: NewCredentials, complete_by: int) -> None:
        attributes = {
            "connection_id": pending.connection_id, "credentials": pending.credentials,
            "token_expires_at": pending.expires_at, "refresh_due_at": pending.refresh_due_at,
            "provider_user": pending.provider_user, "scopes": pending.scopes,
            "auth_mode": pending.auth_mode, "pod": pending.pod, "api_base_url": pending.api_base_url,
            "rate_limit": pending.rate_limit, "checked_at": pending.checked_at, "tags": pending.tags,
            "quota_group": pending.quota_group,
            "session_hash": digest(session_id), "complete_by": complete_by,
            # Sparse index: only pending completions carry the shard, so the sweep reads nothing else.
            "pending_shard": PENDING_SHARD, "expires_at": complete_by + PENDING_CLEANUP_SECONDS,
        }
        self._put(f"completion#{digest(code)}",
                  {k: _ser.serialize(v) for k, v in attributes.items() if v is not None})

    def consume_completion(self, code: str, *, session_id: str, now: int) -> NewCredentials:
        """Single use: one conditional delete that also checks the session and the deadline."""
        key = {"flow_key": {"S": f"completion#{digest(code)}"}}
        try:
            answer = self._db.delete_item(
                TableName=self._table, Key=key,
                ConditionExpression=("attribute_exists(flow_key) AND session_hash = :session AND complete_by > :now"
                                     f" AND {schema.NOT_NEWER}"),
                ExpressionAttributeValues={":session": {"S": digest(session_id)}, ":now": {"N": str(now)},
                                           **schema.NOT_NEWER_VALUES},
                ReturnValues="ALL_OLD", ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            if old and old["session_hash"]["S"] == digest(session_id):
                schema.check(old, "pending completion")  # only its own session learns why
            if old and old["session_hash"]["S"] == digest(session_id) and int(old["complete_by"]["N"]) <= now:
                raise InvalidRequest("the completion code has expired; connect again",
                                     code="completion_expired") from None
            # Unknown, used, or issued to another session: the same answer, nothing consumed.
            raise InvalidRequest("unknown or already used completion code", code="invalid_completion_code") from None
        return _pending(answer["Attributes"])

    def expired_completions(self, *, now: int, page_size: int = 25) -> Iterator[tuple[str, dict[str, Any]]]:
        """(flow_key, index item) of every completion past its deadline, from the sparse index;
        `open_expired` turns one into its completion."""
        kwargs = {
            "TableName": self._table, "IndexName": PENDING_INDEX,
            "KeyConditionExpression": "pending_shard = :shard AND complete_by <= :now",
            "ExpressionAttributeValues": {":shard": {"S": PENDING_SHARD}, ":now": {"N": str(now)}},
            "Limit": page_size,
        }
        while True:
            page = self._db.query(**kwargs)
            for item in page.get("Items", []):
                yield item["flow_key"]["S"], item
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def open_expired(self, item: dict[str, Any]) -> NewCredentials | None:
        """An expired completion as this code reads it, or None when a newer version wrote it
        (left for that version) or when the table no longer holds it. The index does not
        project schema_version (adding it would rebuild the index on upgrade): one read of that
        attribute, for the rare completion nobody completed (the scheduler's role may read no
        other attribute)."""
        stored = self._db.get_item(TableName=self._table, Key={"flow_key": item["flow_key"]},
                                   ProjectionExpression="flow_key, schema_version", ConsistentRead=True).get("Item")
        if stored is None:
            # The index lags the table: a completion the SaaS completed just before its deadline
            # is still listed. Its grant now belongs to an active connection: never revoke it.
            logger.info("expired completion no longer stored; skipped")
            return None
        if schema.is_newer(stored):
            logger.warning("expired completion of a newer schema version left for that version")
            return None
        return _pending(item)

    def discard_expired_completion(self, flow_key: str, *, now: int) -> None:
        try:
            self._db.delete_item(TableName=self._table, Key={"flow_key": {"S": flow_key}},
                                 ConditionExpression=f"complete_by <= :now AND {schema.NOT_NEWER}",
                                 ExpressionAttributeValues={":now": {"N": str(now)}, **schema.NOT_NEWER_VALUES})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise  # already gone (another sweep) is fine; anything else is retried next run


def _pending(item: dict) -> NewCredentials:
    data = {k: _de.deserialize(v) for k, v in item.items()}
    number = lambda name: int(data[name]) if data.get(name) is not None else None  # noqa: E731
    return NewCredentials(
        connection_id=data["connection_id"], credentials=bytes(data["credentials"]),
        expires_at=number("token_expires_at"), refresh_due_at=number("refresh_due_at"),
        provider_user=dict(data.get("provider_user") or {}), scopes=data.get("scopes", ""),
        auth_mode=data.get("auth_mode", "oauth2"), pod=data.get("pod"), api_base_url=data.get("api_base_url"),
        rate_limit=_numbers(data.get("rate_limit")), checked_at=number("checked_at"),
        tags=dict(data["tags"]) if data.get("tags") is not None else None,
        quota_group=data.get("quota_group"),
    )


def _numbers(value: Any) -> dict[str, int] | None:
    """A stored map of numbers (DynamoDB gives Decimals) as ints."""
    return {k: int(v) for k, v in value.items() if v is not None} if value else None
