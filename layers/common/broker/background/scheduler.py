"""The scheduled run: find what is due through the sparse, sharded index and hand the ids
to the refresh queue. It reads no connection item and no token; workers do the refreshing,
in parallel, at the concurrency the queue's event source allows."""

from __future__ import annotations

import contextvars
import json
import math
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from broker.platform import aws
from broker.platform.observability import count, logger
from broker.store.indexes import ConnectionIndexes

# Stop taking new work with this much time left, so the run ends cleanly before its timeout.
RESERVE_SECONDS = 10
SQS_BATCH = 10
# SendMessageBatch calls in flight at once, and the batches each may have waiting: at 1M
# connections a run is mostly round trips. The client keeps a connection for each sender.
SENDERS = aws.MAX_POOL_CONNECTIONS
QUEUED_PER_SENDER = 2
MAX_READERS = 16  # one thread per due-index shard, up to this many
# Index items are keys only (~100 bytes): 1,000 a page is a tenth of a Query's 1 MB.
PAGE_SIZE = 1000
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


def enqueue_due(store: ConnectionIndexes, sqs, queue_url: str, *, shards: int, now: int,
                seconds_left: Callable[[], float], senders: int = SENDERS) -> dict[str, int]:
    """Every due id onto the queue once. Each shard is read by its own thread, page after page,
    and its batches of 10 go to `senders` threads calling SendMessageBatch: at a million
    connections one after another (one call's round trip each) would not fit a run. Reading
    stops at the reserve; what was read by then is still sent (every call refuses to start in
    the invocation's last seconds: aws.DeadlineExceeded); the rest stays due for the next run."""
    tally: Counter[str] = Counter()
    tally_lock = threading.Lock()
    room = threading.BoundedSemaphore(QUEUED_PER_SENDER * senders)  # batches read, not yet sent
    stopped = threading.Event()

    def send(batch: list[str]) -> None:
        try:
            sent, failed = send_batch(sqs, queue_url, batch, due_by=now)
        except Exception as fault:  # noqa: BLE001 - these ids stay due: the next run sends them
            logger.warning("a queue batch was not sent; its connections stay due for the next run",
                           extra={"exception_type": type(fault).__name__, "connections": len(batch)})
            sent, failed = 0, len(batch)
        finally:
            room.release()
        with tally_lock:
            tally["enqueued"] += sent
            tally["not_enqueued"] += failed

    def read(shard: int, sending: ThreadPoolExecutor) -> None:
        batch: list[str] = []
        for connection_id in store.due_connection_ids(shard, now=now, page_size=PAGE_SIZE):
            if stopped.is_set() or seconds_left() < RESERVE_SECONDS:
                if not stopped.is_set():
                    stopped.set()
                    logger.warning("scheduled run out of time; the rest stays due for the next run")
                break
            batch.append(connection_id)
            if len(batch) == SQS_BATCH:
                hand_over(batch, sending)
                batch = []
        with tally_lock:  # a shard's short last batch is pooled with the others': fewer calls when few are due
            leftovers.extend(batch)

    def hand_over(batch: list[str], sending: ThreadPoolExecutor) -> None:
        room.acquire()  # wait while the senders are this far behind: memory stays bounded
        # A copy of this context per call: the invocation's deadline goes with it.
        sending.submit(contextvars.copy_context().run, send, batch)

    leftovers: list[str] = []
    with ThreadPoolExecutor(max_workers=senders, thread_name_prefix="enqueue") as sending:
        with ThreadPoolExecutor(max_workers=min(shards, MAX_READERS), thread_name_prefix="due-index") as reading:
            readers = [reading.submit(contextvars.copy_context().run, read, shard, sending) for shard in range(shards)]
            for reader in readers:
                reader.result()  # a shard that cannot be read fails the run (Lambda tries it again)
        for start in range(0, len(leftovers), SQS_BATCH):
            hand_over(leftovers[start:start + SQS_BATCH], sending)
    enqueued, failed = tally["enqueued"], tally["not_enqueued"]
    count("ConnectionsEnqueued", enqueued)
    logger.info("scheduled run finished", extra={"enqueued": enqueued, "not_enqueued": failed})
    return {"enqueued": enqueued, "not_enqueued": failed}


def send_batch(sqs, queue_url: str, connection_ids: list[str], *, due_by: int) -> tuple[int, int]:
    """One SendMessageBatch; entries SQS failed on its side are tried once more. Answers
    (sent, not sent): an id not sent stays due, so the next run enqueues it again."""
    entries = [{"Id": str(i), "MessageBody": json.dumps({"connection_id": cid, "due_by": due_by})}
               for i, cid in enumerate(connection_ids)]
    answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    sent, failed = len(answer.get("Successful", [])), answer.get("Failed", [])
    again = {f["Id"] for f in failed if not f.get("SenderFault")}
    if again:
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=[e for e in entries if e["Id"] in again])
        sent += len(answer.get("Successful", []))
    return sent, len(connection_ids) - sent
