"""FlowTable: the flow table's client and the two calls its single-use items share: a put
that never overwrites, and a consuming delete that checks the item is live.

Items are keyed by a hash of the random value, never the value itself, so a read of the
table gives nothing a browser could replay. Expiry is checked in the condition of the
consuming delete: DynamoDB's TTL deletion lags by up to days.
"""

from __future__ import annotations

import hashlib

from botocore.exceptions import ClientError

from broker.platform.errors import InvalidRequest
from broker.store import schema


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class FlowTable:
    def __init__(self, dynamodb, table: str):
        self._db = dynamodb
        self._table = table

    def _put(self, key: str, attributes: dict) -> None:
        self._db.put_item(
            TableName=self._table,
            Item={"flow_key": {"S": key}, **attributes, schema.ATTRIBUTE: {"N": str(schema.SCHEMA_VERSION)}},
            # 256 random bits never collide; the condition makes sure of it.
            ConditionExpression="attribute_not_exists(flow_key)",
        )

    def _consume(self, key: str, *, now: int, what: str, browser_hash: str | None = None,
                 auth_mode: str | None = None) -> dict:
        """Delete the item if it is live (and bound to this browser); one call either way."""
        condition = f"attribute_exists(flow_key) AND expires_at > :now AND {schema.NOT_NEWER}"
        values = {":now": {"N": str(now)}, **schema.NOT_NEWER_VALUES}
        if auth_mode is not None:
            # Sessions from before auth modes carry none: they were OAuth sessions.
            condition += (" AND (auth_mode = :mode OR attribute_not_exists(auth_mode))" if auth_mode == "oauth2"
                          else " AND auth_mode = :mode")
            values[":mode"] = {"S": auth_mode}
        if browser_hash is not None:
            condition += " AND browser_hash = :browser"
            values[":browser"] = {"S": browser_hash}
        try:
            answer = self._db.delete_item(
                TableName=self._table,
                Key={"flow_key": {"S": key}},
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old, kind = exc.response.get("Item"), what.split()[-1]
            if not old:
                raise InvalidRequest(f"unknown or already used {what}", code=f"invalid_{kind}") from None
            schema.check(old, what)
            if int(old["expires_at"]["N"]) <= now:
                raise InvalidRequest(f"the {what} has expired; start again", code=f"{kind}_expired") from None
            if auth_mode is not None:
                raise InvalidRequest(f"unknown or already used {what}", code=f"invalid_{kind}") from None
            raise InvalidRequest(f"the {what} was issued to another browser", code="state_mismatch") from None
        return answer["Attributes"]
