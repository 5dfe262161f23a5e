"""The scheduled run: find what is due through the sparse, sharded index and hand the ids
to the refresh queue. It reads no connection item and no token; workers do the refreshing,
in parallel, at the concurrency the queue's event source allows."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Protocol

from .connections import ConnectionStore
from .observability import count, logger

# Stop taking new work with this much time left, so the run ends cleanly before its timeout.
RESERVE_SECONDS = 10
SQS_BATCH = 10
SKIPPED = {"skipped": "another scheduled run is in progress"}


class RunLease(Protocol):  # the flow table's (FlowStore)
    def claim_scheduled_run(self, run_id: str, *, now: int, until: int) -> bool: ...
    def release_scheduled_run(self, run_id: str) -> None: ...


def one_run_at_a_time(lease: RunLease, run_id: str, run: Callable[[], Any], *, now: int,
                      seconds_left: Callable[[], float]) -> Any:
    """run() unless another scheduled run holds the lease (its timeout equals the schedule,
    and Lambda retries a failed run: they could overlap). The lease lasts until this
    invocation's timeout at most, so a run that dies holding it blocks no one for longer."""
    if not lease.claim_scheduled_run(run_id, now=now, until=now + math.ceil(seconds_left())):
        logger.info("another scheduled run is in progress; this one does nothing")
        count("ScheduledRunsSkipped")
        return SKIPPED
    try:
        return run()
    finally:
        try:
            lease.release_scheduled_run(run_id)
        except Exception as fault:  # noqa: BLE001 - the lease lapses at its end anyway
            # A failed release must neither fail a run that worked nor hide why one failed.
            logger.warning("scheduled run lease not released; it lapses at the run's timeout",
                           extra={"exception_type": type(fault).__name__})


def enqueue_due(store: ConnectionStore, sqs, queue_url: str, *, shards: int, now: int,
                seconds_left: Callable[[], float]) -> dict[str, int]:
    enqueued = failed = 0
    batch: list[str] = []

    def send() -> None:
        nonlocal enqueued, failed
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"connection_id": cid, "due_by": now})}
            for i, cid in enumerate(batch)])
        enqueued += len(answer.get("Successful", []))
        failed += len(answer.get("Failed", []))  # still due: the next run enqueues them again
        batch.clear()

    for shard in range(shards):
        for connection_id in store.due_connection_ids(shard, now=now):
            batch.append(connection_id)
            if len(batch) == SQS_BATCH:
                send()
            if seconds_left() < RESERVE_SECONDS:
                logger.warning("scheduled run out of time; the rest stays due for the next run")
                break
        else:
            continue
        break
    if batch:
        send()
    count("ConnectionsEnqueued", enqueued)
    logger.info("scheduled run finished", extra={"enqueued": enqueued, "not_enqueued": failed})
    return {"enqueued": enqueued, "not_enqueued": failed}
