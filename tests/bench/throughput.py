"""Refresh throughput with N concurrent workers, against the bound 5N / provider latency.

moto's server and the Insightly stand-in run in processes of their own (servers.py), on
free loopback ports; this process holds only the broker: N worker "containers" and their
boto3 clients. The stand-in's token endpoint waits `latency_ms` before answering (POST
/_control/config). Connections are stored as the callback stores them: a token set the
stand-in issued (an authorization_code grant over HTTP), sealed by the broker's vault, saved
by its ConnectionStore. For each N, 10 x N x rounds of them are made due; N threads, each one
worker container (its own copy of functions/worker/app.py), take batches of 10 ids and call
the real handler with an SQS event, as Lambda's event source does with BatchSize 10. A
worker refreshes its batch on broker.background.worker.REFRESH_THREADS (5) threads, so N workers hold
at most 5N provider calls open at once: 5N / latency refreshes per second is the bound.

Refreshes are counted by the stand-in (calls.refresh_token) and every connection's version
must have advanced exactly once. CPU per refresh, three ways: the broker's own (time.thread_time
in the container threads and in every task of the worker's refresh pool, summed: what one
Lambda worker spends), this process's (time.process_time: the broker plus the benchmark's
own threads), and all three processes' (plus moto's and the stand-in's, from /proc: what the
figure measured when everything shared one process). 1000 / broker CPU ms is the refreshes
per second one worker's CPU could carry; the machine's ceiling here is cores x 1000 / the
all-process figure.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from broker import services
from broker.background import worker
from local.lambda_events import LambdaContext
from tests.bench.harness import make_due, now, sqs_event, store_tokens, versions, worker_container
from tests.bench.servers import split_stack

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


class ThreadCpu:
    """CPU seconds spent by the broker's own threads, each measured inside the thread."""

    def __init__(self):
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds

    def timed(self, fn):
        def run(*args, **kwargs):
            began = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(time.thread_time() - began)
        return run


@contextlib.contextmanager
def timed_refresh_pool(cpu: ThreadCpu) -> Iterator[None]:
    """The worker's refresh pool, with each task's CPU time (its thread's) added to `cpu`."""
    class TimedPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            return super().submit(cpu.timed(fn), *args, **kwargs)

    original = worker.ThreadPoolExecutor
    worker.ThreadPoolExecutor = TimedPool
    try:
        yield
    finally:
        worker.ThreadPoolExecutor = original


def run_workers(containers: list, connection_ids: list[str], due_by: int) -> dict:
    """Each container takes the next batch of 10 until none is left: wall seconds, this
    process's CPU seconds and the broker threads' own CPU seconds."""
    batches = iter([connection_ids[i:i + BATCH] for i in range(0, len(connection_ids), BATCH)])
    lock, failures, errors = threading.Lock(), [], []
    start = threading.Barrier(len(containers) + 1)
    cpu = ThreadCpu()

    def work(container) -> None:
        start.wait()
        began = time.thread_time()  # the container's own thread: handler, decorators, waiting on its pool
        try:
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
        finally:
            cpu.add(time.thread_time() - began)

    with timed_refresh_pool(cpu):
        threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in containers]
        for thread in threads:
            thread.start()
        start.wait()
        wall, process = time.perf_counter(), time.process_time()
        for thread in threads:
            thread.join()
        return {"wall": time.perf_counter() - wall, "process": time.process_time() - process,
                "broker": cpu.seconds, "failures": failures, "errors": errors}


def per_refresh_ms(seconds: float | None, refreshes: int) -> float | None:
    return None if seconds is None else round(seconds * 1000 / max(refreshes, 1), 1)


