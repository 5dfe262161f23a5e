"""Each function as Lambda starts it: its handler module imported in a fresh interpreter whose
environment is the template's for that function, plus only what Lambda itself sets (region,
credentials, function name, an unsampled trace header) and the local AWS endpoint; then
invoked on its events/ file, which records a metric (the cold start at least).

Nothing of the test process leaks in: no conftest, no POWERTOOLS_* it might set. A function
whose Logger or Metrics depend on a variable the template does not give, or on an import
order only the tests get right, writes `service_undefined` or fails its metric flush here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from local.__main__ import enable_webhooks
from local.aws import MotoServer, session_for
from local.stack import ROOT, Stack

REGION = "us-east-1"
EVENT_OF = {"AuthorizeFunction": "authorize.json", "CallbackFunction": "callback.access-denied.json",
            "KeyPageFunction": "key_page.json", "ConnectionsFunction": "connections.get.json",
            "RefreshFunction": "refresh.token.json", "ProxyFunction": "proxy.get-contacts.json",
            "SchedulerFunction": "scheduler.json", "RefreshWorkerFunction": "worker.json",
            "WebhookFunction": "webhooks.json"}
# Loads functions/<name>/app.py as Lambda does (the module `app`) and invokes it once.
INVOKE = """
import importlib.util, json, sys, time, uuid
class Context:
    def __init__(self, name, memory, timeout):
        self.function_name, self.memory_limit_in_mb = name, int(memory)
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.aws_request_id, self._deadline = str(uuid.uuid4()), time.monotonic() + float(timeout)
    def get_remaining_time_in_millis(self):
        return int((self._deadline - time.monotonic()) * 1000)
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
result = app.lambda_handler(json.load(open(sys.argv[2])), Context(*sys.argv[3:6]))
print("RESULT", json.dumps(result if not isinstance(result, dict) else {k: result[k] for k in result if k != "body"}))
"""


class Receiver(BaseHTTPRequestHandler):
    """The SaaS's webhook endpoint: takes every delivery."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def deployed():
    """The template's resources in a moto server, as `sam deploy` leaves them."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    moto = MotoServer(port=0).start()
    try:
        session = session_for(moto.url, REGION)
        stack = Stack(region=REGION, parameters={
            "WebhookUrl": f"http://127.0.0.1:{receiver.server_address[1]}/hooks"}).provision(session)
        enable_webhooks(stack, session, "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u")
        yield stack, moto.url
    finally:
        moto.stop()
        receiver.shutdown()


def lambda_environment(stack: Stack, logical: str, endpoint: str) -> dict[str, str]:
    """The template's variables for the function and what the Lambda runtime sets beside them."""
    name = f"{stack.name}-{logical}"
    return {**stack.function_environment(logical),
            "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "layers" / "common"), "LANG": "C.UTF-8",
            "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
            # Local only: the emulated AWS, and a receiver on this machine for the webhook.
            "AWS_ENDPOINT_URL": endpoint, "ALLOW_LOOPBACK_WEBHOOK": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true"}


def emf_lines(stdout: str) -> list[dict]:
    lines = []
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "_aws" in record:
            lines.append(record)
    return lines


@pytest.mark.parametrize("logical", sorted(EVENT_OF))
def test_a_function_started_with_only_the_templates_environment_records_its_metrics(deployed, logical):
    stack, endpoint = deployed
    properties = stack.resources[logical]["Properties"]
    globals_ = stack.template["Globals"]["Function"]
    name = f"{stack.name}-{logical}"

    ran = subprocess.run(
        [sys.executable, "-c", INVOKE, str(ROOT / properties["CodeUri"] / "app.py"),
         str(ROOT / "events" / EVENT_OF[logical]), name,
         str(properties.get("MemorySize", globals_.get("MemorySize", 128))),
         str(properties.get("Timeout", globals_.get("Timeout", 3)))],
        cwd=ROOT, env=lambda_environment(stack, logical, endpoint), capture_output=True, text=True, timeout=120)

    assert ran.returncode == 0, ran.stderr
    assert "RESULT" in ran.stdout
    metrics = emf_lines(ran.stdout)
    assert metrics, ran.stdout
    for record in metrics:
        assert [m["Namespace"] for m in record["_aws"]["CloudWatchMetrics"]] == ["InsightlyConnect"]
        assert record["service"] == "insightly-connect"
    assert "service_undefined" not in ran.stdout + ran.stderr
    logged = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith('{"level"')]
    assert all(entry["service"] == "insightly-connect" for entry in logged)
