"""The proxy (issue 9, point 12): what calling Insightly through the broker costs.

1. Added latency and throughput. The local stack (moto server, the stand-in over real HTTP
   answering after `latency_ms`, the gateway with SigV4 in front of the real ProxyFunction
   handler) holds one API-key connection whose account has a daily limit no run reaches.
   At concurrency C (1, 4, 16) C threads each send `rounds` GET Contacts?top=5, first
   straight to the stand-in with the connection's Authorization header (what a backend
   does with /token), then SigV4-signed through the proxy; each thread keeps its own
   keep-alive session, as a backend would. Added latency = proxied - direct at p50 and p95;
   throughput ratio = proxied calls/s / direct calls/s. Everything (gateway, handlers, moto,
   the stand-in, the callers) shares this one process and its GIL: at 16 callers the ratio
   shows this machine's CPU, not Lambda's, which runs each invocation in its own container.
2. AWS calls per proxied call, against issue 9's floors, through the real handler under moto
   in-process with FakeInsightly behind `responses` (as calls.py counts them). DynamoDB is
   split into reads (GetItem, Query) and writes (Update/Put/Delete); "Insightly" counts
   every request the stand-in saw (API calls and token endpoint calls).
   There is no in-memory credential cache: every proxied call decrypts the credential with
   KMS once (1 KMS per proxied call), so a revoked or rotated credential stops being used
   at the next call.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter

import boto3
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.bench.harness import aws_calls, moto_stack, now
from tests.bench.throughput import StandInControl
from tests.local import start_local_stack
from tests.support.signed import SignedCaller

CONCURRENCY = (1, 4, 16)
PATH, QUERY = "Contacts", "top=5"
READS = ("GetItem", "Query", "BatchGetItem", "Scan")
NAMES = {"dynamodb": "DDB", "reads": "read", "writes": "write", "kms": "KMS", "insightly": "Insightly"}

# Issue 9's floors per proxied call. A 401 recovery: the forced refresh's own floor (3
# DynamoDB, 2 KMS, 1 token call; calls.py "forced refresh") on top of the first call (1 read,
# 1 KMS, 1 Insightly), plus the retry (1 Insightly).
FLOORS = {
    "proxied GET, oauth2, fresh token": {"reads": 1, "writes": 0, "kms": 1, "insightly": 1},
    "proxied GET, api_key": {"reads": 1, "writes": 0, "kms": 1, "insightly": 1},
    "proxied GET x50, api_key, per call": {"reads": 1, "writes": 0, "kms": 1, "insightly": 1},
    "proxied GET, oauth2, 401 recovery": {"dynamodb": 4, "kms": 3, "insightly": 3},
    "proxied GET, Insightly's 429 (throttle recorded)": None,
    "proxied GET, answered 429 locally": {"reads": 1, "writes": 0, "kms": 0, "insightly": 0},
    # Issue 19: the connection and its quota group's record in one BatchGetItem. The issue's
    # floor is 0 KMS warm, which the data-key cache of issue 16 brings; without it, as here,
    # every proxied call decrypts once.
    "proxied call, quota group": {"dynamodb": 1, "kms": 1, "insightly": 1},
    "proxied call, quota group, first in a container": None,  # learns the group: GetItem x2
    "proxied call, quota group, background at the reserve": {"dynamodb": 1, "kms": 0, "insightly": 0},
}


# -- 1. latency and throughput on the local stack -------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_callers(concurrency: int, rounds: int, call) -> tuple[float, list[float], Counter]:
    """`concurrency` threads, each `rounds` calls on its own session: wall seconds, every
    call's latency in ms, and the statuses."""
    latencies, statuses, lock = [], Counter(), threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def caller() -> None:
        session = requests.Session()
        mine, seen = [], Counter()
        start.wait()
        for _ in range(rounds):
            began = time.perf_counter()
            status = call(session)
            mine.append((time.perf_counter() - began) * 1000)
            seen[status] += 1
        with lock:
            latencies.extend(mine)
            statuses.update(seen)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    wall = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - wall, latencies, statuses


