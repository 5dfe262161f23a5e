"""FlowStore: single-use connect sessions and OAuth states in the flow table.

Items are keyed by a hash of the random value, never the value itself, so a read of the
table gives nothing a browser could replay. Expiry is checked in the condition of the
consuming delete: DynamoDB's TTL deletion lags by up to days.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from botocore.exceptions import ClientError

from .errors import InvalidRequest


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ConnectSession:
    connection_id: str
    return_to: str


@dataclass(frozen=True)
class AuthState:
    connection_id: str
    return_to: str


class FlowStore:
    def __init__(self, dynamodb, table: str):
        self._db = dynamodb
        self._table = table

    # -- connect sessions ----------------------------------------------------------------

    def put_session(self, token: str, *, connection_id: str, return_to: str, expires_at: int) -> None:
        self._put(f"session#{digest(token)}", {
            "connection_id": {"S": connection_id},
            "return_to": {"S": return_to},
            "expires_at": {"N": str(expires_at)},
        })

    def consume_session(self, token: str, *, now: int) -> ConnectSession:
        item = self._consume(f"session#{digest(token)}", now=now, what="connect session")
        return ConnectSession(item["connection_id"]["S"], item["return_to"]["S"])

    # -- OAuth states ----------------------------------------------------------------------

    def put_state(self, state: str, *, browser_secret: str, connection_id: str, return_to: str,
                  expires_at: int) -> None:
        self._put(f"state#{digest(state)}", {
            "browser_hash": {"S": digest(browser_secret)},
            "connection_id": {"S": connection_id},
            "return_to": {"S": return_to},
            "expires_at": {"N": str(expires_at)},
        })

    def consume_state(self, state: str, *, browser_secret: str, now: int) -> AuthState:
        item = self._consume(f"state#{digest(state)}", now=now, what="state",
                             browser_hash=digest(browser_secret))
        return AuthState(item["connection_id"]["S"], item["return_to"]["S"])

    # -- plumbing --------------------------------------------------------------------------

    def _put(self, key: str, attributes: dict) -> None:
        self._db.put_item(
            TableName=self._table,
            Item={"flow_key": {"S": key}, **attributes},
            # 256 random bits never collide; the condition makes sure of it.
            ConditionExpression="attribute_not_exists(flow_key)",
        )

    def _consume(self, key: str, *, now: int, what: str, browser_hash: str | None = None) -> dict:
        """Delete the item if it is live (and bound to this browser); one call either way."""
        condition = "attribute_exists(flow_key) AND expires_at > :now"
        values = {":now": {"N": str(now)}}
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
            if int(old["expires_at"]["N"]) <= now:
                raise InvalidRequest(f"the {what} has expired; start again", code=f"{kind}_expired") from None
            raise InvalidRequest(f"the {what} was issued to another browser", code="state_mismatch") from None
        return answer["Attributes"]
