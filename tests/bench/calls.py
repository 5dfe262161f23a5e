"""AWS and provider calls per operation, against the floors table of docs/architecture.md.

Every route runs through its real handler (InProcessBroker builds the HTTP API 2.0 event),
with moto in-process and FakeInsightly behind `responses`. Every botocore call is counted
(harness.aws_calls); provider calls come from FakeInsightly's counters. Secrets Manager is
counted warm: a full connect flow runs first, so the cached client secret is filled, as in
a warm container. Log and metric output is counted in characters (CloudWatch Logs bills
ingestion by the byte).

The scheduled path is measured by difference over three runs of the real scheduler and
worker handlers, with Lambda's SQS event source (local/schedule.py) receiving and
deleting the messages:
    R0  one connection, not due                     -> the fixed cost of a run
    R1  + X more connections, none due              -> (R1 - R0) / X = cost per connection not due
    R2  D of them due                               -> (R2 - R1) / D = cost per due connection
and (R2 - L) / D, the cost per due connection with the run's fixed cost but the lease spread
over D. L, the lease (one run at a time), is its own row: the real lease taken and released
around a run that does nothing; R0 - L is the rest of the fixed cost (the index pages).
API-key connections (issue 8) the same way, from a run with nothing due (K0): + Y keys, none
due (K1); D of them due (K2); D due again but postponed, their account's quota used up (K3).
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlsplit

import boto3
from aws_lambda_powertools.utilities import parameters

from broker import services
from broker.background.scheduler import one_run_at_a_time
from local.lambda_events import LambdaContext, load_handler
from local.schedule import sqs_event_sources
from tests.bench.harness import aws_calls, broker_output, make_due, moto_stack, now
from tests.support.inprocess import RETURN_TO, query_of

PROVIDER_CALLS = ("token", "users_me", "revoke")  # "token" counts every token endpoint call

# The floors (docs/architecture.md): DynamoDB item calls, KMS, Secrets Manager (warm), provider HTTP.
# Query pages are allowed only where the table says "amortized index page" (<= 1 per due
# connection). None: the table gives no floor for the operation.
FLOORS = {
    "create connect session": {"dynamodb": 1, "kms": 0, "secretsmanager": 0, "provider": 0},
    "authorize redirect": {"dynamodb": 2, "kms": 0, "secretsmanager": 0, "provider": 0},
    # Session binding (confirm): the callback writes a pending completion instead of the connection,
    # and the SaaS backend's complete call reads it back (one conditional delete) and links.
    "callback": {"dynamodb": 2, "kms": 1, "secretsmanager": 0, "provider": 2},
    "complete (session binding)": {"dynamodb": 2, "kms": 0, "secretsmanager": 0, "provider": 0},
    # A container's first read of a credential opens its data key with KMS; a warm container
    # finds it in its DataKeyCache (broker.credentials.data_key_cache).
    "token, still fresh": {"dynamodb": 1, "kms": 1, "secretsmanager": 0, "provider": 0},
    "warm token read": {"dynamodb": 1, "kms": 0, "secretsmanager": 0, "provider": 0},
    "warm token read, api_key": {"dynamodb": 1, "kms": 0, "secretsmanager": 0, "provider": 0},
    "warm proxied call": {"dynamodb": 1, "kms": 0, "secretsmanager": 0, "provider": 1},
    "warm proxied call, api_key": {"dynamodb": 1, "kms": 0, "secretsmanager": 0, "provider": 1},
    "token, due": {"dynamodb": 3, "kms": 2, "secretsmanager": 0, "provider": 1},
    "forced refresh": {"dynamodb": 3, "kms": 2, "secretsmanager": 0, "provider": 1},
    "status": None,
    "delete (+ revocation)": None,
    "authorize, cold container": None,
    # The floor: "lease write + release" per run; the index pages (fixed per run) have no number.
    "scheduled: lease, fixed per run": {"dynamodb": 2, "query_pages": 0, "kms": 0, "secretsmanager": 0, "provider": 0},
    "scheduled: fixed per run": None,
    "scheduled: per due (marginal)":
        {"dynamodb": 3, "query_pages": 1, "kms": 2, "secretsmanager": 0, "provider": 1},
    "scheduled: per due (+ fixed share)":
        {"dynamodb": 3, "query_pages": 1, "kms": 2, "secretsmanager": 0, "provider": 1},
    "scheduled: per not-due (marginal)":
        {"dynamodb": 0, "query_pages": 0, "kms": 0, "secretsmanager": 0, "provider": 0},
    # API-key connections (issue 8, point 12). "provider" is the Insightly call (Users/Me).
    "key page render": {"dynamodb": 1, "kms": 0, "secretsmanager": 0, "provider": 0},
    "key page submit, key refused": None,
    # Issue 8 asked <= 2 DynamoDB. Before it calls Insightly the page reads the session in the
    # write that takes an attempt, so nobody can use it to try keys without a live session:
    # that write + 2 more (spend the session, store the pending completion) = 3, one over the
    # issue's figure by design.
    "key page submit": {"dynamodb": 3, "kms": 1, "secretsmanager": 0, "provider": 1},
    "PUT api-key": {"dynamodb": 1, "kms": 1, "secretsmanager": 0, "provider": 1},
    "token, api_key": {"dynamodb": 1, "kms": 1, "secretsmanager": 0, "provider": 0},
    "forced check, api_key": {"dynamodb": 3, "kms": 1, "secretsmanager": 0, "provider": 1},
    "scheduled: per due key (marginal)":
        {"dynamodb": 3, "query_pages": 1, "kms": 1, "secretsmanager": 0, "provider": 1},
    "scheduled: per due key, postponed (marginal)": None,
    "scheduled: per not-due key (marginal)":
        {"dynamodb": 0, "query_pages": 0, "kms": 0, "secretsmanager": 0, "provider": 0},
}

SCHEDULE_EVENT = {"version": "0", "id": "bench", "detail-type": "Scheduled Event", "source": "aws.events",
                  "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
                  "resources": [], "detail": {}}


class Meter:
    """Calls of one piece of work: AWS by service, provider by endpoint, output characters."""

    def __init__(self, provider):
        self.provider = provider

    def __call__(self, work) -> dict:
        before = Counter(self.provider.calls)
        with broker_output() as output, aws_calls() as ledger:
            answer = work()
        provider = Counter(self.provider.calls) - before
        services = ledger.services()
        queries = ledger.operations()["dynamodb:Query"]
        counts = {"dynamodb": services["dynamodb"] - queries, "query_pages": queries, "kms": services["kms"],
                  "secretsmanager": services["secretsmanager"], "sqs": services["sqs"], "events": services["events"],
                  # FakeInsightly counts Users/Me under "api" too: the rest of "api" is what the proxy sent.
                  "provider": sum(provider[name] for name in PROVIDER_CALLS)
                  + max(0, provider["api"] - provider["users_me"])}
        return {"counts": counts, "operations": dict(ledger.operations()),
                "provider_calls": {k: v for k, v in provider.items() if v}, "log_chars": output.chars,
                "answer": answer}


def within(counts: dict, floor: dict | None) -> bool | None:
    if floor is None:
        return None
    return all(counts.get(column, 0) <= limit + 1e-9 for column, limit in floor.items())


def per(counts: dict, divisor: float) -> dict:
    return {k: round(v / divisor, 3) for k, v in counts.items()}


def minus(a: dict, b: dict) -> dict:
    return {k: a[k] - b.get(k, 0) for k in a}


def measure(*, quick: bool) -> dict:
    not_due, due = (20, 10) if quick else (60, 30)
    rows: dict[str, dict] = {}
    with moto_stack() as moto:
        broker, meter = moto.broker, Meter(moto.provider)
        dynamodb = boto3.client("dynamodb")

        def row(name: str, measured: dict, expect=None):
            answer = measured.pop("answer")
            if expect is not None:
                assert expect(answer), f"{name}: unexpected answer {answer!r}"
            measured["floor"] = FLOORS[name]
            measured["within_floor"] = within(measured["counts"], FLOORS[name])
            rows[name] = measured
            return answer

        def warm_rows(connection_id: str, kind: str = "") -> None:
            """/token and a proxied call in a container whose data-key cache holds the credential's key."""
            token, proxied = f"/connections/{connection_id}/token", f"/connections/{connection_id}/proxy/Contacts"
            row("warm token read" + kind, meter(lambda: broker.call("GET", token)), lambda a: a.status == 200)
            # Untimed: the connection's first proxied call also records its quota (one write).
            assert broker.call("GET", proxied, query="top=5").status == 200
            row("warm proxied call" + kind, meter(lambda: broker.call("GET", proxied, query="top=5")),
                lambda a: a.status == 200)

        # A first connect flow fills the cached client secret and creates the clients.
        assert broker.connect("warm-up").linked

        # -- the routes, one connection through its whole life --------------------------------
        session = row("create connect session", meter(lambda: broker.create_session("user-1")),
                      lambda a: a.status == 201)
        redirect = row("authorize redirect", meter(lambda: broker.authorize(session.json["connect_url"])),
                       lambda a: a.status == 302 and urlsplit(a.location).path.endswith("/oauth2/authorize"))
        back = moto.provider.approve(redirect.location)  # the person approves at the provider
        cookie = redirect.cookie("ic_oauth_browser").value
        landing = row("callback", meter(lambda: broker.callback(back, cookie)),
                      lambda a: a.status == 302 and query_of(a.location)["status"] == "pending")
        returned = query_of(landing.location)
        row("complete (session binding)",
            meter(lambda: broker.complete(returned["session_id"], returned["completion_code"])),
            lambda a: a.status == 200)
        # The refresh function's container has not opened this credential yet (in this one
        # process every function shares one cache: emptied to stand for that container).
        services.data_key_cache().wipe()
        row("token, still fresh", meter(lambda: broker.call("GET", "/connections/user-1/token")),
            lambda a: a.status == 200)
        warm_rows("user-1")
        # Expiring within the 60 s skew: /token must refresh first.
        dynamodb.update_item(TableName=moto.connections_table, Key={"connection_id": {"S": "user-1"}},
                             UpdateExpression="SET expires_at = :soon, refresh_due_at = :past",
                             ExpressionAttributeValues={":soon": {"N": str(now() + 30)},
                                                        ":past": {"N": str(now() - 1)}})
        row("token, due", meter(lambda: broker.call("GET", "/connections/user-1/token")),
            lambda a: a.status == 200)
        row("forced refresh", meter(lambda: broker.call("POST", "/connections/user-1/refresh")),
            lambda a: a.status == 200)
        row("status", meter(lambda: broker.call("GET", "/connections/user-1")), lambda a: a.status == 200)
        row("delete (+ revocation)", meter(lambda: broker.call("DELETE", "/connections/user-1")),
            lambda a: a.status == 204)

        # -- API-key connections: the key page, the backend's PUT, /token and a check --------
        account = moto.provider.issue_api_key("na1")
        key_session = broker.call("POST", "/connect-sessions", body={
            "connection_id": "key-user", "return_to": RETURN_TO, "auth_mode": "api_key"})
        assert key_session.status == 201
        page = row("key page render", meter(lambda: broker.open_key_page(key_session.json["connect_url"])),
                   lambda a: a.status == 200)
        page = row("key page submit, key refused",
                   meter(lambda: broker.submit_key(page, "not-the-right-key", account["api_url"])),
                   lambda a: a.status == 422)
        landing = row("key page submit", meter(lambda: broker.submit_key(page, account["api_key"], account["api_url"])),
                      lambda a: a.status == 302 and query_of(a.location)["status"] == "pending")
        returned = query_of(landing.location)
        assert broker.complete(returned["session_id"], returned["completion_code"]).status == 200
        key_body = {"api_key": account["api_key"], "api_url": account["api_url"]}
        row("PUT api-key", meter(lambda: broker.call("PUT", "/connections/key-put/api-key", body=key_body)),
            lambda a: a.status == 200 and a.json["auth_mode"] == "api_key")
        services.data_key_cache().wipe()  # as above: the refresh function's own container
        row("token, api_key", meter(lambda: broker.call("GET", "/connections/key-user/token")),
            lambda a: a.status == 200 and a.json["authorization"].startswith("Basic "))
        warm_rows("key-user", ", api_key")
        row("forced check, api_key", meter(lambda: broker.call("POST", "/connections/key-user/refresh")),
            lambda a: a.status == 200 and a.json["auth_mode"] == "api_key")
        parameters.clear_caches()  # a new container: the client secret is not cached yet
        cold_url = broker.create_session("user-2").json["connect_url"]
        row("authorize, cold container", meter(lambda: broker.authorize(cold_url)),
            lambda a: a.status == 302)

        # -- the scheduled path ---------------------------------------------------------------
        scheduler = load_handler("functions/scheduler/")
        source = sqs_event_sources(moto.stack, boto3.client("sqs"))[0]
        assert source.queue_url  # looked up once, as the event source mapping knows its queue

        def scheduled_run() -> dict:
            # A worker refreshes a connection about once an hour: its container has not opened
            # that credential within the cache's age (an empty cache stands for it).
            services.data_key_cache().wipe()
            enqueued = scheduler.lambda_handler(SCHEDULE_EVENT, LambdaContext(timeout_seconds=300))
            while source.poll_once(wait_seconds=0):  # Lambda's poller; the last receive finds nothing
                pass
            return enqueued

        r0 = meter(scheduled_run)
        assert r0["answer"]["enqueued"] == 0
        ids = [f"tenant-{n:03d}" for n in range(not_due + due)]
        for connection_id in ids:
            assert broker.connect(connection_id).linked
        r1 = meter(scheduled_run)
        assert r1["answer"]["enqueued"] == 0
        for connection_id in ids[:due]:
            make_due(dynamodb, moto.connections_table, connection_id, now())
        refreshes_before = moto.provider.calls["refresh_token"]
        r2 = meter(scheduled_run)
        assert r2["answer"]["enqueued"] == due and moto.provider.calls["refresh_token"] - refreshes_before == due

        def difference(run: dict, baseline: dict | None, divisor: int) -> dict:
            """Counts per connection (run - baseline, / divisor); `operations` stay those of the whole run."""
            counts = minus(run["counts"], baseline["counts"]) if baseline else run["counts"]
            chars = run["log_chars"] - (baseline["log_chars"] if baseline else 0)
            return {**run, "counts": per(counts, divisor), "log_chars": chars / divisor, "divided_by": divisor}

        lease = meter(lambda: one_run_at_a_time(services.connect_flow().flows, "bench-lease", lambda: "ran",
                                                now=now(), seconds_left=lambda: 300))
        row("scheduled: lease, fixed per run", lease, lambda a: a == "ran")
        row("scheduled: fixed per run", difference(r0, lease, 1))
        row("scheduled: per due (marginal)", difference(r2, r1, due))
        row("scheduled: per due (+ fixed share)", difference(r2, lease, due))
        row("scheduled: per not-due (marginal)", difference(r1, r0, not_due + due))

        # -- the scheduled path for API-key connections (checks with Users/Me) -----------------
        k0 = meter(scheduled_run)
        assert k0["answer"]["enqueued"] == 0
        keys = [f"key-tenant-{n:03d}" for n in range(not_due + due)]
        for connection_id in keys:  # one account each: no account's quota runs low
            key = moto.provider.issue_api_key("na1")
            assert broker.call("PUT", f"/connections/{connection_id}/api-key",
                               body={"api_key": key["api_key"], "pod": "na1"}).status == 200
        k1 = meter(scheduled_run)
        assert k1["answer"]["enqueued"] == 0
        for connection_id in keys[:due]:
            make_due(dynamodb, moto.connections_table, connection_id, now())
        checks_before = moto.provider.calls["users_me"]
        k2 = meter(scheduled_run)
        assert k2["answer"]["enqueued"] == due and moto.provider.calls["users_me"] - checks_before == due
        for connection_id in keys[:due]:  # due again, but the last answer said the quota is used up
            dynamodb.update_item(TableName=moto.connections_table, Key={"connection_id": {"S": connection_id}},
                                 UpdateExpression="SET refresh_due_at = :due, rate_limit = :rate",
                                 ExpressionAttributeValues={":due": {"N": str(now() - 60)}, ":rate": {"M": {
                                     "limit": {"N": "1000"}, "remaining": {"N": "0"},
                                     "observed_at": {"N": str(now())}}}})
        checks_before = moto.provider.calls["users_me"]
        k3 = meter(scheduled_run)
        assert k3["answer"]["enqueued"] == due and moto.provider.calls["users_me"] == checks_before

        row("scheduled: per due key (marginal)", difference(k2, k1, due))
        row("scheduled: per due key, postponed (marginal)", difference(k3, k1, due))
        row("scheduled: per not-due key (marginal)", difference(k1, k0, not_due + due))
    runs = (f"R0: 1 connection, not due; R1: +{not_due + due} not due; R2: {due} of those due; "
            f"K0: nothing due; K1: +{not_due + due} API keys, none due; K2: {due} of those due; "
            f"K3: the same {due} due again, quota used up")
    return {"rows": rows, "scheduled": {"due": due, "not_due": not_due, "shards": 8, "runs": runs}}


def table(result: dict) -> str:
    head = ("operation", "DynamoDB", "KMS", "SM", "SQS", "Events", "provider", "floor (DDB/KMS/SM/prov)", "within?")
    lines = []
    for name, r in result["rows"].items():
        c, f = r["counts"], r["floor"]
        ddb = f"{c['dynamodb']:g}" + (f"+{c['query_pages']:g}Q" if c["query_pages"] else "")
        floor = "n/a" if f is None else "/".join(
            ("{:g}".format(f["dynamodb"]) + ("+1Q" if f.get("query_pages") else "")) if k == "dynamodb"
            else f"{f[k]:g}" for k in ("dynamodb", "kms", "secretsmanager", "provider"))
        verdict = {True: "yes", False: "NO", None: "-"}[r["within_floor"]]
        lines.append((name, ddb, f"{c['kms']:g}", f"{c['secretsmanager']:g}", f"{c['sqs']:g}", f"{c['events']:g}",
                      f"{c['provider']:g}", floor, verdict))
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rows = [head, tuple("-" * w for w in widths), *lines]
    return "\n".join(fmt.format(*x).rstrip() for x in rows)
