"""Credential kinds: everything the broker knows about one way of authenticating to Insightly.

A connection holds either an OAuth token set (`oauth2`) or an Insightly API key (`api_key`).
Each kind says how its credential authenticates a request, how it is renewed (a refresh) or
checked (Users/Me), which provider answers mean "no longer accepted", and what /token hands
out. The token service, the worker and the routes call a kind chosen once from the item's
`auth_mode` and read the same whichever kind is behind it (the pattern of Powertools'
BaseProvider: the shared flow lives in TokenService, each kind writes only what differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from broker.credentials.insightly import Auth
from broker.platform.errors import BrokerError, InvalidRequest
from broker.store.connections import Connection
from broker.store.quota import QuotaRecord, RateLimit

OAUTH2, API_KEY = "oauth2", "api_key"
AUTH_MODES = (OAUTH2, API_KEY)


# No generated __repr__: it would print `sealed`, the new credential in plaintext. No __eq__
# either (nothing compares two). Each generated method is an exec() in every cold start.
@dataclass(frozen=True, eq=False, repr=False)
class Renewal:
    """The outcome of a successful refresh or check, to be stored under the lease."""

    sealed: dict[str, Any] | None  # a new credential to seal, or None: the stored one stands
    expires_at: int | None
    next_due_at: int | None  # next refresh or check; None takes it off the due index
    rate_limit: RateLimit | None = None
    checked_at: int | None = None


class CredentialKind(Protocol):
    auth_mode: str
    purpose: str  # the vault's encryption-context purpose for this kind's ciphertexts
    # Whether a request Insightly answered 401 is worth sending again after a renewal: a
    # refreshed access token may work where the old one did not; a checked key is the same key.
    retry_after_renewal: bool
    # Whether renewals failing for ReauthAfterFailingDays mark the connection needs_reauth: a
    # refresh token left unused that long may be gone; a key is only ever refused by a 401/403.
    gives_up_after_failing_days: bool
    # Whether a renewal spends a request of the Insightly instance's daily quota (a key check
    # calls Users/Me; a token refresh does not): such a scheduled renewal is background work.
    spends_quota: bool

    def authorization(self, sealed: dict[str, Any]) -> Auth:
        """How a request to Insightly is authenticated with this credential."""

    def api_base_url(self, conn: Connection) -> str:
        """Where this credential may be sent: derived now from configuration (and the pod the
        vault bound to the credential), never read from a stored URL."""

    def bound(self, conn: Connection) -> dict[str, Any] | None:
        """The item's plaintext attributes the credential's seal binds (TokenVault `bound`)."""

    def token_answer(self, conn: Connection, sealed: dict[str, Any]) -> dict[str, Any]:
        """The kind's own fields of the /token answer."""

    def fresh(self, conn: Connection, now: int) -> bool:
        """Whether /token can hand the stored credential out without renewing it first."""

    def renew(self, conn: Connection, sealed: dict[str, Any], *, end: float) -> Renewal:
        """Refresh (oauth2) or check (api_key) at the provider, before monotonic time `end`."""

    def rejected_reason(self, exc: BrokerError) -> str | None:
        """The needs_reauth reason when the provider's answer means this connection's
        credential is no longer accepted; None for anything else (transient or ours)."""

    def postponed_until(self, conn: Connection, now: int, quota: QuotaRecord) -> int | None:
        """A later due time when the scheduled renewal should not run now; None to run it.
        `quota`: the connection's quota record (its group's, for a kind that spends_quota)."""

    def revoke(self, conn: Connection, sealed: dict[str, Any]) -> None:
        """Give the credential up at the provider where that is possible (best effort)."""


def check_auth_mode(value: Any, allowed: tuple[str, ...]) -> str:
    """An auth_mode a caller asked for: one this deployment offers (AuthModes)."""
    if value is None:
        return allowed[0]
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(f"auth_mode must be one of: {', '.join(allowed)}", code="invalid_auth_mode")
    return value