def measure(*, latency_ms: float, connections: int) -> dict:
    rounds = connections // STEP
    if rounds < 1 or connections % STEP:
        raise ValueError(f"connections must be a multiple of {STEP}: every worker takes the same number of batches")
    with split_stack() as local:
        standin, table = StandInControl(local.standin_url), local.env["CONNECTIONS_TABLE"]
        ddb, flow = local.session.client("dynamodb"), services.connect_flow()
        warm_up = [f"warm-up-{i}" for i in range(BATCH)]
        ids = [f"tenant-{i:05d}" for i in range(connections)]
        began = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda cid: store_tokens(flow, local.mint_token_set(), cid, now()), warm_up + ids))
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
            servers_before = local.cpu_seconds()
            run = run_workers(containers[:n], targets, now())
            servers = {name: None if servers_before[name] is None or spent is None else spent - servers_before[name]
                       for name, spent in local.cpu_seconds().items()}
            refreshed = standin.refresh_calls() - calls
            after = versions(ddb, table, targets)
            bound = n * min(worker.REFRESH_THREADS, BATCH) / (latency_ms / 1000)
            everything = None if None in servers.values() else run["process"] + sum(servers.values())
            wall = run["wall"]
            steps.append({
                "workers": n, "connections": len(targets), "refreshes": refreshed, "seconds": round(wall, 3),
                "per_second": round(refreshed / wall, 2), "bound": round(bound, 2),
                "ratio": round(refreshed / wall / bound, 3),
                "versions_advanced_once": all(after[c] == before[c] + 1 for c in targets),
                "broker_cpu_ms_per_refresh": per_refresh_ms(run["broker"], refreshed),
                "cpu_ms_per_refresh": per_refresh_ms(run["process"], refreshed),  # this process (as before)
                "moto_cpu_ms_per_refresh": per_refresh_ms(servers["moto"], refreshed),
                "standin_cpu_ms_per_refresh": per_refresh_ms(servers["standin"], refreshed),
                "all_processes_cpu_ms_per_refresh": per_refresh_ms(everything, refreshed),
                "batch_item_failures": len(run["failures"]), "errors": run["errors"][:5],
            })
    single = steps[0]
    # One worker runs its batch on `threads` threads: a refresh lasts about threads x (wall / refreshes).
    threads = min(worker.REFRESH_THREADS, BATCH)
    refresh_ms = single["seconds"] * 1000 * threads / max(single["refreshes"], 1)
    busiest = steps[-1]  # the busiest step: least idle-thread CPU per refresh
    everything = busiest["all_processes_cpu_ms_per_refresh"]
    return {"latency_ms": latency_ms, "rounds": rounds, "seed_seconds": round(seeded, 1), "steps": steps,
            "processes": "split: moto and the stand-in in their own processes",
            "threads_per_worker": threads, "refresh_ms_one_worker": round(refresh_ms, 1),
            "overhead_ms_one_worker": round(refresh_ms - latency_ms, 1),
            "broker_cpu_ceiling_per_second": round(1000 / busiest["broker_cpu_ms_per_refresh"], 1),
            # Each process has one GIL: the one that spends most per refresh caps the whole run.
            "moto_ceiling_per_second": (round(1000 / busiest["moto_cpu_ms_per_refresh"], 1)
                                        if busiest["moto_cpu_ms_per_refresh"] else None),
            "machine_ceiling_per_second": round((os.cpu_count() or 1) * 1000 / everything, 1) if everything else None,
            "ok": all(s["versions_advanced_once"] and s["refreshes"] == s["connections"] and not s["errors"]
                      and not s["batch_item_failures"] for s in steps)}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(r: dict) -> str:
    lines = [f"{'workers':>7}  {'refreshes':>9}  {'seconds':>7}  {'r/s':>7}  {'bound 5N/lat':>12}  {'ratio':>5}  "
             f"{'versions +1':>11}  {'CPU ms/refresh: broker':>22}  {'process':>7}  {'moto':>5}  {'stand-in':>8}  "
             f"{'all 3':>5}"]
    for s in r["steps"]:
        lines.append(f"{s['workers']:>7}  {s['refreshes']:>9}  {s['seconds']:>7.2f}  {s['per_second']:>7.1f}  "
                     f"{s['bound']:>12.1f}  {s['ratio']:>5.2f}  {'yes' if s['versions_advanced_once'] else 'NO':>11}  "
                     f"{_ms(s.get('broker_cpu_ms_per_refresh')):>22}  {_ms(s['cpu_ms_per_refresh']):>7}  "
                     f"{_ms(s.get('moto_cpu_ms_per_refresh')):>5}  {_ms(s.get('standin_cpu_ms_per_refresh')):>8}  "
                     f"{_ms(s.get('all_processes_cpu_ms_per_refresh')):>5}"
                     + (f"  errors: {s['errors']}" if s["errors"] else "")
                     + (f"  failures: {s['batch_item_failures']}" if s["batch_item_failures"] else ""))
    lines += [f"one worker ({r.get('threads_per_worker', 1)} at a time): {r['refresh_ms_one_worker']:.0f} ms per "
              f"refresh = {r['latency_ms']:g} ms provider + "
              f"{r['overhead_ms_one_worker']:.0f} ms broker, moto and loopback",
              "CPU: broker = the worker threads' own (thread_time), process = this process (the broker alone now), "
              "all 3 = + moto's and the stand-in's processes",
              f"one worker's CPU could carry ~{r['broker_cpu_ceiling_per_second']:.0f} refreshes/s (1000 / broker ms); "
              + (f"this machine's {os.cpu_count()} cores ~{r['machine_ceiling_per_second']:.0f}/s for all 3 processes"
                 if r.get("machine_ceiling_per_second") else "server CPU not measured (no /proc)")]
    if r.get("moto_ceiling_per_second"):
        lines.append(f"moto's one process (one GIL) caps the run at ~{r['moto_ceiling_per_second']:.0f} refreshes/s "
                     "(1000 / moto ms); on AWS the services are not on this machine")
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
    if r.get("machine_ceiling_per_second"):
        axes.axhline(r["machine_ceiling_per_second"], color="#1f77b4", linestyle=":",
                     label=f"this machine's CPU ceiling, all 3 processes (~{r['machine_ceiling_per_second']:.0f}/s)")
    axes.set_xscale("log", base=2)
    axes.set_xticks(workers, [str(n) for n in workers])
    axes.set_xlabel("worker concurrency N (batches of 10)")
    axes.set_ylabel("refreshes per second")
    axes.set_title("Background refresh throughput on loopback (moto, stand-in in own processes)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
