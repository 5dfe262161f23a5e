"""One worker batch of 10 due connections against a slow provider: one refresh after the
other (REFRESH_THREADS = 1, as before issue 7) vs the worker's thread pool.

The local stack as in throughput.py (moto server + the stand-in over real HTTP, the stand-in
waiting `latency_ms` per token call). Each mode refreshes its own 10 connections, `rounds`
times, through the real worker handler; wall time per batch is the median. Bound: 10 x
latency one after the other, ceil(10 / threads) x latency with the pool.
"""

from __future__ import annotations

import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from broker import services
from broker.background import worker
from local import start_local_stack
from local.lambda_events import LambdaContext
from tests.bench.harness import make_due, now, sqs_event, store_connection, versions, worker_container
from tests.bench.throughput import BATCH, StandInControl


def measure(*, latency_ms: float = 300, rounds: int = 3) -> dict:
    local = start_local_stack(demo=False, schedule=False)
    default_threads = worker.REFRESH_THREADS
    try:
        for source in local.sqs_sources:
            source.stop()
        standin, table = StandInControl(local.standin_url), local.env["CONNECTIONS_TABLE"]
        ddb, flow = local.session.client("dynamodb"), services.connect_flow()
        modes = {"one after the other": 1, f"pool of {default_threads}": default_threads}
        ids = {mode: [f"pool-{n}-{i}" for i in range(BATCH)] for n, mode in enumerate(["warm-up", *modes])}
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda cid: store_connection(flow, local.provider, cid, now()),
                          [c for batch in ids.values() for c in batch]))
        standin.config(latency_ms=latency_ms)
        container = worker_container(100)
        for cid in ids["warm-up"]:  # clients, connection pools and the cached secret, untimed
            make_due(ddb, table, cid, now())
        container.lambda_handler(sqs_event(ids["warm-up"], now()), LambdaContext(timeout_seconds=30))

        rows = []
        for mode, threads in modes.items():
            worker.REFRESH_THREADS = threads
            walls, refreshed, failures = [], 0, 0
            for _ in range(rounds):
                for cid in ids[mode]:
                    make_due(ddb, table, cid, now())
                before, calls = versions(ddb, table, ids[mode]), standin.refresh_calls()
                began = time.perf_counter()
                answer = container.lambda_handler(sqs_event(ids[mode], now()), LambdaContext(timeout_seconds=30))
                walls.append(time.perf_counter() - began)
                after = versions(ddb, table, ids[mode])
                refreshed += sum(after[c] == before[c] + 1 for c in ids[mode])
                failures += len(answer["batchItemFailures"])
                assert standin.refresh_calls() - calls == BATCH
            rows.append({"mode": mode, "threads": threads, "batch_seconds": round(statistics.median(walls), 3),
                         "bound_seconds": round(math.ceil(BATCH / threads) * latency_ms / 1000, 2),
                         "refreshed": refreshed, "of": BATCH * rounds, "batch_item_failures": failures})
    finally:
        worker.REFRESH_THREADS = default_threads
        local.stop()
    return {"latency_ms": latency_ms, "rounds": rounds, "rows": rows,
            "speedup": round(rows[0]["batch_seconds"] / rows[1]["batch_seconds"], 2),
            "ok": all(r["refreshed"] == r["of"] and not r["batch_item_failures"] for r in rows)}


def table(r: dict) -> str:
    lines = [f"{'mode':<22}  {'batch of 10, s':>14}  {'bound, s':>8}  {'refreshed':>9}"]
    for row in r["rows"]:
        lines.append(f"{row['mode']:<22}  {row['batch_seconds']:>14.2f}  {row['bound_seconds']:>8.2f}  "
                     f"{row['refreshed']:>4}/{row['of']:<4}")
    lines.append(f"provider latency {r['latency_ms']:g} ms, median of {r['rounds']} batches; "
                 f"the pool is {r['speedup']:g}x faster per batch")
    if not r["ok"]:
        lines.append("FAILED: a connection was not refreshed exactly once, or a message came back")
    return "\n".join(lines)
