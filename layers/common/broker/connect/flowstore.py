"""FlowStore: single-use connect sessions, OAuth states and pending completions in the flow table.

Items are keyed by a hash of the random value, never the value itself, so a read of the
table gives nothing a browser could replay. Expiry is checked in the condition of the
consuming delete: DynamoDB's TTL deletion lags by up to days.

The connect session's id (session binding) is kept as a hash, to check it on completion,
and as a masked copy the flow needs to hand back in the redirect: masked with a key derived
from the connect link's token (session item) or the browser's cookie (state item), so a
read of the table alone does not give it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from broker.platform.errors import InvalidRequest
from broker.platform.observability import logger
from broker.store import schema
from broker.store.connections import NewCredentials

PENDING_INDEX = "pending-index"
PENDING_SHARD = "pending"  # one partition: completions live minutes, a few per second at most
# TTL only cleans up behind the sweep, which revokes the grant of an uncompleted completion
# first: a day later, so a sweep that could not run for a while still finds it.
PENDING_CLEANUP_SECONDS = 86400
# The scheduled run's lease; every other key is "<kind>#<sha256>", so it cannot collide.
SCHEDULED_RUN_KEY = "scheduler-run"

_ser, _de = TypeSerializer(), TypeDeserializer()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mask(session_id: str, key: str, label: str) -> str:
    """session_id (43 chars of base64url, 32 bytes) XOR a pad derived from key: its own inverse."""
    raw = base64.urlsafe_b64decode(session_id + "=")
    pad = hmac.new(key.encode(), b"session-id:" + label.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(bytes(a ^ b for a, b in zip(raw, pad, strict=True))).rstrip(b"=").decode()


@dataclass(frozen=True)
class ConnectSession:
    """A connect session the SaaS backend created, kept under the hash of its token."""

    connection_id: str
    return_to: str
    session_id: str | None = None  # None: a session created before session binding
    auth_mode: str = "oauth2"
    attempts: int = 0  # API keys Insightly refused on the key page so far
    tags: dict[str, str] | None = None  # given on the connect session, for the connection
    display: str = "redirect"  # "popup": the flow ends with a page that posts to window.opener
    quota_group: str | None = None  # given on the connect session, for the connection


@dataclass(frozen=True)
class AuthState:
    """An OAuth state the authorize step issued, kept under the hash of its value."""

    connection_id: str
    return_to: str
    session_id: str | None = None
    tags: dict[str, str] | None = None
    display: str = "redirect"
    quota_group: str | None = None


class FlowStore:
    def __init__(self, dynamodb, table: str):
        self._db = dynamodb
        self._table = table

    # -- connect sessions ----------------------------------------------------------------

    def put_session(self, token: str, *, session_id: str, connection_id: str, return_to: str,
                    expires_at: int, auth_mode: str = "oauth2", tags: dict[str, str] | None = None,
                    display: str = "redirect", quota_group: str | None = None) -> None:
        self._put(f"session#{digest(token)}", {
            **_display(display),
            "connection_id": {"S": connection_id},
            "auth_mode": {"S": auth_mode},
            "return_to": {"S": return_to},
            "session_masked": {"S": mask(session_id, token, "link")},
            "session_hash": {"S": digest(session_id)},
            "expires_at": {"N": str(expires_at)},
            **_tags_attribute(tags),
            **_group_attribute(quota_group),
        })

    def consume_session(self, token: str, *, now: int, auth_mode: str = "oauth2") -> ConnectSession:
        """Spend the session, if it is live and of this auth mode (a session for the key page
        does not start an OAuth flow, nor the reverse; a mismatch spends nothing)."""
        item = self._consume(f"session#{digest(token)}", now=now, what="connect session", auth_mode=auth_mode)
        return _session(item, token)

    def peek_session(self, token: str, *, now: int, auth_mode: str) -> ConnectSession:
        """Read a live session without spending it (the key page: a mistyped key must not)."""
        item = self._db.get_item(TableName=self._table, Key={"flow_key": {"S": f"session#{digest(token)}"}},
                                 ConsistentRead=True).get("Item")
        if item:
            schema.check(item, "connect session")
        if not item or item.get("auth_mode", {}).get("S", "oauth2") != auth_mode:
            raise InvalidRequest("unknown or already used connect session", code="invalid_session")
        if int(item["expires_at"]["N"]) <= now:
            raise InvalidRequest("the connect session has expired; start again", code="session_expired")
        return _session(item, token)

    def reserve_attempt(self, token: str, *, now: int, limit: int) -> int | None:
        """Take one of the session's `limit` key checks before Insightly is called (a
        conditional ADD, so parallel submits cannot all pass a count read earlier): the
        attempt's number, or None when all are taken. Only a live session has attempts."""
        try:
            answer = self._db.update_item(
                TableName=self._table, Key={"flow_key": {"S": f"session#{digest(token)}"}},
                UpdateExpression="ADD attempts :one",
                ConditionExpression=("attribute_exists(flow_key) AND expires_at > :now AND"
                                     " (attribute_not_exists(attempts) OR attempts < :limit)"
                                     f" AND {schema.NOT_NEWER}"),
                ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"N": str(now)}, ":limit": {"N": str(limit)},
                                           **schema.NOT_NEWER_VALUES},
                ReturnValues="UPDATED_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item") or {}
            schema.check(old, "connect session")
            if old and int(old["expires_at"]["N"]) > now and int(old.get("attempts", {}).get("N", "0")) >= limit:
                return None
            raise InvalidRequest("unknown or already used connect session", code="invalid_session") from None
        return int(answer["Attributes"]["attempts"]["N"])

    def release_attempt(self, token: str) -> None:
        """Give a reserved attempt back: Insightly refused nothing (an outage, the quota)."""
        with contextlib.suppress(ClientError):  # gone meanwhile: nothing to give back
            self._db.update_item(
                TableName=self._table, Key={"flow_key": {"S": f"session#{digest(token)}"}},
                UpdateExpression="ADD attempts :minus_one",
                ConditionExpression=f"attribute_exists(flow_key) AND attempts > :zero AND {schema.NOT_NEWER}",
                ExpressionAttributeValues={":minus_one": {"N": "-1"}, ":zero": {"N": "0"}, **schema.NOT_NEWER_VALUES})

    # -- OAuth states ----------------------------------------------------------------------

    def put_state(self, state: str, *, browser_secret: str, connection_id: str, return_to: str,
                  expires_at: int, session_id: str | None = None, tags: dict[str, str] | None = None,
                  display: str = "redirect", quota_group: str | None = None) -> None:
        session = {} if session_id is None else {
            "session_masked": {"S": mask(session_id, browser_secret, "state:" + state)},
            "session_hash": {"S": digest(session_id)},
        }
        self._put(f"state#{digest(state)}", {
            "browser_hash": {"S": digest(browser_secret)},
            "connection_id": {"S": connection_id},
            "return_to": {"S": return_to},
            "expires_at": {"N": str(expires_at)},
            **session,
            **_tags_attribute(tags),
            **_group_attribute(quota_group),
            **_display(display),
        })

    def consume_state(self, state: str, *, browser_secret: str, now: int) -> AuthState:
        item = self._consume(f"state#{digest(state)}", now=now, what="state",
                             browser_hash=digest(browser_secret))
        return AuthState(item["connection_id"]["S"], item["return_to"]["S"],
                         _unmask(item, browser_secret, "state:" + state), tags=_tags(item),
                         display=_display_of(item), quota_group=_group(item))

    # -- pending completions (session binding) ------------------------------------------------

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

    # -- the scheduled run's lease --------------------------------------------------------

    def claim_scheduled_run(self, run_id: str, *, now: int, until: int) -> bool:
        """One scheduled run at a time: True when this run now holds the lease. Free when
        none is held, when the holder's has lapsed (`until` is the end of the holder's
        invocation: a run killed at its timeout frees it then), or when the holder is this
        same run_id (Lambda retries an asynchronous invocation with its request id)."""
        try:
            self._db.put_item(
                TableName=self._table,
                Item={"flow_key": {"S": SCHEDULED_RUN_KEY}, "run_id": {"S": run_id},
                      "expires_at": {"N": str(until)}},
                ConditionExpression="attribute_not_exists(flow_key) OR expires_at <= :now OR run_id = :me",
                ExpressionAttributeValues={":now": {"N": str(now)}, ":me": {"S": run_id}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def release_scheduled_run(self, run_id: str) -> None:
        try:
            self._db.delete_item(TableName=self._table, Key={"flow_key": {"S": SCHEDULED_RUN_KEY}},
                                 ConditionExpression="run_id = :me",
                                 ExpressionAttributeValues={":me": {"S": run_id}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise  # not ours any more (it lapsed and another run took it): leave it

    # -- plumbing --------------------------------------------------------------------------

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


def _session(item: dict, token: str) -> ConnectSession:
    return ConnectSession(item["connection_id"]["S"], item["return_to"]["S"], _unmask(item, token, "link"),
                          auth_mode=item.get("auth_mode", {}).get("S", "oauth2"),
                          attempts=int(item.get("attempts", {}).get("N", "0")), tags=_tags(item),
                          display=_display_of(item), quota_group=_group(item))


def _display(display: str) -> dict:
    # Only a popup is written: items of redirect flows stay as they were before displays.
    return {"display": {"S": display}} if display != "redirect" else {}


def _display_of(item: dict) -> str:
    return item.get("display", {}).get("S", "redirect")


def _unmask(item: dict, key: str, label: str) -> str | None:
    masked = item.get("session_masked", {}).get("S")
    if masked is None:
        return None
    session_id = mask(masked, key, label)
    # The hash stored beside it proves the unmasking key was the right one.
    return session_id if hmac.compare_digest(digest(session_id), item["session_hash"]["S"]) else None


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


def _tags_attribute(tags: dict[str, str] | None) -> dict:
    return {} if tags is None else {"tags": _ser.serialize(tags)}


def _tags(item: dict) -> dict[str, str] | None:
    return _de.deserialize(item["tags"]) if "tags" in item else None


def _group_attribute(quota_group: str | None) -> dict:
    return {} if quota_group is None else {"quota_group": {"S": quota_group}}


def _group(item: dict) -> str | None:
    return item["quota_group"]["S"] if "quota_group" in item else None


def _numbers(value: Any) -> dict[str, int] | None:
    """A stored map of numbers (DynamoDB gives Decimals) as ints."""
    return {k: int(v) for k, v in value.items() if v is not None} if value else None
