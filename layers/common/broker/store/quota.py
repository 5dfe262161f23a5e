"""Quota groups and priorities: Insightly's daily limit belongs to the Insightly
instance, so the connections of one customer (several users' keys or grants) share it.

A connection may carry a `quota_group` (a SaaS sets it to its customer's id). The group's
connections share one quota record: the last X-RateLimit-* observed, the proxy's local 429
window (`throttled_until`) and the alert already sent (`quota_alert`). The record of a
connection without a group is its own item, as before; a group's record is the item
`#quota:<group>` in the Connections table ("#" is outside the connection_id pattern, so no
request names it, and it carries no index key, so no listing or due-time query meets it).

Calls have a priority: `interactive` (a person waits; the default) or `background` (syncs,
and the broker's own scheduled key checks). Once the group's last observed remaining is at
or below BackgroundQuotaReservePercent of its limit, background calls are refused locally
(429 `quota_reserved`) until the next UTC midnight; interactive calls go on until the quota
is used up.

Writes: only when the quota rules below say so (should_write, plus the reserve line),
conditional on not replacing a fresher or lower figure, so concurrent writers of one group
never lift a throttle or a reserve another one just recorded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from broker.platform.errors import BrokerError, InvalidRequest
from broker.platform.outbound import parse_retry_after
from broker.store.labels import MAX_TAG_VALUE

if TYPE_CHECKING:
    from broker.store.items import Connection

GROUP_KEY_PREFIX = "#quota:"
PRIORITY_HEADER = "x-broker-priority"
INTERACTIVE, BACKGROUND = "interactive", "background"
PRIORITIES = (INTERACTIVE, BACKGROUND)
DAY = 86400
# The alerts in rank order, and the events they are worth (QuotaLow, QuotaExhausted).
ALERT_RANK = {None: 0, "low": 1, "exhausted": 2}


def check_quota_group(value: Any) -> str:
    """A quota group as given (PATCH, connect session, PUT api-key): what a tag value may be,
    but not empty. The message never repeats the input."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TAG_VALUE:
        raise InvalidRequest(f"quota_group must be a string of 1 to {MAX_TAG_VALUE} characters, or null to "
                             "leave the group", code="invalid_quota_group")
    return value


def optional_quota_group(data: Mapping[str, Any]) -> str | None:
    """quota_group of a connect request body: None when absent (a re-connect keeps the group)."""
    return check_quota_group(data["quota_group"]) if data.get("quota_group") is not None else None


def group_key(group: str) -> str:
    return GROUP_KEY_PREFIX + group


def priority(headers: Mapping[str, str] | None) -> str:
    """X-Broker-Priority of a proxied call: interactive (the default) or background."""
    values = [v for k, v in (headers or {}).items() if str(k).lower() == PRIORITY_HEADER]
    if not values:
        return INTERACTIVE
    value = str(values[0]).strip().lower()
    if value not in PRIORITIES:
        raise InvalidRequest("X-Broker-Priority must be interactive or background", code="invalid_priority")
    return value


