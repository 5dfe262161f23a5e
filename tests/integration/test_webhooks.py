"""Signed webhooks end to end under moto: an event on the lifecycle bus -> the stack's rule ->
the webhook queue -> the delivery handler -> a POST to a receiver behind `responses`, verified
with the standardwebhooks library as a SaaS would. Also the ConnectFailed event."""

import base64
import json

import boto3
import pytest
import responses
from moto import mock_aws
from standardwebhooks import Webhook

from broker.platform.lifecycle import LifecycleEvents
from local.lambda_events import lambda_context, load_handler
from local.stack import Stack, aws_session
from tests.conftest import TEST_PARAMETERS, function_environment
from tests.integration.test_api_keys import key_session

RECEIVER = "https://hooks.saas.example/insightly"
PUBLIC, PRIVATE = ["93.184.215.14"], ["10.0.0.7"]


def test_consent_denied_emits_connect_failed_with_the_code(broker, lifecycle_events):
    lifecycle_events()
    broker.connect("user-1", approve=False)

    events = lifecycle_events()
    assert [e["detail-type"] for e in events] == ["ConnectFailed"]
    assert events[0]["detail"]["connection_id"] == "user-1" and events[0]["detail"]["reason"] == "access_denied"


def test_a_key_page_ending_in_an_error_emits_connect_failed(broker, provider, lifecycle_events):
    account = provider.issue_api_key("eu1")
    page = broker.open_key_page(key_session(broker).json["connect_url"])
    lifecycle_events()
    for _ in range(5):
        page = broker.submit_key(page, "still-the-wrong-key", account["api_url"])

    events = lifecycle_events()
    assert [(e["detail-type"], e["detail"]["reason"]) for e in events] == [("ConnectFailed", "too_many_attempts")]


# -- delivery ------------------------------------------------------------------------------------

@pytest.fixture
def hook_stack(monkeypatch):
    """The stack with WebhookUrl set: its secret, rule, queues in moto; the delivery
    function's environment set."""
    with mock_aws():
        session = aws_session()
        built = Stack(parameters={**TEST_PARAMETERS, "WebhookUrl": RECEIVER}).provision(session)
        events = session.client("events")
        rule = built.resolve(built.resources["WebhookRule"]["Properties"])
        events.put_rule(Name="webhooks", EventBusName=rule["EventBusName"],
                        EventPattern=json.dumps(rule["EventPattern"]))
        events.put_targets(Rule="webhooks", EventBusName=rule["EventBusName"],
                           Targets=[{"Id": t["Id"], "Arn": t["Arn"]} for t in rule["Targets"]])
        with function_environment(monkeypatch, built, "WebhookFunction"):
            yield built


@pytest.fixture
def resolves_to(monkeypatch):
    """Where the receiver's host resolves (no DNS in tests)."""
    from broker.background import webhooks

    def set_to(addresses):
        monkeypatch.setattr(webhooks, "resolve", lambda host, port: list(addresses))
    set_to(PUBLIC)
    return set_to


class Receiver:
    def __init__(self, mock: responses.RequestsMock):
        self.mock = mock

    def answers(self, *statuses):
        for status in statuses:
            self.mock.add(responses.POST, RECEIVER, status=status)

    @property
    def requests(self):
        return [c.request for c in self.mock.calls]


@pytest.fixture
def receiver():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield Receiver(mock)


def emit_connected(stack):
    LifecycleEvents(boto3.client("events"), stack.refs["LifecycleBus"]).emit(
        "Connected", connection_id="user-1", status="active", reason=None, at=1_700_000_000, tags={"plan": "pro"})


