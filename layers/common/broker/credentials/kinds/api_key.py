"""The api_key kind: an Insightly API key over HTTP Basic at the account's pod.

API keys do not expire; one regenerated in Insightly ("Generate New API Key") only shows when
it is used. So "renewing" is a check: Users/Me with the key, every ApiKeyCheckSeconds, unless
the account's daily quota is used up or the key was seen working within the interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from broker.credentials.insightly import ApiAccessDenied, ApiKeyAuth, ApiKeyRejected, ApiUrlTemplate, Auth, InsightlyApi
from broker.credentials.kinds import API_KEY, Renewal
from broker.credentials.vault import API_KEY_PURPOSE, TokenVault
from broker.platform.config import Settings
from broker.platform.errors import BrokerError
from broker.platform.observability import count
from broker.store.connections import Connection
from broker.store.quota import QuotaRecord, next_utc_midnight, reserve_reached

QUOTA_WINDOW_SECONDS = 86400  # Insightly's daily limit counts over a moving 24 hours


class ApiKeyKind:
    auth_mode = API_KEY
    purpose = API_KEY_PURPOSE
    retry_after_renewal = False
    gives_up_after_failing_days = False
    spends_quota = True  # each check is a Users/Me call

    def __init__(self, settings: Settings, *, api: InsightlyApi, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.api = api
        self.clock = clock
        self.template = ApiUrlTemplate(settings.insightly_api_url_template)

    def authorization(self, sealed: dict[str, Any]) -> Auth:
        return ApiKeyAuth(sealed["api_key"])

    def api_base_url(self, conn: Connection) -> str:
        # The host from the template, the pod the key was sealed with (TokenVault refuses to
        # open the key when the item's pod is not that one); the stored api_base_url is a
        # display copy nothing reads. A key sealed before pods were bound is sent to its stored
        # pod, still only on the template's host, and re-sealed with it at its next check.
        if not TokenVault.binds(conn.credentials):
            count("UnboundPodUsed")
        return self.template.base_url(conn.pod)

    def bound(self, conn: Connection) -> dict[str, Any] | None:
        return {"pod": conn.pod}

    def token_answer(self, conn: Connection, sealed: dict[str, Any]) -> dict[str, Any]:
        return {"api_key": sealed["api_key"]}

    def fresh(self, conn: Connection, now: int) -> bool:
        return True  # a key does not expire; a revoked one is found by the checks and the proxy

    def next_check(self, now: int) -> int | None:
        seconds = self.settings.api_key_check_seconds
        return now + seconds if seconds else None

    def postponed_until(self, conn: Connection, now: int, quota: QuotaRecord) -> int | None:
        """Each check spends one of the account's daily requests, as background work: none
        while the group's last answer said the quota is used up (or the proxy holds it
        throttled), none while it is in the reserve kept for interactive calls (until the next
        UTC midnight), and none when the key was seen working lately."""
        interval = self.settings.api_key_check_seconds
        if not interval:
            return None
        rate = quota.rate_limit or {}
        if rate.get("remaining") == 0 and rate.get("observed_at", 0) + QUOTA_WINDOW_SECONDS > now:
            return rate["observed_at"] + QUOTA_WINDOW_SECONDS
        if quota.throttled_until is not None and quota.throttled_until > now:
            return quota.throttled_until
        if reserve_reached(quota.rate, self.settings.background_quota_reserve_percent, now):
            return next_utc_midnight(now)
        if conn.last_used_at and conn.last_used_at + interval > now:
            return conn.last_used_at + interval
        return None

    def rejected_reason(self, exc: BrokerError) -> str | None:
        if isinstance(exc, ApiKeyRejected):
            return "api_key_rejected"
        if isinstance(exc, ApiAccessDenied):
            return "api_access_denied"
        return None

    def renew(self, conn: Connection, sealed: dict[str, Any], *, end: float) -> Renewal:
        """One Users/Me call, never retried: the next scheduled check is the retry, and each
        call costs the account a request of its daily quota."""
        _user, rate = self.api.users_me(self.api_base_url(conn), self.authorization(sealed))
        now = int(self.clock())
        # A key sealed before pods were bound is sealed again, now with its pod.
        return Renewal(sealed=None if TokenVault.binds(conn.credentials) else sealed, expires_at=None,
                       next_due_at=self.next_check(now), rate_limit=rate, checked_at=now)

    def revoke(self, conn: Connection, sealed: dict[str, Any]) -> None:
        """Insightly has no API to revoke a key (the user regenerates it); deleting forgets it."""
