"""No AWS call outlives the invocation: every client (ours and the Secrets Manager client
Powertools uses) has short timeouts, a small retry budget, and starts no attempt that the
time left could not hold. Proved against an endpoint that accepts and never answers."""

import contextvars
import socket
import threading
import time

import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import BotoCoreError

from broker.credentials.client_credentials import ClientCredentialSource
from broker.platform import aws, deadline
from local.lambda_events import LambdaContext, function_setting
from local.stack import Stack


@pytest.fixture
def silent_endpoint(monkeypatch):
    """An AWS endpoint on loopback that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    aws.reset()
    parameters.clear_caches()
    yield accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()
    aws.reset()
    parameters.clear_caches()


def within(seconds: float, call):
    """Run call() in this context with `seconds` of invocation left; return (error, elapsed).
    A call still running after twice the deadline counts as outliving it."""
    context = contextvars.copy_context()
    context.run(deadline.start, LambdaContext(timeout_seconds=seconds))
    outcome = {}

    def run():
        started = time.monotonic()
        try:
            context.run(call)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(2 * seconds)
    assert not thread.is_alive(), f"the AWS call was still running {2 * seconds} s into a {seconds} s invocation"
    return outcome.get("error"), outcome["elapsed"]


@pytest.mark.parametrize("service,call", [
    ("dynamodb", lambda c: c.get_item(TableName="connections", Key={"connection_id": {"S": "user-1"}})),
    ("kms", lambda c: c.decrypt(CiphertextBlob=b"x" * 32)),
])
def test_a_boto3_call_to_an_endpoint_that_never_answers_ends_within_the_deadline(silent_endpoint, service, call):
    error, elapsed = within(4, lambda: call(aws.client(service)))

    assert isinstance(error, BotoCoreError)
    assert elapsed < 4
    assert silent_endpoint  # it did try


def test_the_client_secret_fetch_ends_within_the_deadline(silent_endpoint):
    source = ClientCredentialSource("arn:aws:secretsmanager:us-east-1:123456789012:secret:client")

    error, elapsed = within(4, source.get)

    assert error is not None and elapsed < 4
    assert silent_endpoint


def test_no_attempt_starts_without_the_time_to_finish_it(silent_endpoint):
    sqs = aws.client("sqs")  # made first: making a client takes a loaded machine longer than 0.5 s
    error, elapsed = within(aws.ATTEMPT_SECONDS - 0.5, sqs.list_queues)

    assert isinstance(error, aws.DeadlineExceeded)
    assert elapsed < 0.5 and not silent_endpoint  # refused before any connection


def test_one_aws_call_with_its_retries_fits_every_function_timeout():
    stack = Stack()
    timeouts = {logical: float(function_setting(stack, logical, "Timeout", 3))
                for logical in stack.of_type("AWS::Serverless::Function")}
    for name in ("dynamodb", "kms", "secretsmanager", "sqs", "events"):
        config = aws.client(name, ).meta.config
        attempts = config.retries["total_max_attempts"]
        worst = attempts * (config.connect_timeout + config.read_timeout) + aws.MAX_BACKOFF_SECONDS * (attempts - 1)
        assert worst <= min(timeouts.values()) / 2, (name, worst, timeouts)
