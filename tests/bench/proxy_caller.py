"""One caller process of the proxy benchmark (tests/bench/proxy.py): a SaaS backend calling
Insightly straight or through the broker, in a process of its own as a backend would be.

Reads one JSON line from stdin: {"mode": "direct"|"proxied", "url", "headers", "rounds",
"signing": {"access_key", "secret_key", "region"} (proxied only)}. Makes one untimed call
(its keep-alive connection, as a warm backend has), prints "ready", waits for a line on
stdin, then makes `rounds` calls on one session and prints one JSON line: the latency of
every call in ms, the statuses, and when it began and ended (time.perf_counter, the
system-wide monotonic clock on Linux: comparable across processes).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import requests


def caller(spec: dict):
    session, url, headers = requests.Session(), spec["url"], spec.get("headers") or {}
    if spec["mode"] == "direct":
        return lambda: session.get(url, headers=headers, timeout=60).status_code
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signing = spec["signing"]
    signer = SigV4Auth(Credentials(signing["access_key"], signing["secret_key"]), "execute-api", signing["region"])

    def proxied() -> int:
        request = AWSRequest(method="GET", url=url, headers=dict(headers))
        signer.add_auth(request)  # the backend's own signing is part of what it pays
        return session.get(url, headers=dict(request.headers), timeout=60).status_code

    return proxied


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    call = caller(spec)
    call()
    print("ready", flush=True)
    sys.stdin.readline()
    latencies, statuses = [], Counter()
    began = time.perf_counter()
    for _ in range(spec["rounds"]):
        start = time.perf_counter()
        statuses[call()] += 1
        latencies.append((time.perf_counter() - start) * 1000)
    ended = time.perf_counter()
    print(json.dumps({"latencies_ms": latencies, "statuses": dict(statuses), "began": began, "ended": ended}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
