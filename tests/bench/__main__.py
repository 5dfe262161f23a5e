"""`make bench` (`python -m tests.bench`): what the broker costs, measured on this machine.

Everything runs on loopback: moto (in-process, or its server on a loopback port) stands in
for AWS and FakeInsightly for the provider; a socket guard refuses any other address. Each
figure is printed next to the bound it should approach, and everything is written to
.bench/results.json, with a plot in .bench/throughput.png. docs/benchmarks.md has a run's output
and what each figure means; docs/cost.md turns the call counts into money.

1. Refresh throughput (throughput.py). The local stack (moto server + the Insightly stand-in
   over real HTTP, provider latency set with POST /_control/config) holds real encrypted
   connections. N threads, each one worker "container", take batches of 10 due ids and call
   the real worker handler with an SQS event. Refreshes/second come from the stand-in's
   counter; every connection's version must advance exactly once. Bound: 5N / latency
   (the worker's 5 threads).
2. Items read (reads.py). 10,000 connections (2,000 with --quick), 1% due, written with
   batch_write_item in the store's item shape; one real scheduler run and the workers for
   what it enqueued, under moto in-process. DynamoDB items returned by Query and GetItem,
   per due connection (bound 1 + 1) and per connection not due (bound 0).
3. Calls per operation (calls.py). Every route and the scheduled path through the real
   handlers under moto in-process; DynamoDB, KMS, Secrets Manager (warm), SQS, EventBridge
   and provider calls against the floors (docs/architecture.md).
4. Cold start (coldstart.py). Importing each functions/<name>/app.py in a fresh interpreter
   with the template's environment and X-Ray tracing on, as in Lambda (no pyOpenSSL or
   awscrt), as a ratio to `import boto3` the same way.
5. Worker pool (pool.py). One worker batch of 10 at 300 ms provider latency, one refresh
   after the other vs the worker's thread pool: wall time per batch against
   ceil(10 / threads) x latency.
6. The proxy (proxy.py). GET Contacts through the proxy vs straight to the stand-in on the
   local stack (its own process) at 1, 4 and 16 callers (a process each): added latency
   p50/p95 and the throughput ratio; AWS and Insightly calls per proxied call (cold and warm
   container, 401 recovery, local 429) against the floors, under moto
   in-process; and the broker's own CPU per warm proxied call (in-memory fakes excluded).
7. The scheduler at scale (scheduler_scale.py). One run of the scheduler's enqueue over a due
   index of 1,000,000 entries (a twelfth of them due), its AWS clients answered in memory
   after 10 ms a call: wall time (target < 30 s), CPU, Query pages and SendMessageBatch calls;
   every due id must be enqueued exactly once (100,000 entries with --quick).

Options: --latency-ms (provider latency, default 100); --connections K (connections stored
for the throughput test, a multiple of 160, default 480: the N-worker step refreshes
10 x N x K/160 of them, so every worker takes K/160 batches); --quick (K = 160, 2,000
connections for the reads, 5 cold start samples: about a minute); --only SECTION. Also
as environment variables: BENCH_LATENCY_MS, BENCH_CONNECTIONS, BENCH_QUICK=1.
"""

from __future__ import annotations

import os

# Before boto3 or the broker is imported. Fake credentials and no config files: nothing here
# may reach a real AWS account. Powertools takes the service name and metrics namespace
# (the template's values) when the broker's Logger and Metrics are created. X-Ray tracing
# is off in this process; coldstart.py measures imports with it on.
PROCESS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "POWERTOOLS_SERVICE_NAME": "insightly-connect", "POWERTOOLS_METRICS_NAMESPACE": "InsightlyConnect",
    "POWERTOOLS_TRACE_DISABLED": "1",
}
os.environ.update(PROCESS_ENV)
for leaked in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(leaked, None)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from tests.bench import calls, coldstart, pool, proxy, reads, scheduler_scale, throughput  # noqa: E402
from tests.bench.harness import RESULTS_DIR, broker_output, loopback_only  # noqa: E402

