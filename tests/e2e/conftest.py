"""End-to-end: the whole local stack (moto server, stand-in, gateway, demo app) on free
loopback ports, driven over real HTTP and from a real browser."""

import shutil

import pytest
import requests
from playwright.sync_api import sync_playwright

from local import start_local_stack
from tests.support.openapi import Contract
from tests.support.signed import SignedCaller

ARTIFACTS = __import__("pathlib").Path(__file__).resolve().parents[2] / ".e2e-artifacts"
# Debian's Chromium (Playwright's own browser download is not used).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def local():
    # The scheduler thread stays off: tests trigger runs themselves, so they are not flaky.
    stack = start_local_stack(schedule=False)
    # Every answer the gateway gives (to the tests, the demo app and the browser) is checked
    # against docs/openapi.yaml; `contract` fails the test during which one did not conform.
    contract, stack.contract_problems = Contract(), []
    stack.gateway.observer = lambda *answer: stack.contract_problems.extend(contract.problems(*answer))
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def contract(request):
    """Fails a test that received an answer docs/openapi.yaml does not allow."""
    if "local" not in request.fixturenames:
        yield
        return
    problems = request.getfixturevalue("local").contract_problems
    problems.clear()
    yield
    assert problems == [], "answers that do not conform to docs/openapi.yaml"


@pytest.fixture
def standin(local):
    """The stand-in's control endpoints, reset after each test (tokens kept)."""
    def control(method: str, path: str, body: dict | None = None) -> dict:
        answer = requests.request(method, f"{local.standin_url}/_control/{path}", json=body, timeout=5)
        answer.raise_for_status()
        return answer.json() if answer.content else {}

    yield control
    control("POST", "reset")


@pytest.fixture
def backend(local):
    """The SaaS backend's signed calls with the local credentials, answered raw (statuses and
    headers are what these tests check)."""
    return SignedCaller(local.gateway_url, local.region, local.access_key, local.secret_key)


@pytest.fixture(scope="module")
def saas_events(local):
    """The lifecycle events as a SaaS receives them: a rule on the bus feeding a queue."""
    import json

    sqs, events = local.session.client("sqs"), local.session.client("events")
    queue_url = sqs.create_queue(QueueName="saas-lifecycle-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bus = local.env["EVENT_BUS_NAME"]
    events.put_rule(Name="saas", EventBusName=bus, EventPattern=json.dumps({"source": ["insightly-connect"]}))
    events.put_targets(Rule="saas", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])

    def drain(connection_id: str) -> list[str]:
        """The detail-types received so far for one connection."""
        found = []
        while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                event = json.loads(message["Body"])
                if event["detail"]["connection_id"] == connection_id:
                    found.append(event["detail-type"])
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
        return found

    return drain
