"""Refresh throughput with N concurrent workers, against the bound 5N / provider latency.

The local stack runs in this process on free loopback ports: moto in server mode (real
HTTP) and the Insightly stand-in, whose token endpoint waits `latency_ms` before answering
(POST /_control/config). Connections are stored as the callback stores them: a token set
the stand-in's FakeInsightly issued, sealed by the broker's vault, saved by its
ConnectionStore. For each N, 10 x N x rounds of them are made due; N threads, each one
worker "container" (its own copy of functions/worker/app.py), take batches of 10 ids and
call the real handler with an SQS event, as Lambda's event source does with BatchSize 10.
A worker refreshes its batch on broker.worker.REFRESH_THREADS (5) threads, so N workers hold
at most 5N provider calls open at once: 5N / latency refreshes per second is the bound.

Refreshes are counted by the stand-in (calls.refresh_token) and every connection's version
must have advanced exactly once. The whole stack shares one Python process, its GIL and
this machine's cores: moto, the stand-in and the workers all compete for them, which Lambda
workers (one container each, AWS services elsewhere) do not. cpu_ms_per_refresh (process
CPU time / refreshes) shows where that ceiling lies: about 1000 / cpu_ms_per_refresh
refreshes per second for one GIL.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from broker import services, worker
from tests.bench.harness import make_due, now, sqs_event, store_connection, versions, worker_container
from tests.local import start_local_stack
from tests.support.lambda_events import LambdaContext

WORKERS = (1, 2, 4, 8, 16)
BATCH = 10  # RefreshWorkerFunction's SQS BatchSize in template.yaml
STEP = BATCH * max(WORKERS)  # connections per round: one batch for each of the most workers


class StandInControl:
    def __init__(self, url: str):
        self.url = url

    def config(self, **settings) -> dict:
        answer = requests.post(f"{self.url}/_control/config", json=settings, timeout=5)
        answer.raise_for_status()
        return answer.json()

    def refresh_calls(self) -> int:
        answer = requests.get(f"{self.url}/_control/state", timeout=5)
        answer.raise_for_status()
        return answer.json()["calls"].get("refresh_token", 0)


def run_workers(containers: list, connection_ids: list[str], due_by: int) -> tuple[float, float, list, list]:
    """Each container takes the next batch of 10 until none is left; wall and CPU seconds."""
    batches = iter([connection_ids[i:i + BATCH] for i in range(0, len(connection_ids), BATCH)])
    lock, failures, errors = threading.Lock(), [], []
    start = threading.Barrier(len(containers) + 1)

    def work(container) -> None:
        start.wait()
        while True:
            with lock:
                batch = next(batches, None)
            if batch is None:
                return
            try:
                answer = container.lambda_handler(sqs_event(batch, due_by), LambdaContext(timeout_seconds=30))
                failures.extend(answer["batchItemFailures"])
            except Exception as exc:  # reported, and the step is marked failed
                errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in containers]
    for thread in threads:
        thread.start()
    start.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    return time.perf_counter() - wall, time.process_time() - cpu, failures, errors


def measure(*, latency_ms: float, connections: int) -> dict:
    rounds = connections // STEP
    if rounds < 1 or connections % STEP:
        raise ValueError(f"connections must be a multiple of {STEP}: every worker takes the same number of batches")
    local = start_local_stack(demo=False, schedule=False)
    try:
        for source in local.sqs_sources:  # the workers are driven directly here, not from the queue
            source.stop()
        standin, table = StandInControl(local.standin_url), local.env["CONNECTIONS_TABLE"]
        ddb, flow = local.session.client("dynamodb"), services.connect_flow()
        warm_up = [f"warm-up-{i}" for i in range(BATCH)]
        ids = [f"tenant-{i:05d}" for i in range(connections)]
        began = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda cid: store_connection(flow, local.provider, cid, now()), warm_up + ids))
        seeded = time.monotonic() - began
        standin.config(latency_ms=latency_ms)
        containers = [worker_container(i) for i in range(max(WORKERS))]
        for cid in warm_up:  # clients, connection pools and the cached client secret, untimed
            make_due(ddb, table, cid, now())
        run_workers(containers[:1], warm_up, now())

        steps = []
        for n in WORKERS:
            targets = ids[:BATCH * n * rounds]
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda cid: make_due(ddb, table, cid, now()), targets))
            before, calls = versions(ddb, table, targets), standin.refresh_calls()
            wall, cpu, failures, errors = run_workers(containers[:n], targets, now())
            refreshed = standin.refresh_calls() - calls
            after = versions(ddb, table, targets)
            bound = n * min(worker.REFRESH_THREADS, BATCH) / (latency_ms / 1000)
            steps.append({
                "workers": n, "connections": len(targets), "refreshes": refreshed, "seconds": round(wall, 3),
                "per_second": round(refreshed / wall, 2), "bound": round(bound, 2),
                "ratio": round(refreshed / wall / bound, 3),
                "versions_advanced_once": all(after[c] == before[c] + 1 for c in targets),
                "cpu_ms_per_refresh": round(cpu * 1000 / max(refreshed, 1), 1),
                "batch_item_failures": len(failures), "errors": errors[:5],
            })
    finally:
        local.stop()
    single = steps[0]
    # One worker runs its batch on `threads` threads: a refresh lasts about threads x (wall / refreshes).
    threads = min(worker.REFRESH_THREADS, BATCH)
    refresh_ms = single["seconds"] * 1000 * threads / max(single["refreshes"], 1)
    cpu_ms = steps[-1]["cpu_ms_per_refresh"]  # the busiest step: least idle-thread CPU per refresh
    return {"latency_ms": latency_ms, "rounds": rounds, "seed_seconds": round(seeded, 1), "steps": steps,
            "threads_per_worker": threads, "refresh_ms_one_worker": round(refresh_ms, 1),
            "overhead_ms_one_worker": round(refresh_ms - latency_ms, 1),
            "gil_ceiling_per_second": round(1000 / cpu_ms, 1),
            "ok": all(s["versions_advanced_once"] and s["refreshes"] == s["connections"] and not s["errors"]
                      and not s["batch_item_failures"] for s in steps)}


def table(r: dict) -> str:
    lines = [f"{'workers':>7}  {'refreshes':>9}  {'seconds':>7}  {'r/s':>7}  {'bound 5N/lat':>12}  {'ratio':>5}  "
             f"{'versions +1':>11}  {'CPU ms/refresh':>14}"]
    for s in r["steps"]:
        lines.append(f"{s['workers']:>7}  {s['refreshes']:>9}  {s['seconds']:>7.2f}  {s['per_second']:>7.1f}  "
                     f"{s['bound']:>12.1f}  {s['ratio']:>5.2f}  {'yes' if s['versions_advanced_once'] else 'NO':>11}  "
                     f"{s['cpu_ms_per_refresh']:>14.1f}"
                     + (f"  errors: {s['errors']}" if s["errors"] else "")
                     + (f"  failures: {s['batch_item_failures']}" if s["batch_item_failures"] else ""))
    lines += [f"one worker ({r.get('threads_per_worker', 1)} at a time): {r['refresh_ms_one_worker']:.0f} ms per "
              f"refresh = {r['latency_ms']:g} ms provider + "
              f"{r['overhead_ms_one_worker']:.0f} ms broker, moto and loopback",
              f"one GIL's CPU ceiling here: ~{r['gil_ceiling_per_second']:.0f} refreshes/s "
              "(moto, the stand-in and every worker share one process on this machine)"]
    if not r["ok"]:
        lines.append("FAILED: a connection was not refreshed exactly once, or a worker raised")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    workers = [s["workers"] for s in r["steps"]]
    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    axes.plot(workers, [s["bound"] for s in r["steps"]], "--", color="grey",
              label=f"bound 5N / latency ({r['latency_ms']:g} ms)")
    axes.plot(workers, [s["per_second"] for s in r["steps"]], "o-", color="#f26522", label="measured")
    axes.axhline(r["gil_ceiling_per_second"], color="#1f77b4", linestyle=":",
                 label=f"one-process CPU ceiling here (~{r['gil_ceiling_per_second']:.0f}/s)")
    axes.set_xscale("log", base=2)
    axes.set_xticks(workers, [str(n) for n in workers])
    axes.set_xlabel("worker concurrency N (batches of 10)")
    axes.set_ylabel("refreshes per second")
    axes.set_title("Background refresh throughput on loopback (moto + stand-in)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
