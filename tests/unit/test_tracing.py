"""X-Ray tracing of the handlers: on in Lambda (Tracing: Active), and no X-Ray SDK in a cold
start that traces nothing.

Each case runs in a fresh interpreter with Lambda's environment (LAMBDA_TASK_ROOT set,
POWERTOOLS_TRACE_DISABLED unset): the SDK patches process-wide and Powertools keeps its
Tracer's settings per process. The "daemon" is a UDP socket of this test on loopback; what
the SDK emits there is what X-Ray would receive."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from local.lambda_events import load_handler
from local.stack import ROOT, Stack
from tests.bench.coldstart import environment

FUNCTIONS = {logical: res["Properties"]["CodeUri"]
             for logical, res in sorted(Stack().of_type("AWS::Serverless::Function").items())}
SAMPLED = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
NOT_SAMPLED = SAMPLED.replace("Sampled=1", "Sampled=0")

# One decorated handler as every functions/*/app.py has it; argv: the trace header of each call.
INVOKE = r"""
import json, os, sys
from broker.platform.observability import tracer
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    return "done"
for header in sys.argv[1:]:
    os.environ["_X_AMZN_TRACE_ID"] = header  # what the runtime sets for each invocation
    assert lambda_handler({}, None) == "done"
from_sdk = sys.modules.get("aws_xray_sdk.core.patcher")
print(json.dumps({"xray_loaded": "aws_xray_sdk" in sys.modules,
                  "patched": sorted(from_sdk._PATCHED_MODULES) if from_sdk else []}))
"""


def lambda_environment(daemon_port: int = 2000, **extra: str) -> dict[str, str]:
    env = environment(Stack(), "RefreshFunction")
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    env.update({"AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{daemon_port}", **extra})
    return env


def run(code: str, env: dict[str, str], *args: str, cwd=ROOT) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def daemon():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    yield sock
    sock.close()


def received(sock) -> list[dict]:
    """Every segment document the SDK sent (each datagram: a JSON header line, then the entity)."""
    entities = []
    while True:
        try:
            datagram = sock.recv(65536).decode()
        except TimeoutError:
            return entities
        entities.append(json.loads(datagram.split("\n", 1)[1]))


@pytest.mark.parametrize("logical", FUNCTIONS)
def test_importing_a_handler_with_tracing_on_does_not_load_the_xray_sdk(logical):
    env = environment(Stack(), logical)
    assert "POWERTOOLS_TRACE_DISABLED" not in env and env["LAMBDA_TASK_ROOT"]
    found = run("import json, sys, app; print(json.dumps({'xray_loaded': 'aws_xray_sdk' in sys.modules}))",
                env, cwd=ROOT / FUNCTIONS[logical])
    assert found == {"xray_loaded": False}


def test_a_sampled_invocation_in_lambda_is_traced_with_aws_and_provider_calls_patched(daemon):
    found = run(INVOKE, lambda_environment(daemon.getsockname()[1]), SAMPLED)
    assert found["xray_loaded"] and {"botocore", "requests"} <= set(found["patched"])
    handler = [e for e in received(daemon) if e.get("name") == "## lambda_handler"]
    assert len(handler) == 1
    assert handler[0]["trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert handler[0]["annotations"]["ColdStart"] is True


def test_an_unsampled_cold_start_loads_no_xray_sdk_and_the_next_sampled_call_is_not_a_cold_start(daemon):
    env = lambda_environment(daemon.getsockname()[1])
    assert run(INVOKE, env, NOT_SAMPLED) == {"xray_loaded": False, "patched": []}
    assert received(daemon) == []

    found = run(INVOKE, env, NOT_SAMPLED, SAMPLED)
    assert found["xray_loaded"]
    handler = [e for e in received(daemon) if e.get("name") == "## lambda_handler"]
    assert [h["annotations"]["ColdStart"] for h in handler] == [False]


def test_tracing_disabled_by_environment_loads_no_xray_sdk(daemon):
    env = lambda_environment(daemon.getsockname()[1], POWERTOOLS_TRACE_DISABLED="1")
    assert run(INVOKE, env, SAMPLED) == {"xray_loaded": False, "patched": []}
    assert received(daemon) == []


@pytest.mark.parametrize("logical", FUNCTIONS)
def test_every_handler_keeps_the_tracer_decorator(logical):
    handler = load_handler(FUNCTIONS[logical]).lambda_handler
    chain = [handler]
    while hasattr(chain[-1], "__wrapped__"):
        chain.append(chain[-1].__wrapped__)
    assert any(getattr(f, "traced_by", None) == "broker.platform.observability" for f in chain)