def next_utc_midnight(now: float) -> int:
    return (int(now) // DAY + 1) * DAY


def reserve_reached(rate: RateLimit | None, percent: int, now: float) -> bool:
    """Whether background work must stop: an observation of today (UTC) shows remaining at or
    under `percent` of the limit. Yesterday's figure says nothing about today's quota."""
    if not percent or rate is None or not rate.limit or rate.remaining is None:
        return False
    if rate.observed_at < next_utc_midnight(now) - DAY:
        return False
    return rate.remaining * 100 <= rate.limit * percent


@dataclass(frozen=True)
class QuotaRecord:
    """The quota a connection shares with its group (or keeps alone)."""

    key: str  # the item that holds it: the connection's id, or #quota:<group>
    group: str | None = None
    rate_limit: dict[str, int] | None = None  # {limit, remaining, observed_at}
    throttled_until: int | None = None
    quota_alert: str | None = None

    @classmethod
    def of_connection(cls, conn: Connection) -> QuotaRecord:
        """A connection without a group: its own item's fields."""
        return cls(conn.connection_id, None, conn.rate_limit, conn.throttled_until, conn.quota_alert)

    @classmethod
    def from_attributes(cls, group: str, data: Mapping[str, Any] | None) -> QuotaRecord:
        """A group's record from its item's (deserialised) attributes; None: nothing seen yet."""
        data = data or {}
        rate = data.get("rate_limit")
        return cls(group_key(group), group,
                   {k: int(v) for k, v in rate.items() if v is not None} if rate else None,
                   int(data["throttled_until"]) if data.get("throttled_until") is not None else None,
                   data.get("quota_alert"))

    @property
    def rate(self) -> RateLimit | None:
        rate = self.rate_limit
        return RateLimit(rate.get("limit"), rate.get("remaining"), rate.get("observed_at", 0)) if rate else None

    def rate_headers(self) -> dict[str, str]:
        """The X-RateLimit-* values last observed, for an answer the broker makes itself."""
        rate = self.rate_limit or {}
        return {name: str(rate[field]) for name, field in (("X-RateLimit-Limit", "limit"),
                                                           ("X-RateLimit-Remaining", "remaining"))
                if rate.get(field) is not None}

    def exhausted(self, now: float) -> bool:
        rate = self.rate
        return ((self.throttled_until is not None and now < self.throttled_until)
                or (rate is not None and rate.is_exhausted() and rate.observed_at + DAY > now))

    def view(self, reserve_percent: int, now: float) -> dict[str, Any] | None:
        """The status JSON's `quota`: None until Insightly's headers were seen."""
        if not self.rate_limit:
            return None
        rate = self.rate
        return {"limit": rate.limit, "remaining": rate.remaining, "observed_at": rate.observed_at,
                "reserve_reached": reserve_reached(rate, reserve_percent, now), "exhausted": self.exhausted(now)}


def quota_change(alert: str | None, rate: RateLimit | None) -> tuple[dict[str, Any], str | None]:
    """What an observed quota changes on its record (`alert`: the alert already sent), and the
    event it is worth: QuotaLow once when remaining drops under 10 % of the limit,
    QuotaExhausted once at 0 (or a 429); both re-armed when the quota is back above 10 %."""
    if rate is None:
        return {}, None
    new = "exhausted" if rate.is_exhausted() else "low" if rate.is_low() else None
    event = None
    if ALERT_RANK[new] > ALERT_RANK.get(alert, 0):
        from broker.platform.lifecycle import QUOTA_EXHAUSTED, QUOTA_LOW

        event = QUOTA_EXHAUSTED if new == "exhausted" else QUOTA_LOW
    return {"rate_limit": rate.as_dict(), "quota_alert": new}, event


class QuotaExhaustedHere(BrokerError):
    """The broker answers Insightly's 429 itself: the group's quota is used up until the throttle ends."""

    status = 429
    code = "provider_quota_exhausted"
    reason = "exhausted"

    def __init__(self, retry_after: int, record: QuotaRecord):
        super().__init__("Insightly's daily API limit for this account is used up; retry after the time given")
        self.retry_after = retry_after
        self.headers = record.rate_headers()


class QuotaReserved(BrokerError):
    """A background call refused locally: what is left of the day's quota is kept for
    interactive calls (BackgroundQuotaReservePercent)."""

    status = 429
    code = "quota_reserved"
    reason = "reserved"

    def __init__(self, record: QuotaRecord, now: float):
        super().__init__("the rest of today's Insightly quota is kept for interactive calls; background calls "
                         "may resume after the time given (the next UTC midnight)")
        self.retry_after = max(1, math.ceil(next_utc_midnight(now) - now))
        self.headers = record.rate_headers()


# -- what Insightly's X-RateLimit-* headers said ----------------------------------------------

_RATE_HEADER = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class RateLimit:
    """X-RateLimit-Limit / X-RateLimit-Remaining as seen at observed_at (epoch seconds)."""

    limit: int | None
    remaining: int | None
    observed_at: int

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, now: float) -> RateLimit | None:
        """None when neither header is present and a plain non-negative integer."""
        def number(name: str) -> int | None:
            value = (headers.get(name) or "").strip()
            return int(value) if _RATE_HEADER.fullmatch(value) else None

        limit, remaining = number("X-RateLimit-Limit"), number("X-RateLimit-Remaining")
        if limit is None and remaining is None:
            return None
        return cls(limit=limit, remaining=remaining, observed_at=int(now))

    def is_low(self) -> bool:
        """Remaining below 10 % of the limit."""
        return self.limit is not None and self.remaining is not None and self.remaining * 10 < self.limit

    def is_exhausted(self) -> bool:
        return self.remaining == 0

    def as_dict(self) -> dict[str, int]:
        """As stored on the connection: the headers Insightly sent, and when."""
        return {k: v for k, v in (("limit", self.limit), ("remaining", self.remaining),
                                  ("observed_at", self.observed_at)) if v is not None}


