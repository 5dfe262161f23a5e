"""The scheduler's parallel enqueue (issue 16): shards read at once, SendMessageBatch calls
on several threads. Against an in-memory due index and queue (tests/support/memory_aws.py)
through real botocore clients: every due id goes onto the queue once, the run's deadline
stops the reading, and a batch the queue refuses is counted and stays due, never dropped."""

import contextvars
import math
from types import SimpleNamespace

import pytest

from broker.background import scheduler
from broker.background.scheduler import enqueue_due
from broker.platform import aws, deadline
from local.lambda_events import LambdaContext
from tests.support.memory_aws import QUEUE_URL, MemoryAWS

NOW, SHARDS = 1_800_000_000, 8


def connections(total: int, due: int) -> list[tuple[str, int]]:
    """`total` connections, the first `due` of them due (at various past times), the rest later."""
    return [(f"tenant-{n:06d}", NOW - 1 - n % 600 if n < due else NOW + 1 + n) for n in range(total)]


def run(memory: MemoryAWS, *, seconds_left=lambda: math.inf) -> dict:
    return enqueue_due(memory.store(), memory.sqs, QUEUE_URL, shards=SHARDS, now=NOW, seconds_left=seconds_left)


@pytest.fixture(autouse=True)
def small_pages(monkeypatch):
    monkeypatch.setattr(scheduler, "PAGE_SIZE", 40)  # several pages per shard


def test_every_due_connection_is_enqueued_exactly_once_and_no_other():
    memory = MemoryAWS(connections(5_000, 2_345), shards=SHARDS, latency=0.002)

    assert run(memory) == {"enqueued": 2_345, "not_enqueued": 0}

    assert memory.sent == {f"tenant-{n:06d}": 1 for n in range(2_345)}
    shard_sizes = [sum(1 for at, _ in entries if at <= NOW) for entries in memory.index]
    # Full batches per shard; the shards' last few pooled into as few batches as they fill.
    assert memory.calls["SendMessageBatch"] == (sum(size // 10 for size in shard_sizes)
                                                + math.ceil(sum(size % 10 for size in shard_sizes) / 10))
    assert memory.calls["Query"] == sum(size // 40 + 1 for size in shard_sizes)  # pages up to now only
    # The batches were sent side by side, never more at once than the client has connections.
    assert 1 < memory.most_in_flight["sqs"] <= scheduler.SENDERS


def test_reading_stops_at_the_reserve_and_the_rest_stays_due_for_the_next_run():
    memory = MemoryAWS(connections(5_000, 5_000), shards=SHARDS)
    # Each call "takes" 5 s of the run's 300: the reserve is reached after 58 calls.
    answer = run(memory, seconds_left=lambda: 300 - 5 * memory.calls["SendMessageBatch"])

    reserve_reached_after = (300 - scheduler.RESERVE_SECONDS) // 5
    # What was read by then is still sent: the batches waiting, those being sent, each reader's last.
    read_but_waiting = (scheduler.QUEUED_PER_SENDER + 1) * scheduler.SENDERS + SHARDS
    assert reserve_reached_after <= memory.calls["SendMessageBatch"] <= reserve_reached_after + read_but_waiting
    assert answer == {"enqueued": sum(memory.sent.values()), "not_enqueued": 0}
    assert max(memory.sent.values()) == 1

    next_run = MemoryAWS([(cid, at) for cid, at in connections(5_000, 5_000) if cid not in memory.sent],
                         shards=SHARDS)  # still due: the workers refreshed only what was sent
    assert run(next_run)["enqueued"] == 5_000 - answer["enqueued"]


def test_the_sending_threads_keep_the_invocations_deadline(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(deadline, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(scheduler, "PAGE_SIZE", 1_000)  # every shard read in one page, at the start
    answered_at: list[float] = []

    def one_second_per_call(call, ids):
        answered_at.append(clock[0])
        if memory.calls["Query"] == SHARDS:  # time runs once every shard has been read
            clock[0] += 1

    memory = MemoryAWS(connections(5_000, 5_000), shards=SHARDS, queue_fault=one_second_per_call)

    def invocation():  # in a context of its own: the deadline ends with it
        deadline.start(LambdaContext(timeout_seconds=20))
        return run(memory)  # the reading is not stopped by a reserve here: only the calls' own check

    answer = contextvars.copy_context().run(invocation)

    # No call started in the invocation's last 3 s (aws.ATTEMPT_SECONDS), on whichever thread
    # (but those that passed the check together); the batches not sent are counted, not dropped.
    assert max(answered_at) < 20 - aws.ATTEMPT_SECONDS + scheduler.SENDERS
    assert answer == {"enqueued": sum(memory.sent.values()), "not_enqueued": 5_000 - sum(memory.sent.values())}
    assert answer["not_enqueued"] > 0 and max(memory.sent.values()) == 1


def test_entries_the_queue_failed_are_tried_again_and_a_refused_batch_is_counted_not_lost():
    refused_batch: list[str] = []

    def queue_fault(call: int, ids: list[str]):
        if call == 3:  # the whole call refused (not retryable)
            refused_batch.extend(ids)
            return 400, {"__type": "com.amazonaws.sqs#InvalidParameterValue", "message": "no"}
        if call == 5:  # SQS failed some entries on its side: the batch call itself worked
            return ids[:4]
        return None

    memory = MemoryAWS(connections(1_000, 500), shards=SHARDS, queue_fault=queue_fault)

    answer = run(memory)

    assert answer == {"enqueued": 490, "not_enqueued": 10}
    assert len(refused_batch) == 10 and not set(refused_batch) & set(memory.sent)
    assert memory.sent == {f"tenant-{n:06d}": 1 for n in range(500) if f"tenant-{n:06d}" not in refused_batch}
