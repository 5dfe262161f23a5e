"""The refresh worker's batch: the connections the scheduler put on the queue, refreshed a
few at a time so one slow provider answer does not serialise the batch.

A refresh's own outcome (refreshed, failed and cooled down, needs re-auth) is stored on the
connection, so its message is done either way. A message goes back to the queue (a batch
item failure) only when the refresh was not tried for lack of time, or a fault of the
broker's own services stopped it; SQS redelivers it and, after five receives, dead-letters it.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker.credentials.tokens import DEFERRED, TokenService
from broker.http import requests_in
from broker.platform.errors import InvalidRequest
from broker.platform.observability import count, logger

# Refreshes of one batch in flight at once. Each mostly waits on the provider; boto3 clients
# and the requests session are shared safely between these threads.
REFRESH_THREADS = 5
MALFORMED = "malformed"


def refresh_record(service: TokenService, record: dict[str, Any]) -> str:
    try:
        connection_id = requests_in.connection_id(json.loads(record["body"]).get("connection_id"))
    except (ValueError, AttributeError, KeyError, TypeError, InvalidRequest):
        logger.warning("dropping a malformed refresh message", extra={"message_id": record.get("messageId")})
        return MALFORMED
    outcome = service.refresh_if_due(connection_id)
    count(f"Worker{outcome.title().replace('_', '')}")
    return outcome


def refresh_batch(event: dict[str, Any], service: TokenService, *,
                  refresh: Callable[[TokenService, dict], str] = refresh_record) -> dict[str, list]:
    """SQS partial batch response: the records to retry."""
    records = event.get("Records") or []
    if not records:
        return {"batchItemFailures": []}
    retry: list[dict[str, str]] = []
    with ThreadPoolExecutor(max_workers=min(REFRESH_THREADS, len(records))) as pool:
        # Each task runs in a copy of this context: the invocation's deadline goes with it.
        futures = [pool.submit(contextvars.copy_context().run, refresh, service, record) for record in records]
        for record, future in zip(records, futures, strict=True):
            try:
                outcome = future.result()
            except Exception as exc:  # a fault of our own services: SQS tries the message again
                logger.error("refresh message failed", extra={"message_id": record.get("messageId"),
                                                               "exception_type": type(exc).__name__})
                outcome = None
            if outcome in (None, DEFERRED):
                retry.append({"itemIdentifier": record["messageId"]})
    if retry:
        count("WorkerReturned", len(retry))
    return {"batchItemFailures": retry}
