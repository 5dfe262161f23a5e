"""The scheduler at scale: 10,000 connections, 100 due. It reads the due ones from the
sparse index and nothing else: no Scan, no item reads, no pages of not-due connections."""

import time
from collections import Counter

import boto3

from broker.platform import aws
from broker.store.connections import due_shard
from tests.integration.test_scheduler import queued_messages, run_scheduler

TOTAL, DUE = 10_000, 100


def seed(stack, now: int) -> None:
    dynamodb = boto3.client("dynamodb")
    items = []
    for n in range(TOTAL):
        connection_id = f"tenant-{n:05d}"
        due_at = now - 60 if n % (TOTAL // DUE) == 0 else now + 600 + n  # 1 in 100 is due
        items.append({"PutRequest": {"Item": {
            "connection_id": {"S": connection_id}, "status": {"S": "active"}, "version": {"N": "1"},
            "due_shard": {"S": due_shard(connection_id, 8)}, "refresh_due_at": {"N": str(due_at)}}}})
    for start in range(0, len(items), 25):
        dynamodb.batch_write_item(RequestItems={stack.refs["ConnectionsTable"]: items[start:start + 25]})


def count_dynamodb_reads() -> tuple[Counter, Counter, Counter]:
    """Calls, items returned and items scanned per DynamoDB operation of the broker's client,
    from now on (what a page or a scheduled run really reads)."""
    calls, returned, scanned = Counter(), Counter(), Counter()

    def after_call(model, parsed, **kwargs):
        calls[model.name] += 1
        returned[model.name] += parsed.get("Count", sum(len(v) for v in parsed.get("Responses", {}).values()))
        scanned[model.name] += parsed.get("ScannedCount", 0)

    aws.client("dynamodb").meta.events.register("after-call", after_call)
    return calls, returned, scanned


def test_ten_thousand_connections_one_hundred_due_read_one_hundred_items(stack):
    seed(stack, int(time.time()))
    calls, returned, scanned = count_dynamodb_reads()

    assert run_scheduler() == {"enqueued": DUE, "not_enqueued": 0}

    assert calls["Scan"] == 0 and calls["GetItem"] == 0
    assert returned["Query"] == DUE and scanned["Query"] == DUE  # ~1 item read per due connection
    assert calls["Query"] <= 8 + DUE // 100  # one page per shard (+ amortized extra pages)
    assert len(queued_messages(stack)) == DUE
