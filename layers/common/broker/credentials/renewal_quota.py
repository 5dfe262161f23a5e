"""RenewalQuota: what a renewal's answer showed of the Insightly quota, and where it is kept.

A key check (Users/Me) spends a request of the daily quota and answers with X-RateLimit-*
headers; its 429 means the quota is spent. A connection without a quota group keeps what was
seen on its own item, written with the renewal or the failure itself; a grouped one shares
its group's record, observed through the quota guard after that write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.platform.config import Settings
from broker.store.connections import ACTIVE, Connection, ConnectionStore
from broker.store.quota import QuotaRecord, RateLimit, quota_change
from broker.store.quota_guard import QuotaGroups

# (detail type, connection, status=, reason=): a lifecycle event about one connection.
Emit = Callable[..., None]


class RenewalQuota:
    def __init__(self, settings: Settings, *, connections: ConnectionStore, emit: Emit):
        self.settings = settings
        self.connections = connections
        self.emit = emit

    def groups(self, *, backoff_seconds: int | None = None) -> QuotaGroups:
        """The quota guard over shared records; its QuotaLow/QuotaExhausted events name the group."""
        return QuotaGroups(self.connections, reserve_percent=self.settings.background_quota_reserve_percent,
                           backoff_seconds=backoff_seconds or self.settings.quota_backoff_seconds,
                           emit=lambda event, conn, record: self.emit(event, conn, status=ACTIVE, reason="quota"))

    def on_item(self, conn: Connection, rate: RateLimit | None) -> tuple[dict[str, Any], str | None]:
        """The quota fields an ungrouped connection's own write takes, and the event they are
        worth (emit it with after_write); a grouped connection's item takes none."""
        if conn.quota_group is not None:
            return {}, None
        return quota_change(conn.quota_alert, rate)

    def after_write(self, conn: Connection, record: QuotaRecord | None, event: str | None, *,
                    rate: RateLimit | None, status: int, retry_after: str | None, now: int) -> None:
        """Once the renewal or failure is stored: the event on_item found, or the group's record."""
        if event:
            self.emit(event, conn, status=ACTIVE, reason="quota")
        if conn.quota_group is None or rate is None:
            return
        groups = self.groups()
        with contextlib.suppress(ClientError, BotoCoreError):  # best effort: the connection's write is done
            groups.observe(conn, record or groups.record_of(conn), status=status, rate=rate,
                           retry_after=retry_after, now=now)