SECTIONS = ("throughput", "reads", "calls", "coldstart", "pool", "proxy", "scheduler_scale")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=float(env.get("BENCH_LATENCY_MS", 100)),
                        help="provider latency the stand-in adds to every call (default 100)")
    parser.add_argument("--connections", type=int, default=int(env.get("BENCH_CONNECTIONS", 0)) or None,
                        help="connections stored for the throughput test, a multiple of 160; the N-worker "
                             "step refreshes 10*N*K/160 of them (default 480, 160 with --quick)")
    parser.add_argument("--quick", action="store_true", default=env.get("BENCH_QUICK", "") not in ("", "0"),
                        help="fewer connections and samples: about a minute")
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only this part (repeatable); results.json keeps the other parts")
    args = parser.parse_args(argv)
    if args.latency_ms <= 0:
        parser.error("--latency-ms must be positive")
    args.connections = args.connections or (throughput.STEP if args.quick else 3 * throughput.STEP)
    if args.connections % throughput.STEP:
        parser.error(f"--connections must be a multiple of {throughput.STEP} "
                     "(every worker takes the same number of batches)")
    return args


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")  # noqa: SIM115
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "load_average_at_start": os.getloadavg()}  # anything else running skews every figure


def say(text: str = "") -> None:
    print(text, file=sys.__stdout__, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    loopback_only()
    warnings.filterwarnings("ignore", "No application metrics to publish")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # "pool is full" with 16 threads
    wanted = args.only or SECTIONS
    results = {"machine": machine(), "options": {"latency_ms": args.latency_ms, "connections": args.connections,
                                                 "quick": args.quick}}
    say(f"Insightly Connect benchmark: {results['machine']['nproc']} cores, {results['machine']['cpu']}, "
        f"Python {results['machine']['python']}, provider latency {args.latency_ms:g} ms"
        + (" (quick)" if args.quick else "")
        + ", load average {:.2f} {:.2f} {:.2f}".format(*results["machine"]["load_average_at_start"]))
    started = time.monotonic()

    def section(name: str, title: str, run, show) -> None:
        if name not in wanted:
            return
        say(f"\n== {title}")
        began = time.monotonic()
        with broker_output():
            results[name] = run()
        # A section that times something itself (scheduler_scale: the run) keeps its "seconds".
        results[name]["section_seconds" if "seconds" in results[name] else "seconds"] = round(
            time.monotonic() - began, 1)
        results[name]["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
        say(show(results[name]))

    section("throughput", "1. Refresh throughput vs worker concurrency (bound: 5N / provider latency)",
            lambda: throughput.measure(latency_ms=args.latency_ms, connections=args.connections),
            throughput.table)
    section("reads", "2. DynamoDB items read per connection in a scheduled run",
            lambda: reads.measure(total=2_000 if args.quick else 10_000), reads.table)
    section("calls", "3. AWS and provider calls per operation vs the floors (SM warm)",
            lambda: calls.measure(quick=args.quick), calls.table)
    section("coldstart",
            "4. Cold start: handler import in a fresh interpreter, as in Lambda, tracer on (bound ~1x boto3)",
            lambda: coldstart.measure(samples=5 if args.quick else 15), coldstart.table)
    section("pool", "5. A worker batch of 10 at 300 ms: one by one vs the pool (bound: ceil(10/threads) x 300 ms)",
            lambda: pool.measure(latency_ms=300, rounds=1 if args.quick else 3), pool.table)
    section("proxy", "6. The proxy: proxied vs direct (callers and stack in processes of their own); calls per "
                     "proxied call vs the floors; broker CPU per warm call",
            lambda: proxy.measure(latency_ms=args.latency_ms, quick=args.quick), proxy.table)
    section("scheduler_scale", "7. The scheduler at a million connections, AWS answered in memory (target < 30 s)",
            lambda: scheduler_scale.measure(connections=100_000 if args.quick else scheduler_scale.CONNECTIONS),
            scheduler_scale.table)

    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "results.json"
    if args.only and path.exists():  # a partial run keeps the other sections of the last one
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if "throughput" in wanted:
        throughput.plot(results["throughput"], RESULTS_DIR / "throughput.png")
    say(f"\nWrote {path}" + (" and throughput.png" if "throughput" in wanted else "")
        + f" in {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
