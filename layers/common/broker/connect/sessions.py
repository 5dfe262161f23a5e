"""Connect sessions (the link the SaaS backend hands its user) and the OAuth states the
authorize step issues for them: single use, bound to the browser that started the flow.

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
from dataclasses import dataclass

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from broker.connect.flow_table import FlowTable, digest
from broker.platform.errors import InvalidRequest
from broker.store import schema

_ser, _de = TypeSerializer(), TypeDeserializer()


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


class ConnectSessions(FlowTable):
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

    def reserve_attempt(self, token: str, *, now: int, limit: int, auth_mode: str) -> tuple[ConnectSession, bool]:
        """Read a live session and take one of its `limit` key checks, in one write, before
        Insightly is called (a conditional ADD, so parallel submits cannot all pass a count read
        earlier). Returns the session (its `attempts` counts this one) and whether a check was
        left; a session that is gone, of another kind or expired raises as a read would."""
        key = {"flow_key": {"S": f"session#{digest(token)}"}}
        try:
            answer = self._db.update_item(
                TableName=self._table, Key=key, UpdateExpression="ADD attempts :one",
                ConditionExpression=("attribute_exists(flow_key) AND auth_mode = :mode AND expires_at > :now AND"
                                     " (attribute_not_exists(attempts) OR attempts < :limit)"
                                     f" AND {schema.NOT_NEWER}"),
                ExpressionAttributeValues={":one": {"N": "1"}, ":mode": {"S": auth_mode}, ":now": {"N": str(now)},
                                           ":limit": {"N": str(limit)}, **schema.NOT_NEWER_VALUES},
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item") or {}
            if old:
                schema.check(old, "connect session")
            if not old or old.get("auth_mode", {}).get("S", "oauth2") != auth_mode:
                raise InvalidRequest("unknown or already used connect session", code="invalid_session") from None
            if int(old["expires_at"]["N"]) <= now:
                raise InvalidRequest("the connect session has expired; start again", code="session_expired") from None
            return _session(old, token), False  # every check taken
        return _session(answer["Attributes"], token), True

    def release_attempt(self, token: str) -> None:
        """Give a reserved attempt back: Insightly refused nothing (an outage, the quota)."""
        with contextlib.suppress(ClientError):  # gone meanwhile: nothing to give back
            self._db.update_item(
                TableName=self._table, Key={"flow_key": {"S": f"session#{digest(token)}"}},
                UpdateExpression="ADD attempts :minus_one",
                ConditionExpression=f"attribute_exists(flow_key) AND attempts > :zero AND {schema.NOT_NEWER}",
                ExpressionAttributeValues={":minus_one": {"N": "-1"}, ":zero": {"N": "0"}, **schema.NOT_NEWER_VALUES})


class OAuthStates(FlowTable):
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


def _tags_attribute(tags: dict[str, str] | None) -> dict:
    return {} if tags is None else {"tags": _ser.serialize(tags)}


def _tags(item: dict) -> dict[str, str] | None:
    return _de.deserialize(item["tags"]) if "tags" in item else None


def _group_attribute(quota_group: str | None) -> dict:
    return {} if quota_group is None else {"quota_group": {"S": quota_group}}


def _group(item: dict) -> str | None:
    return item["quota_group"]["S"] if "quota_group" in item else None
