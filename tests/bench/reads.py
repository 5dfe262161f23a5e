"""DynamoDB items read per connection in one scheduled run, at scale.

`total` connections are written with batch_write_item in ConnectionStore's item shape; 1%
are due and carry real credentials (a token set FakeInsightly issued, sealed by the
broker's vault), the rest a ciphertext-sized placeholder they never need (nothing may
open it). Then the real scheduler handler runs once and the real worker handler takes
every message it enqueued, under moto in-process.

A wrapper around botocore's `_make_api_call` sees every answer: a Query reads ScannedCount
items (KEYS_ONLY index entries), a GetItem one item when it finds one. Each item read is
charged to the connection it belongs to, so the figures are items read per due connection
(bound 1 for the scheduler's index read plus 1 for the worker's GetItem) and per
connection not due (bound 0: the sparse, sorted index is never read past `now`).
"""

from __future__ import annotations

import os
import time

import boto3

from broker import services
from broker.credentials.insightly import provider_user
from broker.credentials.tokens import sealed_fields
from broker.store.connections import due_shard
from local.lambda_events import LambdaContext, load_handler
from local.schedule import sqs_event_sources
from tests.bench.calls import SCHEDULE_EVENT
from tests.bench.harness import aws_calls, mint_token_set, moto_stack, now, versions

DUE_SHARE = 100  # one in a hundred is due


def seed(moto, total: int, at: int) -> list[str]:
    """Write every connection item; return the ids of the due ones."""
    flow, ddb = services.connect_flow(), boto3.client("dynamodb")
    shards, user = flow.settings.due_index_shards, provider_user(moto.provider.user)
    due, items, size = [], [], 0
    for n in range(total):  # n = 0 is due, so `size` is a real ciphertext's size from then on
        connection_id = f"tenant-{n:06d}"
        is_due = n % DUE_SHARE == 0
        if is_due:
            due.append(connection_id)
            credentials = flow.vault.seal(connection_id, sealed_fields(mint_token_set(moto.provider)))
            size = len(credentials)
            expires_at, due_at = at + 240, at - 60
        else:
            credentials = os.urandom(size)
            expires_at = at + 3600 - n % 2400  # due 10 to 55 minutes from now: 1-hour tokens
            due_at = expires_at - 300 - n % 300
        items.append({"PutRequest": {"Item": {
            "connection_id": {"S": connection_id}, "status": {"S": "active"}, "auth_mode": {"S": "oauth2"},
            "version": {"N": "1"}, "credentials": {"B": credentials}, "expires_at": {"N": str(expires_at)},
            "refresh_due_at": {"N": str(due_at)}, "due_shard": {"S": due_shard(connection_id, shards)},
            "provider_user": {"M": {k: {"S": v} for k, v in user.items()}}, "scopes": {"S": ""},
            "created_at": {"N": str(at - 86400)}, "connected_at": {"N": str(at - 86400)},
            "updated_at": {"N": str(at - 3600)}}}})
    for start in range(0, len(items), 25):
        request = {moto.connections_table: items[start:start + 25]}
        while request:
            request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems")
    return due


def charge(ledger, due_ids: set[str]) -> dict:
    """Items read, by who read them and whose item it was."""
    read = {"scheduler_due": 0, "scheduler_not_due": 0, "worker_due": 0, "worker_not_due": 0}
    pages = 0
    for call in ledger.calls:
        if call.service != "dynamodb" or call.response is None:
            continue
        if call.operation == "Query":
            pages += 1
            returned = [item["connection_id"]["S"] for item in call.response.get("Items", [])]
            on_due = sum(cid in due_ids for cid in returned)
            read["scheduler_due"] += on_due
            # Without a filter expression ScannedCount == Count; anything more was read for nothing.
            read["scheduler_not_due"] += call.response.get("ScannedCount", 0) - on_due
        elif call.operation == "GetItem" and "Item" in call.response:
            whose = call.params["Key"]["connection_id"]["S"]
            read["worker_due" if whose in due_ids else "worker_not_due"] += 1
        elif call.operation in ("Scan", "BatchGetItem"):
            raise AssertionError(f"the background path made a {call.operation}")
    return {"items": read, "query_pages": pages}


def measure(*, total: int) -> dict:
    with moto_stack() as moto:
        began = time.monotonic()
        due = seed(moto, total, now())
        seeded = time.monotonic() - began
        scheduler, source = load_handler("functions/scheduler/"), sqs_event_sources(moto.stack, boto3.client("sqs"))[0]
        assert source.queue_url
        refreshes = moto.provider.calls["refresh_token"]
        with aws_calls() as ledger:
            enqueued = scheduler.lambda_handler(SCHEDULE_EVENT, LambdaContext(timeout_seconds=300))
            while source.poll_once(wait_seconds=0):
                pass
        refreshed = moto.provider.calls["refresh_token"] - refreshes
        after = versions(boto3.client("dynamodb"), moto.connections_table, due)
    assert enqueued == {"enqueued": len(due), "not_enqueued": 0}, enqueued
    assert refreshed == len(due) and set(after.values()) == {2}, (refreshed, after)
    charged = charge(ledger, set(due))
    items, not_due = charged["items"], total - len(due)
    return {
        "connections": total, "due": len(due), "not_due": not_due, "seed_seconds": round(seeded, 1),
        "query_pages": charged["query_pages"], "items_read": items, "refreshed": refreshed,
        "per_due": {"scheduler": items["scheduler_due"] / len(due), "worker": items["worker_due"] / len(due),
                    "total": (items["scheduler_due"] + items["worker_due"]) / len(due), "bound": 2},
        "per_not_due": {"total": (items["scheduler_not_due"] + items["worker_not_due"]) / not_due, "bound": 0},
        "operations": dict(ledger.operations()),
    }


def table(r: dict) -> str:
    d, n = r["per_due"], r["per_not_due"]
    return "\n".join([
        f"{r['connections']:,} connections, {r['due']} due; {r['query_pages']} Query pages (8 shards), "
        f"{r['refreshed']} refreshed",
        f"  items read per due connection, scheduler (index)  {d['scheduler']:.3f}   bound 1",
        f"  items read per due connection, worker (GetItem)   {d['worker']:.3f}   bound 1",
        f"  items read per due connection, total              {d['total']:.3f}   bound 2   ratio {d['total'] / 2:.2f}",
        f"  items read per connection not due                 {n['total']:.3f}   bound 0",
    ])
