"""The stack process of the proxy benchmark (tests/bench/proxy.py): the local stack (moto
server, the Insightly stand-in, the gateway with the real ProxyFunction handler) in a
process of its own, apart from the callers.

`python -m tests.bench.proxy_stack LATENCY_MS`: starts the stack on free loopback ports,
links one API-key connection whose account has a daily limit no run reaches, sets the
stand-in's latency, prints one JSON line (what a caller needs: the proxy URL, the direct URL
and the connection's Authorization header, the signing credentials), then serves until its
stdin is closed.
"""

from __future__ import annotations

import json
import sys

import requests

from local import start_local_stack
from tests.bench.__main__ import PROCESS_ENV  # noqa: F401 - sets this process's fake AWS environment first
from tests.bench.harness import broker_output, loopback_only
from tests.bench.throughput import StandInControl
from tests.support.signed import SignedCaller

PATH, QUERY = "Contacts", "top=5"


def main() -> int:
    latency_ms = float(sys.argv[1])
    loopback_only()
    with broker_output():
        local = start_local_stack(demo=False, schedule=False)
    try:
        for source in local.sqs_sources:
            source.stop()
        account = requests.post(f"{local.standin_url}/_control/api-keys", timeout=5,
                                json={"pod": "na1", "daily_limit": 100_000_000}).json()
        backend = SignedCaller(local.gateway_url, local.region, local.access_key, local.secret_key)
        with broker_output():
            linked = backend.call("PUT", "/connections/bench-proxy/api-key",
                                  {"api_key": account["api_key"], "api_url": account["api_url"]})
            assert linked.status_code == 200, linked.text
            token = backend.token("bench-proxy").json()
        StandInControl(local.standin_url).config(latency_ms=latency_ms)
        print(json.dumps({
            "direct_url": f"{token['api_base_url']}/{PATH}?{QUERY}",
            "direct_headers": {"Authorization": token["authorization"], "Accept": "application/json"},
            "proxy_url": f"{local.gateway_url}/connections/bench-proxy/proxy/{PATH}?{QUERY}",
            "proxy_headers": {"Accept": "application/json"},
            "signing": {"access_key": local.access_key, "secret_key": local.secret_key, "region": local.region},
        }), flush=True)
        with broker_output():  # the broker's log lines and metrics: measured elsewhere, not shown
            sys.stdin.read()
    finally:
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
