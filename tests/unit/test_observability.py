"""Logger and Metrics take the function's environment whatever was imported first, and a metrics
flush that fails does not fail the container's later invocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from aws_lambda_powertools.metrics.exceptions import SchemaValidationError

from broker.platform import observability
from local.stack import ROOT

# What `make local` did: import the broker (to check its webhook secret) before the functions'
# environment is set, then run a function in that environment.
IMPORT_FIRST_THEN_CONFIGURE = """
import json, os
import broker.background.webhooks  # noqa: F401 - loads broker.platform.observability before the environment is set
os.environ.update(POWERTOOLS_SERVICE_NAME="insightly-connect", POWERTOOLS_METRICS_NAMESPACE="InsightlyConnect")
from broker.platform.observability import count, logger, metrics
count("Something")
metrics.flush_metrics()
logger.info("hello")
"""


def test_an_import_before_the_environment_is_set_does_not_fix_the_service_or_namespace():
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "layers" / "common"), "LANG": "C.UTF-8"}
    ran = subprocess.run([sys.executable, "-c", IMPORT_FIRST_THEN_CONFIGURE], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)

    assert ran.returncode == 0, ran.stderr
    metric, log = (json.loads(line) for line in ran.stdout.splitlines())
    assert metric["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "InsightlyConnect"
    assert metric["service"] == "insightly-connect" and metric["Something"] == [1.0]
    assert log["service"] == "insightly-connect" and log["message"] == "hello"


@pytest.fixture
def no_namespace(monkeypatch):
    """A function whose namespace is missing (the misconfiguration that poisoned make local)."""
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE", raising=False)
    observability.reset()
    yield
    observability.metrics.clear_metrics()
    observability.reset()


def invocations():
    metrics = observability.metrics

    @metrics.log_metrics
    def records(event, context):
        observability.count("Something")
        return "recorded"

    @metrics.log_metrics
    def records_then_raises(event, context):
        observability.count("Something")
        raise ValueError("the handler's own failure")

    @metrics.log_metrics
    def records_nothing(event, context):
        return "fine"

    return records, records_then_raises, records_nothing


def test_a_failed_metrics_flush_does_not_fail_the_next_invocation(no_namespace):
    records, _, records_nothing = invocations()
    with pytest.raises(SchemaValidationError):
        records({}, None)

    assert records_nothing({}, None) == "fine"  # before: the unwritten metric failed this one too


def test_a_failed_flush_after_an_exception_escaped_the_handler_leaves_the_container_clean(no_namespace):
    _, records_then_raises, records_nothing = invocations()
    with pytest.raises(SchemaValidationError):  # the flush in Powertools' `finally` fails in turn
        records_then_raises({}, None)

    assert records_nothing({}, None) == "fine"


def test_metrics_of_an_invocation_that_raised_are_written_once(monkeypatch, capsys):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "InsightlyConnect")
    observability.reset()
    _, records_then_raises, records_nothing = invocations()
    try:
        with pytest.raises(ValueError):
            records_then_raises({}, None)
        records_nothing({}, None)
    finally:
        observability.reset()

    written = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert [record["Something"] for record in written] == [[1.0]]


def test_a_handler_decorated_before_the_environment_was_set_writes_its_metrics(monkeypatch, capsys):
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE", raising=False)
    monkeypatch.delenv("POWERTOOLS_SERVICE_NAME", raising=False)
    observability.reset()
    records, _, _ = invocations()  # decorated (the provider made) with neither variable set
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "InsightlyConnect")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "insightly-connect")
    try:
        assert records({}, None) == "recorded"
    finally:
        observability.reset()

    (written,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert written["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "InsightlyConnect"
    assert written["service"] == "insightly-connect" and written["Something"] == [1.0]
