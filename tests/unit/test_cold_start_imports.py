"""What a handler's import (Lambda's Init phase) loads: only what every invocation needs.

Fresh interpreters with the function's environment from the template. pyOpenSSL and awscrt
are blocked as absent: the Lambda runtime does not have them (nor does the layer), and in
the dev virtualenv boto3 would otherwise load `cryptography` through pyOpenSSL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from local.stack import ROOT, Stack
from tests.bench.coldstart import environment

AS_IN_LAMBDA = "import sys; sys.modules['OpenSSL'] = sys.modules['awscrt'] = None\n"
LOADED = AS_IN_LAMBDA + "import json, app; print(json.dumps(sorted(m for m in sys.modules if m in sys.argv[1:])))"
ON_SOME_PATHS = ("cryptography", "aws_lambda_powertools.utilities.parameters", "aws_xray_sdk")
# Every function, the webhook sender included (it exists only with a WebhookUrl).
STACK = Stack(parameters={"WebhookUrl": "https://hooks.example.com/insightly"})
CODE_URIS = {logical: res["Properties"]["CodeUri"]
             for logical, res in STACK.of_type("AWS::Serverless::Function").items()}
# The functions whose every invocation calls out over requests: the callback exchanges a code,
# the proxy calls Insightly, the worker refreshes, the webhook sender POSTs. The others call
# out on some routes or runs only (authorize never), so they load requests when they do.
CALL_OUT_EVERY_TIME = {"CallbackFunction", "ProxyFunction", "RefreshWorkerFunction", "WebhookFunction"}


def loaded_by_import(logical: str, *modules: str) -> list[str]:
    """Which of `modules` importing the function's app.py loads, in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", LOADED, *modules], env=environment(STACK, logical),
                          capture_output=True, text=True, timeout=120, cwd=ROOT / CODE_URIS[logical])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("logical", sorted(CODE_URIS))
def test_a_handler_import_loads_no_vault_cipher_secrets_utility_or_xray_sdk(logical):
    assert loaded_by_import(logical, *ON_SOME_PATHS) == []


@pytest.mark.parametrize("logical", ["RefreshFunction", "RefreshWorkerFunction"])
def test_token_routes_and_the_worker_do_not_import_the_connect_flows(logical):
    flows = ("broker.connect.oauth_flow", "broker.connect.api_keys", "broker.connect.flowstore",
             "broker.connect.flow_table", "broker.connect.sessions", "broker.connect.completions",
             "broker.connect.run_lease", "broker.connect.key_page")
    assert loaded_by_import(logical, *flows) == []


@pytest.mark.parametrize("logical", sorted(CODE_URIS))
def test_a_handler_import_loads_requests_only_where_every_invocation_calls_out(logical):
    assert loaded_by_import(logical, "requests") == (["requests"] if logical in CALL_OUT_EVERY_TIME else [])


@pytest.mark.parametrize("logical", sorted(CODE_URIS))
def test_only_the_proxy_function_loads_the_proxy(logical):
    proxy = ["broker.proxy.call", "broker.proxy.rules"]
    assert loaded_by_import(logical, *proxy) == (proxy if logical == "ProxyFunction" else [])


# What every invocation of a function uses is loaded in its Init (Lambda gives Init the whole
# CPU), not by its first request; the other functions do not load it at all (tests above).
USED_BY_EVERY_INVOCATION = {
    "AuthorizeFunction": ["broker.connect.flowstore", "broker.connect.oauth_flow"],
    "CallbackFunction": ["broker.connect.flowstore", "broker.connect.oauth_flow"],
    "KeyPageFunction": ["broker.connect.api_keys", "broker.connect.key_page", "broker.connect.oauth_flow"],
    "ProxyFunction": ["broker.proxy.call"],
    "SchedulerFunction": ["broker.background.scheduler"],
    "RefreshWorkerFunction": ["broker.background.worker"],
    "WebhookFunction": ["broker.background.webhooks"],
}


@pytest.mark.parametrize("logical", sorted(USED_BY_EVERY_INVOCATION))
def test_a_function_loads_in_its_init_what_every_invocation_uses(logical):
    assert loaded_by_import(logical, *USED_BY_EVERY_INVOCATION[logical]) == USED_BY_EVERY_INVOCATION[logical]


# Powertools' resolver and event data classes: their eager package __init__s cost about a
# quarter of a boto3 import (docs/benchmarks.md). Functions dispatch on the routeKey instead.
RESOLVER_PACKAGES = ("aws_lambda_powertools.event_handler", "aws_lambda_powertools.utilities.data_classes")


@pytest.mark.parametrize("logical", sorted(CODE_URIS))
def test_no_handler_import_reaches_powertools_resolver_or_data_classes(logical):
    assert loaded_by_import(logical, *RESOLVER_PACKAGES) == []