def latency(*, latency_ms: float, rounds: int) -> dict:
    local = start_local_stack(demo=False, schedule=False)
    try:
        for source in local.sqs_sources:
            source.stop()
        standin = StandInControl(local.standin_url)
        account = requests.post(f"{local.standin_url}/_control/api-keys", timeout=5,
                                json={"pod": "na1", "daily_limit": 100_000_000}).json()
        backend = SignedCaller(local.gateway_url, local.region, local.access_key, local.secret_key)
        linked = backend.call("PUT", "/connections/bench-proxy/api-key",
                              {"api_key": account["api_key"], "api_url": account["api_url"]})
        assert linked.status_code == 200, linked.text
        token = backend.token("bench-proxy").json()
        direct_url = f"{token['api_base_url']}/{PATH}?{QUERY}"
        direct_headers = {"Authorization": token["authorization"], "Accept": "application/json"}
        proxy_url = f"{local.gateway_url}/connections/bench-proxy/proxy/{PATH}?{QUERY}"
        signer = SigV4Auth(Credentials(local.access_key, local.secret_key), "execute-api", local.region)

        def direct(session: requests.Session) -> int:
            return session.get(direct_url, headers=direct_headers, timeout=30).status_code

        def proxied(session: requests.Session) -> int:
            request = AWSRequest(method="GET", url=proxy_url, headers={"Accept": "application/json"})
            signer.add_auth(request)  # the backend's own signing is part of what it pays
            return session.get(proxy_url, headers=dict(request.headers), timeout=30).status_code

        standin.config(latency_ms=latency_ms)
        # Untimed: every handler copy the gateway will need ("containers"), clients, pools.
        run_callers(max(CONCURRENCY), 2, proxied)
        run_callers(max(CONCURRENCY), 2, direct)
        steps = []
        for concurrency in CONCURRENCY:
            measured = {}
            for mode, call in (("direct", direct), ("proxied", proxied)):
                wall, ms, statuses = run_callers(concurrency, rounds, call)
                measured[mode] = {"calls": len(ms), "per_second": round(len(ms) / wall, 1),
                                  "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 0.95), 1),
                                  "statuses": dict(statuses)}
            d, p = measured["direct"], measured["proxied"]
            flat = {f"{m}_{k}": v for m, r in measured.items() for k, v in r.items()}
            steps.append({"concurrency": concurrency, **flat,
                          "added_p50_ms": round(p["p50_ms"] - d["p50_ms"], 1),
                          "added_p95_ms": round(p["p95_ms"] - d["p95_ms"], 1),
                          "throughput_ratio": round(p["per_second"] / d["per_second"], 3)})
        writes = local.session.client("dynamodb").get_item(
            TableName=local.env["CONNECTIONS_TABLE"], Key={"connection_id": {"S": "bench-proxy"}})["Item"]
    finally:
        local.stop()
    return {"latency_ms": latency_ms, "rounds_per_caller": rounds, "steps": steps,
            "rate_limit_after": {k: v.get("N") for k, v in writes.get("rate_limit", {}).get("M", {}).items()},
            "ok": all(s[f"{m}_statuses"] == {200: s[f"{m}_calls"]} for s in steps for m in ("direct", "proxied"))}


# -- 2. AWS calls per proxied call ---------------------------------------------------------------

def counted(provider, work) -> tuple[dict, object]:
    before = Counter(provider.calls)
    with aws_calls() as ledger:
        answer = work()
    ops = ledger.operations()
    made = Counter(provider.calls) - before
    reads = sum(n for op, n in ops.items() if op.startswith("dynamodb:") and op.split(":")[1] in READS)
    dynamodb = ledger.services()["dynamodb"]
    counts = {"dynamodb": dynamodb, "reads": reads, "writes": dynamodb - reads, "kms": ledger.services()["kms"],
              "insightly": made["api"] + made["token"],
              "other_aws": sum(n for s, n in ledger.services().items() if s not in ("dynamodb", "kms"))}
    return {"counts": counts, "operations": dict(ops)}, answer


