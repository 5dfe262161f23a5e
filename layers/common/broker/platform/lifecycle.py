"""Lifecycle events on the broker's EventBridge bus, so the SaaS hears when a connection
changes: Connected, ConnectFailed, RefreshFailed, NeedsReauth, Recovered, Deleted, QuotaLow, QuotaExhausted;
and, for the operator, ClientRejected: the provider refuses the broker's own client credentials (no connection id).

An event carries the connection id, its status, a reason code, the time, the
connection's tags and its quota group (QuotaLow/QuotaExhausted are sent once per group):
never a credential. Emitting is best effort: the state change it reports is already stored, and
a failed emit is logged and counted rather than undoing it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from botocore.exceptions import BotoCoreError, ClientError

from broker.platform.observability import count, logger

SOURCE = "insightly-connect"
CONNECTED, REFRESH_FAILED, NEEDS_REAUTH, RECOVERED, DELETED = (
    "Connected", "RefreshFailed", "NeedsReauth", "Recovered", "Deleted")
CLIENT_REJECTED = "ClientRejected"
# A connect attempt (OAuth callback or key page) ended in an error; reason is the error code.
CONNECT_FAILED = "ConnectFailed"
# The Insightly account's daily API quota, as its X-RateLimit-* headers and 429s showed it.
QUOTA_LOW, QUOTA_EXHAUSTED = "QuotaLow", "QuotaExhausted"


class LifecycleEvents:
    def __init__(self, events_client, bus_name: str):
        self._events = events_client
        self._bus = bus_name

    def emit(self, detail_type: str, *, connection_id: str | None, status: str, reason: str | None,
             at: int, tags: dict[str, str] | None = None, quota_group: str | None = None) -> None:
        if not self._bus:
            return  # no bus configured (a bare test or a deployment without events)
        detail = {"connection_id": connection_id, "status": status, "reason": reason, "tags": tags or {},
                  "quota_group": quota_group,
                  "at": datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")}
        try:
            answer = self._events.put_events(Entries=[{
                "Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail),
                "EventBusName": self._bus,
            }])
            failed = answer.get("FailedEntryCount", 0)
        except (ClientError, BotoCoreError):
            failed = 1
        if failed:
            count("EventsNotDelivered")
            logger.warning("lifecycle event not delivered",
                           extra={"connection_id": connection_id, "detail_type": detail_type})
