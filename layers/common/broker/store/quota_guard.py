"""The quota guard over records a group shares: read a connection's record, admit a call
(or answer the local 429), and record what Insightly's answer showed, writing only when the
quota rules (store.quota) say it matters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.store import quota
from broker.store.quota import (
    BACKGROUND,
    QuotaExhaustedHere,
    QuotaRecord,
    QuotaReserved,
    QuotaState,
    RateLimit,
    quota_change,
    reserve_reached,
)

if TYPE_CHECKING:
    from broker.store.items import Connection
    from broker.store.quota_records import QuotaRecords

# (detail type, the connection whose call saw it, the record): a lifecycle event naming the group.
Emit = Callable[[str, "Connection", QuotaRecord], None]
# A grouped connection's last_used_at (a key seen working postpones its scheduled check) is
# its own write, so it is refreshed at most this often.
LAST_USED_EVERY_SECONDS = 3600


class QuotaGroups:
    """The quota guard over records shared by a group: read, admit, observe."""

    def __init__(self, connections: QuotaRecords, *, reserve_percent: int, backoff_seconds: int = 900,
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
        state = QuotaState(throttled_until=record.throttled_until, rate_limit=record.rate)
        wait = quota.locally_throttled(state, now)
        if wait is None and priority == BACKGROUND and reserve_reached(record.rate, self.reserve_percent, now):
            raise QuotaReserved(record, now)
        if wait is None:
            probe = quota.probe_claim(state, now)
            if probe is not None:
                until = int(probe.throttled_until)
                if not self.connections.claim_probe(record, until=until):
                    wait = quota.PROBE_SECONDS
                else:
                    record = dataclasses.replace(record, throttled_until=until)
        if wait is not None:
            raise QuotaExhaustedHere(wait, record)
        return record

    def observe(self, conn: Connection, record: QuotaRecord, *, status: int, rate: RateLimit | None,
                retry_after: str | None, now: int) -> None:
        """Record what an Insightly answer showed of the quota, when it matters: a throttle
        starts or ends, a 10 % step or the reserve line is crossed, or the figure is a minute
        old and changed (quota.should_write). Everything else costs no write."""
        if status == 429 and (rate is None or not rate.is_exhausted()):
            # Insightly's 429 is the daily quota: remaining is 0 whatever the headers said.
            rate = RateLimit(limit=rate.limit if rate else (record.rate_limit or {}).get("limit"), remaining=0,
                             observed_at=now)
        state = QuotaState(throttled_until=record.throttled_until, rate_limit=record.rate,
                                 last_written_at=(record.rate_limit or {}).get("observed_at"))
        observed = quota.after_response(state, status=status, retry_after=retry_after, observed=rate, now=now,
                                        backoff_seconds=self.backoff_seconds)
        worked = 200 <= status < 300
        own = record.group is None
        crossed = (reserve_reached(observed.rate_limit, self.reserve_percent, now)
                   != reserve_reached(state.rate_limit, self.reserve_percent, now))
        if not (quota.should_write(state, observed, now) or crossed):
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
