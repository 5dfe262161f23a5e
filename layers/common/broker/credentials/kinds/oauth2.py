"""The oauth2 kind: an OAuth 2.0 token set, renewed with its refresh token."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from broker.credentials.client_credentials import ClientCredentialSource
from broker.credentials.insightly import Auth, BearerAuth
from broker.credentials.kinds import OAUTH2, Renewal
from broker.credentials.provider import ProviderClient, TokenSet
from broker.credentials.vault import PURPOSE
from broker.platform.config import Settings
from broker.platform.errors import BrokerError, ProviderRejected, ProviderUnavailable
from broker.platform.observability import count, logger, metrics
from broker.store.connections import Connection
from broker.store.quota import QuotaRecord

MAX_PROVIDER_ATTEMPTS = 3
# OAuth answers that no retry will fix: this connection's grant is gone. invalid_client is
# not one of them: it is the deployment's fault, not the connection's (docs/architecture.md,
# "What the broker holds to", 9).
REJECTED = frozenset({"invalid_grant", "no_refresh_token"})


def expiry_and_due(expires_in: int | None, can_refresh: bool, now: int, lead: int, *, keep_alive: int = 0,
                   jitter: Callable[[float, float], float] = random.uniform) -> tuple[int | None, int | None]:
    """When the access token expires, and when the background refresh should renew it.

    Due = expiry - lead - a random spread (up to a tenth of the lifetime), so connections
    made together do not all come due together; never before half the lifetime has
    passed; and at least every `keep_alive` seconds, for tokens without expires_in and for
    refresh tokens that expire when unused.
    """
    expires_at = None if expires_in is None else now + expires_in
    if not can_refresh:
        return expires_at, None
    if expires_in is None:
        return None, (now + keep_alive if keep_alive else None)
    spread = int(jitter(0, min(lead, expires_in / 10)))
    due = max(now + expires_in // 2, expires_at - lead - spread)
    return expires_at, (min(due, now + keep_alive) if keep_alive else due)


def backoff(attempt: int, *, base: float = 0.5, cap: float = 4.0,
            jitter: Callable[[float, float], float] = random.uniform) -> float:
    """Capped exponential backoff with full jitter."""
    return jitter(0, min(cap, base * 2 ** attempt))


def sealed_fields(tokens: TokenSet, previous: dict | None = None) -> dict:
    """The token set as it is encrypted; a refresh without a new refresh token keeps the old one."""
    previous = previous or {}
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token or previous.get("refresh_token"),
        "token_type": tokens.token_type,
        "scope": tokens.scope if tokens.scope is not None else previous.get("scope"),
    }


def revoke_token_set(provider: ProviderClient, credentials: ClientCredentialSource, sealed: dict[str, Any]) -> None:
    """RFC 7009: the refresh token when there is one (it takes the grant with it), else the
    access token. Raises the provider's error; callers decide whether that matters."""
    token, hint = ((sealed["refresh_token"], "refresh_token") if sealed.get("refresh_token")
                   else (sealed["access_token"], "access_token"))
    credentials.call(lambda creds: provider.revoke(creds, token, hint))
    count("ConnectionsRevoked")


class OAuth2Kind:
    auth_mode = OAUTH2
    purpose = PURPOSE
    retry_after_renewal = True
    gives_up_after_failing_days = True
    spends_quota = False

    def __init__(self, settings: Settings, *, provider: ProviderClient, credentials: ClientCredentialSource,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float, float], float] = random.uniform):
        self.settings = settings
        self.provider = provider
        self.credentials = credentials
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter

    def authorization(self, sealed: dict[str, Any]) -> Auth:
        return BearerAuth(sealed["access_token"])

    def api_base_url(self, conn: Connection) -> str:
        return self.settings.provider.api_base_url  # one API for every OAuth connection

    def bound(self, conn: Connection) -> dict[str, Any] | None:
        return None  # its destination is configuration only

    def token_answer(self, conn: Connection, sealed: dict[str, Any]) -> dict[str, Any]:
        return {"access_token": sealed["access_token"], "token_type": sealed.get("token_type") or "Bearer"}

    def fresh(self, conn: Connection, now: int) -> bool:
        return conn.expires_at is None or conn.expires_at - self.settings.token_skew_seconds > now

    def postponed_until(self, conn: Connection, now: int, quota: QuotaRecord) -> int | None:
        return None  # a due refresh always runs: the access token is about to expire

    def rejected_reason(self, exc: BrokerError) -> str | None:
        oauth_error = getattr(exc, "oauth_error", None)
        return oauth_error if isinstance(exc, ProviderRejected) and oauth_error in REJECTED else None

    def renew(self, conn: Connection, sealed: dict[str, Any], *, end: float) -> Renewal:
        """One refresh at the provider, retried on transient faults while a whole further
        call still fits before `end` (the lease and the invocation, less the write)."""
        if not sealed.get("refresh_token"):
            raise ProviderRejected("this connection has no refresh token", oauth_error="no_refresh_token")
        tokens = self._call_refresh(sealed["refresh_token"], end)
        new = sealed_fields(tokens, sealed)
        expires_at, due = expiry_and_due(tokens.expires_in, bool(new["refresh_token"]), int(self.clock()),
                                         self.settings.refresh_lead_seconds,
                                         keep_alive=self.settings.keep_alive_refresh_seconds, jitter=self.jitter)
        return Renewal(sealed=new, expires_at=expires_at, next_due_at=due)

    def revoke(self, conn: Connection, sealed: dict[str, Any]) -> None:
        if not self.settings.provider.revocation_url:
            return
        try:
            revoke_token_set(self.provider, self.credentials, sealed)
        except BrokerError as exc:
            # Deleting is what the SaaS asked for; a provider that cannot revoke must not block it.
            if getattr(exc, "oauth_error", None) == "invalid_client":
                count("ClientRejected")
            logger.warning("revocation failed; deleting anyway",
                           extra={"connection_id": conn.connection_id, "error": exc.code})

    def _call_refresh(self, refresh_token: str, end: float) -> TokenSet:
        call_time = self.settings.http_connect_timeout + self.settings.http_read_timeout
        attempt = 0
        while True:
            called = time.monotonic()
            try:
                return self.credentials.call(lambda creds: self.provider.refresh(creds, refresh_token))
            except ProviderUnavailable as exc:
                attempt += 1
                wait = max(exc.retry_after or 0, backoff(attempt, jitter=self.jitter))
                if attempt >= MAX_PROVIDER_ATTEMPTS or time.monotonic() + wait + call_time > end:
                    raise
                count("ProviderRetries")
                self.sleep(wait)
            finally:
                metrics.add_metric(name="ProviderLatency", unit=MetricUnit.Milliseconds,
                                   value=(time.monotonic() - called) * 1000)