# -- the rules of the quota state: when to throttle, when a write is worth it ------------------

MAX_RETRY_AFTER = 24 * 3600
WRITE_EVERY_SECONDS = 60
PROBE_SECONDS = 30


@dataclass(frozen=True)
class QuotaState:
    """What the connection item records about Insightly's quota (epoch seconds)."""

    throttled_until: float | None = None
    rate_limit: RateLimit | None = None
    last_written_at: float | None = None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now (the outbound parser, capped at 24 h for the daily
    quota); anything unreadable is None (ignored)."""
    seconds = parse_retry_after(value, now=datetime.fromtimestamp(now, timezone.utc), cap=MAX_RETRY_AFTER)
    return None if seconds is None else float(seconds)


def locally_throttled(state: QuotaState, now: float) -> int | None:
    """Seconds to put in Retry-After when the broker must answer 429 itself, else None."""
    if state.throttled_until is not None and now < state.throttled_until:
        return max(1, math.ceil(state.throttled_until - now))
    return None


def probe_claim(state: QuotaState, now: float) -> QuotaState | None:
    """After a throttle has passed, the state that lets exactly one caller probe: store it
    with a condition on the old `throttled_until`; the caller whose write wins calls
    Insightly, the others are answered locally until the probe's answer is recorded.
    None when no throttle is pending (nothing to claim)."""
    if state.throttled_until is None or now < state.throttled_until:
        return None
    return replace(state, throttled_until=now + PROBE_SECONDS)


def after_response(state: QuotaState, *, status: int, retry_after: str | None,
                   observed: RateLimit | None, now: float, backoff_seconds: int) -> QuotaState:
    """The quota state after Insightly answered. `observed` is the rate limit parsed from
    the answer's headers (by the Insightly client), None when it sent none.

    A 429, or a remaining count of 0, throttles until Retry-After (when readable) or
    now + backoff_seconds (QuotaBackoffSeconds). Any other answer ends a throttle (it was
    the probe's)."""
    rate_limit = observed if observed is not None else state.rate_limit
    exhausted = status == 429 or (observed is not None and observed.is_exhausted())
    if exhausted:
        wait = retry_after_seconds(retry_after, now)
        until = now + (wait if wait is not None else backoff_seconds)
        return replace(state, throttled_until=until, rate_limit=rate_limit)
    return replace(state, throttled_until=None, rate_limit=rate_limit)


def _step(rate_limit: RateLimit | None) -> int | None:
    if rate_limit is None or not rate_limit.limit or rate_limit.remaining is None:
        return None
    return math.floor(10 * max(rate_limit.remaining, 0) / rate_limit.limit)


def should_write(previous: QuotaState, observed: QuotaState, now: float) -> bool:
    """Whether to write `observed` over `previous` (what the item holds): when a throttle
    starts or ends (a 429, remaining 0, a probe's success), when the remaining count
    crosses a 10 % step, or when the stored figure is a minute old and has changed.
    Everything else costs no DynamoDB write."""
    if observed.throttled_until != previous.throttled_until:
        return True
    if observed.rate_limit is None:
        return False
    if _step(observed.rate_limit) != _step(previous.rate_limit):
        return True
    same = (previous.rate_limit is not None
            and (previous.rate_limit.limit, previous.rate_limit.remaining)
            == (observed.rate_limit.limit, observed.rate_limit.remaining))
    stale = previous.last_written_at is None or now - previous.last_written_at >= WRITE_EVERY_SECONDS
    return stale and not same
