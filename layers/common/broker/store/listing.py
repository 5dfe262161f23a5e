"""A connection as the backend sees it: its status JSON (GET /connections/{id}) and
GET /connections: pages of that JSON from the table's indexes, never a Scan.

Each filter is served by one index (status-index, mode-index, or the sparse tag-index on
tags[ListTagKey]); no filter walks status-index's two partitions in turn. A page is one
Query of `limit` keys and one BatchGetItem of those items: the indexes hold keys only, so a
refresh (which changes no key) never writes them and the few partition values every connection
shares ("active", "oauth2") never carry the refresh rate. The cursor is the Query's
LastEvaluatedKey, signed (HMAC-SHA256 with a stack-generated key kept in Secrets Manager)
together with the filter it belongs to, so a tampered cursor, or one replayed under another
filter, is a 400 and never reaches DynamoDB.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from typing import Any

from broker.http import requests_in
from broker.platform.errors import InvalidRequest
from broker.store.connections import ACTIVE, NEEDS_REAUTH, Connection, ConnectionStore
from broker.store.quota import QuotaRecord

STATUSES = (ACTIVE, NEEDS_REAUTH)
AUTH_MODES = ("oauth2", "api_key")
DEFAULT_LIMIT, MAX_LIMIT = 50, 100
CURSOR_KEY_CACHE_SECONDS = 3600


def iso(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def connection_status(conn: Connection, record: QuotaRecord | None = None, *, reserve_percent: int = 0,
                      now: float | None = None) -> dict[str, Any]:
    """What GET /connections/{id} answers: never a credential. `record`: the quota the
    connection shares with its group (its own when it has none, or when not given)."""
    record = record or QuotaRecord.of_connection(conn)
    rate = record.rate_limit
    return {
        "connection_id": conn.connection_id,
        "status": conn.status,
        "auth_mode": conn.auth_mode,
        "provider_user": conn.provider_user or None,
        "scopes": conn.scopes.split() if conn.scopes else [],
        "expires_at": iso(conn.expires_at),
        "last_refreshed_at": iso(conn.last_refreshed_at),
        "next_refresh_at": iso(conn.refresh_due_at) if conn.status == ACTIVE else None,
        "connected_at": iso(conn.connected_at),
        "created_at": iso(conn.created_at),
        "failing_since": iso(conn.first_failed_at),
        "last_error": {**conn.last_error, "at": iso(int(conn.last_error["at"]))} if conn.last_error else None,
        "pod": conn.pod,
        "api_base_url": conn.api_base_url,
        "last_checked_at": iso(conn.last_checked_at),
        "tags": conn.tags,
        "metadata": conn.metadata_object,
        "rate_limit": ({"limit": rate.get("limit"), "remaining": rate.get("remaining"),
                        "observed_at": iso(rate.get("observed_at"))} if rate else None),
        "quota_group": conn.quota_group,
        "quota": _with_iso_time(record.view(reserve_percent, time.time() if now is None else now)),
    }


def _with_iso_time(view: dict[str, Any] | None) -> dict[str, Any] | None:
    return {**view, "observed_at": iso(view["observed_at"])} if view else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _invalid_cursor() -> InvalidRequest:
    return InvalidRequest("the cursor is not one this listing issued (use next_cursor as given)",
                          code="invalid_cursor")


class ConnectionListing:
    def __init__(self, connections: ConnectionStore, *, cursor_key, list_tag_key: str, reserve_percent: int = 0,
                 clock=time.time):
        self._connections = connections
        self._cursor_key = cursor_key  # () -> bytes: fetched lazily, a first page never needs it
        self._list_tag_key = list_tag_key
        self._reserve_percent = reserve_percent
        self._clock = clock

    def page(self, raw_query: str | None) -> dict[str, Any]:
        params = requests_in.query_params(raw_query)
        filters = {k: v for k, v in params.items() if k not in ("limit", "cursor")}
        unknown = [k for k in filters if k not in ("status", "auth_mode") and not k.startswith("tag.")]
        if unknown:  # not named: a parameter name is the caller's text
            raise InvalidRequest("unknown filter: use status, auth_mode or tag.<key>", code="unsupported_filter")
        if len(filters) > 1:
            raise InvalidRequest("give one filter at a time (each is served by its own index)",
                                 code="unsupported_filter")
        limit_text = requests_in.single(params, "limit", required=False, max_length=3)
        if limit_text is None:
            limit = DEFAULT_LIMIT
        elif not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}", code="invalid_limit")
        else:
            limit = int(limit_text)
        partitions, filter_text = self._partitions(filters)
        cursor = requests_in.single(params, "cursor", required=False)
        phase, start_key = self._open_cursor(cursor, filter_text) if cursor is not None else (0, None)
        if phase >= len(partitions):
            raise _invalid_cursor()

        # A partition that ends before the page is full hands the rest of the page to the next
        # one (unfiltered: active, then needs_reauth): at most one Query per partition.
        connections, next_cursor = [], None
        while phase < len(partitions):
            index, key_name, key_value = partitions[phase]
            found, last_key = self._connections.list_page(index, key_name, key_value,
                                                          limit=limit - len(connections), start_key=start_key)
            connections += found
            if last_key is None:
                phase, start_key = phase + 1, None
            if len(connections) >= limit or last_key is not None:
                if last_key is not None or phase < len(partitions):
                    next_cursor = self._seal_cursor(phase, last_key or {}, filter_text)
                break
        # The page's quota groups' records: one more BatchGetItem, only when a connection has a group.
        records = self._connections.quota_records(sorted({c.quota_group for c in connections if c.quota_group}))
        now = self._clock()
        return {"connections": [connection_status(c, records.get(c.quota_group), reserve_percent=self._reserve_percent,
                                                  now=now) for c in connections],
                "next_cursor": next_cursor}

    def _partitions(self, filters: dict[str, list[str]]) -> tuple[list[tuple[str, str, str]], str]:
        if not filters:
            return [("status-index", "status", s) for s in STATUSES], ""
        (name, values), = filters.items()
        value = requests_in.single(filters, name, max_length=255, label="filter")
        if name == "status":
            if value not in STATUSES:
                raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", code="invalid_filter")
            return [("status-index", "status", value)], f"status={value}"
        if name == "auth_mode":
            if value not in AUTH_MODES:
                raise InvalidRequest(f"auth_mode must be one of {', '.join(AUTH_MODES)}", code="invalid_filter")
            return [("mode-index", "auth_mode", value)], f"auth_mode={value}"
        key = name[len("tag."):]
        if not self._list_tag_key or key != self._list_tag_key:
            served = f"only tag.{self._list_tag_key}" if self._list_tag_key else "none (ListTagKey is empty)"
            raise InvalidRequest(f"that tag key is not indexed; tag filters served: {served}",
                                 code="unsupported_filter")
        if not value:
            raise InvalidRequest("a tag filter needs a value", code="invalid_filter")
        return [("tag-index", "list_tag", value)], f"tag.{key}={value}"

    def _mac(self, payload: bytes, filter_text: str) -> bytes:
        return hmac.new(self._cursor_key(), payload + b"\n" + filter_text.encode(), hashlib.sha256).digest()

    def _seal_cursor(self, phase: int, last_key: dict[str, Any], filter_text: str) -> str:
        payload = json.dumps({"p": phase, "k": last_key}, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload, filter_text))}"

    def _open_cursor(self, cursor: str, filter_text: str) -> tuple[int, dict[str, Any] | None]:
        try:
            payload_text, mac_text = cursor.split(".")
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except ValueError:  # binascii.Error is a ValueError
            raise _invalid_cursor() from None
        if not hmac.compare_digest(mac, self._mac(payload, filter_text)):
            raise _invalid_cursor()
        data = json.loads(payload)  # ours: signed above
        return int(data["p"]), (data["k"] or None)


def cursor_key_from_secret(secret_arn: str, fetch):
    """The cursor's HMAC key: a random value the stack generated, cached like the client secret."""
    def key() -> bytes:
        return fetch(secret_arn, max_age=CURSOR_KEY_CACHE_SECONDS).encode()
    return key