def deliver(stack, *, wait=0):
    """One poll of the webhook queue, as the SQS event source would, and the handler's answer."""
    sqs = boto3.client("sqs")
    got = sqs.receive_message(QueueUrl=stack.refs["WebhookQueue"], MaxNumberOfMessages=5, WaitTimeSeconds=wait,
                              AttributeNames=["All"])
    records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                "attributes": m["Attributes"], "eventSource": "aws:sqs"} for m in got.get("Messages", [])]
    if not records:
        return records, None
    answer = load_handler("functions/webhooks").lambda_handler({"Records": records},
                                                               lambda_context(stack, "WebhookFunction"))
    failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
    for r in records:  # what the event source does: delete what succeeded
        if r["messageId"] not in failed:
            sqs.delete_message(QueueUrl=stack.refs["WebhookQueue"], ReceiptHandle=r["receiptHandle"])
    return records, answer


def signing_secret(stack) -> str:
    secret = boto3.client("secretsmanager").get_secret_value(SecretId=stack.refs["WebhookSecret"])
    value = json.loads(secret["SecretString"])
    return "whsec_" + value["current"]


def test_an_event_on_the_bus_reaches_the_receiver_signed_and_verifiable(hook_stack, receiver, resolves_to):
    receiver.answers(204)
    emit_connected(hook_stack)

    records, answer = deliver(hook_stack)

    assert len(records) == 1 and answer == {"batchItemFailures": []}
    sent = receiver.requests[0]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    payload = Webhook(signing_secret(hook_stack)).verify(sent.body, headers)  # raises if the signature is wrong
    event = json.loads(records[0]["body"])
    assert headers["webhook-id"] == event["id"]
    assert payload["type"] == "Connected" and payload["id"] == event["id"]
    assert payload["connection_id"] == "user-1" and payload["tags"] == {"plan": "pro"}
    assert deliver(hook_stack)[0] == []  # done: nothing left on the queue


def test_a_500_is_retried_later_with_the_same_id_and_a_400_is_not(hook_stack, receiver, resolves_to):
    receiver.answers(500)
    emit_connected(hook_stack)
    first, answer = deliver(hook_stack)
    assert len(answer["batchItemFailures"]) == 1
    assert deliver(hook_stack)[0] == []  # pushed out by the backoff, not back at once

    sqs = boto3.client("sqs")  # time passes: make the message visible again
    attrs = sqs.get_queue_attributes(QueueUrl=hook_stack.refs["WebhookQueue"],
                                     AttributeNames=["ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "1"
    receiver.mock.replace(responses.POST, RECEIVER, status=400)
    _force_visible(hook_stack)
    second, answer = deliver(hook_stack)

    assert answer == {"batchItemFailures": []}  # a 400 ends it: not retried
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == 2 and ids[0] == ids[1] == json.loads(first[0]["body"])["id"]
    _force_visible(hook_stack)
    assert deliver(hook_stack)[0] == []


def _force_visible(stack):
    """Time passing in moto: the in-flight messages become visible again."""
    from moto.sqs.models import sqs_backends
    name = stack.resolve({"Fn::GetAtt": ["WebhookQueue", "QueueName"]})
    queue = sqs_backends["123456789012"]["us-east-1"].queues[name]
    for message in queue._messages:
        message.change_visibility(0)


def test_a_receiver_resolving_to_a_private_address_gets_nothing(hook_stack, receiver, resolves_to, captured_logs):
    resolves_to(PRIVATE)
    receiver.answers(200)
    emit_connected(hook_stack)

    records, answer = deliver(hook_stack)

    assert len(records) == 1 and answer == {"batchItemFailures": []}
    assert receiver.requests == []
    assert "webhook target refused" in captured_logs.getvalue()


def test_the_signing_secret_is_in_no_log_and_no_request(hook_stack, receiver, resolves_to, captured_logs):
    receiver.answers(500)
    emit_connected(hook_stack)
    deliver(hook_stack)

    key = signing_secret(hook_stack)[len("whsec_"):]
    assert key not in captured_logs.getvalue()
    sent = receiver.requests[0]
    assert key not in sent.body.decode() and key not in json.dumps(dict(sent.headers))
    assert base64.b64decode(key) not in sent.body

