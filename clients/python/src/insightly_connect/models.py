"""What the broker answers, as typed objects. `raw` keeps the whole JSON, fields added by a
newer broker included. Credentials stay out of `repr()`, so logging an object leaks none."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

AuthMode = Literal["oauth2", "api_key"]
Priority = Literal["interactive", "background"]

T = TypeVar("T")


def _time(value: Any) -> datetime | None:
    """ISO 8601 with a trailing Z (the broker's form) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _build(cls: type[T], data: dict[str, Any]) -> T:
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name == "raw":
            values["raw"] = data
        elif spec.name in data:
            value = data[spec.name]
            values[spec.name] = _time(value) if "datetime" in str(spec.type) else value
    return cls(**values)


@dataclass(frozen=True)
class ConnectSession:
    """Send the browser to `connect_url`; keep `session_id` in the user's own server-side session."""

    session_id: str
    connect_url: str
    auth_mode: AuthMode
    expires_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConnectSession:
        return _build(cls, data)


@dataclass(frozen=True)
class Token:
    """A credential that works now: call `{api_base_url}/<path>` with `Authorization: {authorization}`."""

    connection_id: str
    auth_mode: AuthMode
    api_base_url: str
    authorization: str = field(repr=False)
    expires_at: datetime | None = None
    access_token: str | None = field(default=None, repr=False)
    token_type: str | None = None
    api_key: str | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Token:
        return _build(cls, data)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization}


@dataclass(frozen=True)
class Connection:
    """The status JSON of a connection (docs/http-api.md); never a credential."""

    connection_id: str
    status: str
    auth_mode: AuthMode
    provider_user: dict[str, Any] | None = None
    scopes: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    quota_group: str | None = None
    pod: str | None = None
    api_base_url: str | None = None
    rate_limit: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    expires_at: datetime | None = None
    last_refreshed_at: datetime | None = None
    next_refresh_at: datetime | None = None
    last_checked_at: datetime | None = None
    connected_at: datetime | None = None
    created_at: datetime | None = None
    failing_since: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Connection:
        return _build(cls, data)
