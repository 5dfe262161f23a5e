"""The broker's refusals as exceptions, one class per kind of answer a backend acts on.

Every broker error is `{"error": <code>, "message": <text>}` (docs/http-api.md#errors); API
Gateway's own answers (403 for a bad signature, 429 when throttled) are `{"message"}` and
have no code. The class is chosen by the code first, then by the status.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any


class BrokerError(Exception):
    """An answer of the broker (or of API Gateway in front of it) that is not a success.

    `code` is the broker's machine-readable error code (None for API Gateway's own answers),
    `retry_after` the seconds the answer asked to wait (None when it did not say)."""

    def __init__(self, status: int, code: str | None, message: str, *, retry_after: float | None = None,
                 response: Any = None):
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.response = response


class BadRequestError(BrokerError):
    """400 (or 413): the request was refused as it is; nothing was changed. Do not retry it."""


class AccessDeniedError(BrokerError):
    """403 from API Gateway: the call was not signed with credentials allowed to call this route."""


class NotFoundError(BrokerError):
    """404 `connection_not_found`: no such connection (never connected, or deleted)."""


class ConflictError(BrokerError):
    """409: the connection cannot serve this now (credentials unreadable, changed meanwhile, or
    stored by a newer release)."""


class NeedsReauthError(ConflictError):
    """409 `needs_reauth`: the user has to connect again (a new connect session, same connection id)."""


class ApiKeyRejectedError(BrokerError):
    """422 `api_key_rejected` / `api_access_denied`: Insightly refused the API key; nothing was stored."""


class QuotaExhaustedError(BrokerError):
    """429 `provider_quota_exhausted`: Insightly's daily API limit is used up; `retry_after` says
    when to try again."""


class QuotaReservedError(QuotaExhaustedError):
    """429 `quota_reserved`: a background call refused because the rest of the quota group's daily
    limit is kept for interactive calls."""


class ServerError(BrokerError):
    """5xx: the broker or the deployment failed (`misconfigured`, `internal_error`, ...)."""


class ClientRejectedError(ServerError):
    """503 `client_rejected`: the provider refused the broker's OAuth client credentials; a
    deployment fault (fix the client secret), not the connection's."""


class UnavailableError(ServerError):
    """A passing fault (502/503/504, or API Gateway throttling): try again later."""


_BY_CODE: dict[str, type[BrokerError]] = {
    "needs_reauth": NeedsReauthError,
    "connection_not_found": NotFoundError,
    "api_key_rejected": ApiKeyRejectedError,
    "api_access_denied": ApiKeyRejectedError,
    "provider_quota_exhausted": QuotaExhaustedError,
    "quota_reserved": QuotaReservedError,
    "client_rejected": ClientRejectedError,
}
_BY_STATUS: dict[int, type[BrokerError]] = {
    400: BadRequestError, 413: BadRequestError, 403: AccessDeniedError, 404: NotFoundError, 409: ConflictError,
    422: ApiKeyRejectedError, 429: UnavailableError, 502: UnavailableError, 503: UnavailableError,
    504: UnavailableError,
}


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for(status: int, body: bytes, headers: Any, *, code: str | None = None, response: Any = None) -> BrokerError:
    """The exception for a refused answer. `code` overrides the body's (the proxy's X-Broker-Error)."""
    message = ""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        code = code or (parsed.get("error") if isinstance(parsed.get("error"), str) else None)
        message = parsed.get("message") if isinstance(parsed.get("message"), str) else ""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or (ServerError if status >= 500 else BrokerError)
    return cls(status, code, message or f"HTTP {status}", retry_after=retry_after(headers.get("Retry-After")),
               response=response)
