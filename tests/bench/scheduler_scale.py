"""The scheduler at a million connections: one run of its enqueue (broker.background.scheduler.enqueue_due,
what functions/scheduler calls) over a due index of 1,000,000 entries, timed from the first
Query to the last SendMessageBatch.

The AWS clients are real botocore clients made as the broker makes its own, answered in
memory (tests/support/memory_aws.py): every call still serialises, signs and parses, and
waits AWS_LATENCY_MS (a sleep, which frees the GIL as a socket read does). Query pages and
SendMessageBatch calls are counted, and every due id must reach the queue exactly once.

The index is a steady state: connections whose tokens last an hour, due times spread evenly
over that hour, so a run at the default 5-minute schedule finds a twelfth of them due.
`all_due=True` makes every entry due (a backlog: the schedule was off for an hour).
"""

from __future__ import annotations

import contextvars
import time

from broker.background import scheduler
from broker.platform import deadline
from local.lambda_events import LambdaContext
from tests.support.memory_aws import QUEUE_URL, MemoryAWS

CONNECTIONS, SHARDS = 1_000_000, 8
AWS_LATENCY_MS = 10  # an in-region DynamoDB Query or SQS SendMessageBatch round trip
REFRESH_EVERY, SCHEDULE_EVERY = 3600, 300


def due_index(connections: int, now: int, *, all_due: bool):
    for n in range(connections):
        offset = n * REFRESH_EVERY // connections  # spread evenly over the hour
        yield f"tenant-{n:07d}", (now - 1 - offset % SCHEDULE_EVERY if all_due
                                  else now - SCHEDULE_EVERY + 1 + offset)


def measure(*, connections: int = CONNECTIONS, all_due: bool = False, latency_ms: float = AWS_LATENCY_MS) -> dict:
    now = int(time.time())
    built = time.monotonic()
    memory = MemoryAWS(due_index(connections, now, all_due=all_due), shards=SHARDS, latency=latency_ms / 1000)
    due = sum(1 for entries in memory.index for at, _ in entries if at <= now)
    build_seconds = time.monotonic() - built

    def run() -> tuple[dict, float, float]:  # as the handler runs it: a 300 s invocation's deadline
        deadline.start(LambdaContext(timeout_seconds=300))
        cpu, started = time.process_time(), time.monotonic()
        answer = scheduler.enqueue_due(memory.store(), memory.sqs, QUEUE_URL, shards=SHARDS, now=now,
                                       seconds_left=deadline.seconds_left)
        return answer, time.monotonic() - started, time.process_time() - cpu

    answer, seconds, cpu = contextvars.copy_context().run(run)
    assert answer == {"enqueued": due, "not_enqueued": 0}, answer
    assert len(memory.sent) == due and max(memory.sent.values()) == 1, "a due id was lost or sent twice"
    calls = memory.calls["Query"] + memory.calls["SendMessageBatch"]
    return {"connections": connections, "due": due, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2), "cpu_ms_per_call": round(1000 * cpu / calls, 3),
            "query_pages": memory.calls["Query"], "send_message_batch_calls": memory.calls["SendMessageBatch"],
            "most_calls_in_flight": dict(memory.most_in_flight), "aws_latency_ms": latency_ms,
            "one_after_another_seconds": round(calls * latency_ms / 1000 + cpu, 1),
            "senders": scheduler.SENDERS, "shards": SHARDS, "page_size": scheduler.PAGE_SIZE,
            "index_build_seconds": round(build_seconds, 1), "all_due": all_due}


def table(result: dict) -> str:
    r = result
    return "\n".join([
        f"{r['connections']:,} connections in the due index ({r['shards']} shards), {r['due']:,} due"
        + (" (all)" if r["all_due"] else " (tokens of 1 h, a run every 5 min)"),
        f"  run: {r['seconds']:.1f} s wall (target < 30 s), {r['cpu_seconds']:.1f} s CPU "
        f"({r['cpu_ms_per_call']:.2f} ms a call: botocore serialising, signing, parsing)",
        f"  {r['query_pages']:,} Query pages of up to {r['page_size']:,}, {r['send_message_batch_calls']:,} "
        f"SendMessageBatch calls on {r['senders']} threads, {r['aws_latency_ms']:g} ms each",
        f"  one call after another the same calls would take ~{r['one_after_another_seconds']:.0f} s "
        f"(calls x latency + CPU); every due id enqueued once",
    ])
