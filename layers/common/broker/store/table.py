"""ConnectionTable: the connections table's client and the calls every part of the store
makes through it: a consistent read, a batch read, and the conditional update.

Every write that follows a read is conditional on the version read, so a stale writer can
never overwrite newer credentials (StaleWrite). The parts built on this class (the refresh
lease, the quota records, the index queries, ConnectionStore) each own one kind of read or
write; the item codec they share is items.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

from botocore.exceptions import ClientError

from broker.platform import deadline
from broker.platform.errors import BrokerError
from broker.store import schema
from broker.store.items import Connection, due_attributes, key, update_expression

BATCH_GET_ATTEMPTS = 5


class StaleWrite(Exception):
    """The item changed since it was read (or the lease was lost): nothing was written."""


class ConnectionTable:
    def __init__(self, dynamodb, table: str, *, shards: int):
        self._db = dynamodb
        self._table = table
        self._shards = shards

    def get(self, connection_id: str) -> Connection | None:
        answer = self._db.get_item(TableName=self._table, Key=key(connection_id), ConsistentRead=True)
        return Connection.from_item(answer["Item"]) if "Item" in answer else None

    def _batch_get(self, ids: list[str], *, attributes: tuple[str, ...] | None = None,
                   consistent: bool = False) -> dict[str, dict[str, Any]]:
        """Up to 100 items (all or the given attributes), by id (BatchGetItem; what DynamoDB
        leaves unprocessed is asked again, a few times)."""
        found: dict[str, dict[str, Any]] = {}
        request: dict[str, Any] = {"Keys": [key(i) for i in dict.fromkeys(ids)]}
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

    def _update(self, connection_id: str, *, sets: dict[str, Any], due: tuple | None = None,
                extra_set: str = "", remove: list[str] | None = None, condition: str | None = None,
                extra_values: dict[str, Any] | None = None, return_new: bool = False,
                return_old: bool = False, extra_names: dict[str, str] | None = None) -> dict:
        """One UpdateItem: `due` is (expires_at, refresh_due_at), with the due index's shard.
        StaleWrite when `condition` (or the schema version) does not hold."""
        remove = list(remove or [])
        if due is not None:
            due_sets, due_remove = due_attributes(connection_id, due, shards=self._shards)
            sets, remove = {**sets, **due_sets}, remove + due_remove
        kwargs = {
            "TableName": self._table,
            "Key": key(connection_id),
            **update_expression(sets, remove, extra_set=extra_set, condition=condition,
                                extra_values=extra_values, extra_names=extra_names),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if return_new or return_old:
            kwargs["ReturnValues"] = "ALL_NEW" if return_new else "ALL_OLD"
        try:
            return self._db.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                schema.check(exc.response.get("Item") or {}, "connection")
                raise StaleWrite(connection_id) from None
            raise
