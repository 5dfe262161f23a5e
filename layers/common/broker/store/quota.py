"""Quota groups and priorities (issue 19): Insightly's daily limit belongs to the Insightly
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

Writes: only when the proxy's thresholds say so (proxy.should_write, plus the reserve line),
conditional on not replacing a fresher or lower figure, so concurrent writers of one group
never lift a throttle or a reserve another one just recorded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.credentials.insightly import RateLimit
from broker.platform.errors import BrokerError, InvalidRequest
from broker.store.labels import MAX_TAG_VALUE

if TYPE_CHECKING:
    from broker.store.connections import Connection

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


# (detail type, the connection whose call saw it, the record): a lifecycle event naming the group.
Emit = Callable[[str, "Connection", QuotaRecord], None]
# A grouped connection's last_used_at (a key seen working postpones its scheduled check) is
# its own write, so it is refreshed at most this often.
LAST_USED_EVERY_SECONDS = 3600


class QuotaGroups:
    """The quota guard over records shared by a group: read, admit, observe."""

    def __init__(self, connections, *, reserve_percent: int, backoff_seconds: int = 900,
                 emit: Emit | None = None):
        self.connections = connections
        self.reserve_percent = reserve_percent
        self.backoff_seconds = backoff_seconds
        self.emit = emit

    def record_of(self, conn: Connection) -> QuotaRecord:
        """The record of a connection already read: its own fields, or its group's item (a read)."""
        if conn.quota_group is None:
            return QuotaRecord.of_connection(conn)
        return self.connections.quota_record(conn.quota_group)

    def admit(self, record: QuotaRecord, priority: str, now: int) -> QuotaRecord:
        """Let a call through, or raise the local 429: QuotaExhaustedHere while the group is
        throttled (for every priority), QuotaReserved for background work in the reserve.
        After a throttle has passed, one caller claims the probe (a conditional write) and
        gets the record as claimed; the others keep being answered here."""
        from broker.proxy import rules as proxy

        state = proxy.QuotaState(throttled_until=record.throttled_until, rate_limit=record.rate)
        wait = proxy.locally_throttled(state, now)
        if wait is None and priority == BACKGROUND and reserve_reached(record.rate, self.reserve_percent, now):
            raise QuotaReserved(record, now)
        if wait is None:
            probe = proxy.probe_claim(state, now)
            if probe is not None:
                until = int(probe.throttled_until)
                if not self.connections.claim_probe(record, until=until):
                    wait = proxy.PROBE_SECONDS
                else:
                    record = dataclasses.replace(record, throttled_until=until)
        if wait is not None:
            raise QuotaExhaustedHere(wait, record)
        return record

    def observe(self, conn: Connection, record: QuotaRecord, *, status: int, rate: RateLimit | None,
                retry_after: str | None, now: int) -> None:
        """Record what an Insightly answer showed of the quota, when it matters: a throttle
        starts or ends, a 10 % step or the reserve line is crossed, or the figure is a minute
        old and changed (proxy.should_write). Everything else costs no write."""
        from broker.proxy import rules as proxy

        if status == 429 and (rate is None or not rate.is_exhausted()):
            # Insightly's 429 is the daily quota: remaining is 0 whatever the headers said.
            rate = RateLimit(limit=rate.limit if rate else (record.rate_limit or {}).get("limit"), remaining=0,
                             observed_at=now)
        state = proxy.QuotaState(throttled_until=record.throttled_until, rate_limit=record.rate,
                                 last_written_at=(record.rate_limit or {}).get("observed_at"))
        observed = proxy.after_response(state, status=status, retry_after=retry_after, observed=rate, now=now,
                                        backoff_seconds=self.backoff_seconds)
        worked = 200 <= status < 300
        own = record.group is None
        crossed = (reserve_reached(observed.rate_limit, self.reserve_percent, now)
                   != reserve_reached(state.rate_limit, self.reserve_percent, now))
        if not (proxy.should_write(state, observed, now) or crossed):
            if worked and not own:
                self._mark_used(conn, now)
            return
        sets, event = quota_change(record.quota_alert, rate)
        remove = []
        if observed.throttled_until is None:
            remove.append("throttled_until")
        else:
            sets["throttled_until"] = int(observed.throttled_until)
        if worked and own:
            sets["last_used_at"] = now  # the key works: its next scheduled check can wait
        if not sets and not remove:
            return
        written = self.connections.record_quota(record, sets=sets, remove=remove, observed=rate,
                                                alert_event=event is not None)
        if worked and not own:
            self._mark_used(conn, now)
        if written and event and self.emit is not None:
            self.emit(event, conn, record)

    def _mark_used(self, conn: Connection, now: int) -> None:
        if conn.last_used_at is None or now - conn.last_used_at >= LAST_USED_EVERY_SECONDS:
            self.connections.mark_used(conn.connection_id, now=now)
