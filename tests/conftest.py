"""Test configuration: fake AWS credentials, no network but loopback, moto for AWS, and a
fake Insightly behind `responses`. A test that tries to reach real AWS or the internet
fails loudly at the socket."""

import contextlib
import os
import socket

# Before anything imports boto3: no real credentials, no real config, a fixed region.
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    # Outside Lambda the X-Ray SDK has no daemon to send to. POWERTOOLS_SERVICE_NAME and
    # POWERTOOLS_METRICS_NAMESPACE are NOT set here: they come from the template, where a test
    # builds a function's environment (`function_environment`), as in Lambda.
    "POWERTOOLS_TRACE_DISABLED": "1",
})
for leaked in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(leaked, None)

import boto3  # noqa: E402
import pytest  # noqa: E402
import responses  # noqa: E402
from aws_lambda_powertools.utilities import parameters  # noqa: E402
from moto import mock_aws  # noqa: E402

from broker import services  # noqa: E402
from local import moto_atomic  # noqa: E402
from local.fake_insightly import FakeInsightly  # noqa: E402
from local.stack import Stack, aws_session  # noqa: E402
from tests.support.inprocess import InProcessBroker  # noqa: E402

moto_atomic.install()  # conditional writes are atomic in DynamoDB; make them so in moto

_real_connect = socket.socket.connect


def _loopback_only(sock, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
        raise RuntimeError(f"tests may not open network connections (tried {address!r})")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def no_deadline_left_over():
    """A handler called in the test's own thread sets the invocation's deadline (a context
    variable) and nothing ends it: tests that ran 29 s later found "no time left"."""
    from broker.platform import deadline

    token = deadline._deadline.set(float("inf"))
    yield
    deadline._deadline.reset(token)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


TEST_PARAMETERS = {
    "AllowedReturnOrigins": "https://app.example.com,http://localhost:8080",
    "ProviderRevocationUrl": "https://api.insightly.com/v3.1/oauth2/revoke",
}


@pytest.fixture
def provider():
    return FakeInsightly()


@pytest.fixture
def stack(monkeypatch, provider):
    """The template's tables, key and secret in moto, and the functions' environment set."""
    with mock_aws():
        session = aws_session()
        built = Stack(parameters=TEST_PARAMETERS).provision(session)
        # What a deployer does after `sam deploy`: put the real client credentials in.
        session.client("secretsmanager").put_secret_value(
            SecretId=built.refs["ClientSecret"],
            SecretString=f'{{"client_id": "{provider.client_id}", "client_secret": "{provider.client_secret}"}}')
        with function_environment(monkeypatch, built, "ConnectionsFunction"):
            yield built


@contextlib.contextmanager
def function_environment(monkeypatch, built: Stack, logical: str):
    """A function's template environment, with the broker's cached objects (services,
    Powertools' parameter cache) rebuilt on entry and on exit."""
    for key, value in built.function_environment(logical).items():
        monkeypatch.setenv(key, value)
    services.reset()
    parameters.clear_caches()
    try:
        yield built
    finally:
        services.reset()
        parameters.clear_caches()


@pytest.fixture
def http_provider(provider):
    """The fake provider at the HTTP layer; any other outbound HTTP request fails."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        provider.install(mock)
        yield provider


@pytest.fixture
def broker(stack, http_provider):
    return InProcessBroker(stack, http_provider)


@pytest.fixture
def dynamodb(stack):
    return boto3.client("dynamodb")


def all_items(dynamodb, stack):
    """Every item of every table of the stack (test inspection only; the broker never scans)."""
    items = []
    for logical in stack.of_type("AWS::DynamoDB::Table"):
        items += dynamodb.scan(TableName=stack.refs[logical])["Items"]
    return items


@pytest.fixture
def captured_logs():
    """Everything the broker logs, formatted exactly as Lambda would ship it (JSON lines)."""
    import io
    import logging

    from broker.platform.observability import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


@pytest.fixture
def lifecycle_events(stack):
    """What a SaaS would see on the lifecycle bus: a rule sends every event to a queue."""
    import json

    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue_url = sqs.create_queue(QueueName="saas-lifecycle-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = stack.refs["LifecycleBus"]
    events.put_rule(Name="all-lifecycle", EventBusName=bus, EventPattern=json.dumps({"source": ["insightly-connect"]}))
    events.put_targets(Rule="all-lifecycle", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])

    def drain() -> list[dict]:
        received = []
        while True:
            batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return received
            received += [json.loads(m["Body"]) for m in batch]
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])

    return drain