def calls() -> dict:
    rows: dict[str, dict] = {}
    with moto_stack() as moto:
        broker, provider = moto.broker, moto.provider
        table = moto.connections_table

        def row(name: str, work, expect, divisor: int = 1) -> None:
            measured, answer = counted(provider, work)
            assert expect(answer), f"{name}: unexpected answer {answer!r}"
            measured["counts"] = {k: round(v / divisor, 3) for k, v in measured["counts"].items()}
            floor = FLOORS[name]
            measured.update(floor=floor, divided_by=divisor, within_floor=None if floor is None else all(
                measured["counts"][k] <= v + 1e-9 for k, v in floor.items()))
            rows[name] = measured

        def proxied(connection_id: str):
            return broker.call("GET", f"/connections/{connection_id}/proxy/{PATH}", query=QUERY)

        assert broker.connect("oauth-user").linked
        account = provider.issue_api_key("na1", daily_limit=1_000_000)
        assert broker.connect_with_key("key-user", account["api_key"], account["api_url"]).linked
        quota_account = provider.issue_api_key("na1")
        assert broker.connect_with_key("quota-user", quota_account["api_key"], quota_account["api_url"]).linked
        for connection_id in ("oauth-user", "key-user", "quota-user"):  # warm: clients, the first quota write
            assert proxied(connection_id).status == 200

        row("proxied GET, oauth2, fresh token", lambda: proxied("oauth-user"), lambda a: a.status == 200)
        row("proxied GET, api_key", lambda: proxied("key-user"), lambda a: a.status == 200)
        row("proxied GET x50, api_key, per call", lambda: [proxied("key-user") for _ in range(50)],
            lambda a: {x.status for x in a} == {200}, divisor=50)
        for token in list(provider.access_tokens):
            provider.access_tokens[token] = 1  # Insightly refuses the token the broker holds (expired early)
        row("proxied GET, oauth2, 401 recovery", lambda: proxied("oauth-user"),
            lambda a: a.status == 200 and "X-Broker-Error" not in a.headers)
        provider.set_quota(quota_account["account"], remaining=0)
        row("proxied GET, Insightly's 429 (throttle recorded)", lambda: proxied("quota-user"),
            lambda a: a.status == 429 and "X-Broker-Error" not in a.headers)
        row("proxied GET, answered 429 locally", lambda: proxied("quota-user"),
            lambda a: a.status == 429 and a.headers.get("X-Broker-Error") == "provider_quota_exhausted")
        throttled = boto3.client("dynamodb").get_item(TableName=table, Key={"connection_id": {"S": "quota-user"}})
        assert int(throttled["Item"]["throttled_until"]["N"]) > now()

        # Issue 19: two keys of one Insightly instance in one quota group.
        group_account = provider.issue_api_key("na1", daily_limit=1000)
        second = provider.issue_api_key(account=group_account["account"])
        for connection_id, key in (("grp-a", group_account), ("grp-b", second)):
            assert broker.connect_with_key(connection_id, key["api_key"], key["api_url"]).linked
            assert broker.call("PATCH", f"/connections/{connection_id}", body={"quota_group": "cust"}).status == 200
        assert proxied("grp-b").status == 200  # the group's first observation (a write), and grp-b's hint
        row("proxied call, quota group, first in a container", lambda: proxied("grp-a"), lambda a: a.status == 200)
        row("proxied call, quota group", lambda: proxied("grp-a"), lambda a: a.status == 200)
        provider.set_quota(group_account["account"], remaining=201)
        assert proxied("grp-a").status == 200  # 200 left of 1000: the reserve (20 %) is reached
        row("proxied call, quota group, background at the reserve",
            lambda: broker.call("GET", f"/connections/grp-b/proxy/{PATH}", query=QUERY,
                                headers={"X-Broker-Priority": "background"}),
            lambda a: a.status == 429 and a.headers.get("X-Broker-Error") == "quota_reserved")
    return {"rows": rows, "credential_cache": "none: 1 KMS decrypt per proxied call"}


def measure(*, latency_ms: float, quick: bool) -> dict:
    return {"latency": latency(latency_ms=latency_ms, rounds=10 if quick else 25), "calls": calls()}


def table(r: dict) -> str:
    lat = r["latency"]
    lines = [f"a) GET {PATH}?{QUERY}, provider latency {lat['latency_ms']:g} ms, "
             f"{lat['rounds_per_caller']} calls per caller, one process (gateway, handlers, moto, stand-in, callers)",
             f"{'callers':>7}  {'direct p50/p95 ms':>17}  {'proxied p50/p95 ms':>18}  {'added p50/p95 ms':>16}  "
             f"{'direct/s':>8}  {'proxied/s':>9}  {'ratio':>5}"]
    for s in lat["steps"]:
        lines.append(f"{s['concurrency']:>7}  {s['direct_p50_ms']:>8.1f}/{s['direct_p95_ms']:<8.1f}  "
                     f"{s['proxied_p50_ms']:>9.1f}/{s['proxied_p95_ms']:<8.1f}  "
                     f"{s['added_p50_ms']:>7.1f}/{s['added_p95_ms']:<8.1f}  {s['direct_per_second']:>8.1f}  "
                     f"{s['proxied_per_second']:>9.1f}  {s['throughput_ratio']:>5.2f}")
    if not lat["ok"]:
        lines.append("FAILED: a call did not answer 200")
    head = ("b) per proxied call", "DDB read", "DDB write", "KMS", "Insightly", "floor", "within?")
    rows = []
    for name, row in r["calls"]["rows"].items():
        c, f = row["counts"], row["floor"]
        floor = "n/a" if f is None else ", ".join(f"{NAMES[k]} {v:g}" for k, v in f.items())
        rows.append((name, f"{c['reads']:g}", f"{c['writes']:g}", f"{c['kms']:g}", f"{c['insightly']:g}", floor,
                     {True: "yes", False: "NO", None: "-"}[row["within_floor"]]))
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines += [fmt.format(*x).rstrip() for x in [head, tuple("-" * w for w in widths), *rows]]
    lines.append(f"credential cache: {r['calls']['credential_cache']}")
    return "\n".join(lines)
