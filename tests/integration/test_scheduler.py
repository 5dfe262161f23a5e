"""The background path: the scheduler enqueues what the sparse index says is due; workers
refresh it; faults are classified, cooled down, and told to the SaaS as lifecycle events."""

import json
import time
from collections import Counter

import boto3

from broker import services
from broker.platform import aws
from local.lambda_events import LambdaContext, load_handler
from tests.integration.test_connect_flow import connection_item
from tests.integration.test_tokens import make_due

SCHEDULE_EVENT = {"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
                  "account": "123456789012", "time": "2026-11-27T12:00:00Z", "region": "us-east-1",
                  "resources": [], "detail": {}}


def run_scheduler():
    return load_handler("functions/scheduler/").lambda_handler(SCHEDULE_EVENT, LambdaContext(timeout_seconds=300))


def queued_messages(stack) -> list[dict]:
    sqs = boto3.client("sqs")
    messages = []
    while batch := sqs.receive_message(QueueUrl=stack.refs["RefreshQueue"], MaxNumberOfMessages=10,
                                       VisibilityTimeout=0).get("Messages", []):
        messages += batch
        sqs.delete_message_batch(QueueUrl=stack.refs["RefreshQueue"], Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
    return messages


def run_worker(*bodies: str, timeout_seconds: float = 30) -> dict:
    records = [{"messageId": f"m-{i}", "receiptHandle": f"r-{i}", "body": body, "attributes": {},
                "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1"}
               for i, body in enumerate(bodies)]
    return load_handler("functions/worker/").lambda_handler({"Records": records},
                                                            LambdaContext(timeout_seconds=timeout_seconds))


def refresh_in_background(stack) -> dict:
    """One scheduled run and the worker invocations its messages cause."""
    run_scheduler()
    bodies = [m["Body"] for m in queued_messages(stack)]
    return run_worker(*bodies) if bodies else {"batchItemFailures": []}


def count_calls(service: str) -> Counter:
    calls = Counter()
    aws.client(service).meta.events.register("before-call", lambda model, **kw: calls.update([model.name]))
    return calls


def test_the_scheduler_enqueues_only_due_connections_and_reads_no_item(broker, dynamodb, stack):
    for connection_id in ("due-1", "due-2", "fresh-1", "fresh-2"):
        broker.connect(connection_id)
    make_due(dynamodb, stack, "due-1")
    make_due(dynamodb, stack, "due-2")
    calls = count_calls("dynamodb")

    assert run_scheduler() == {"enqueued": 2, "not_enqueued": 0}

    # one page per shard, and one on the flow table's pending-index (expired completions: none)
    assert calls["Scan"] == 0 and calls["GetItem"] == 0 and calls["Query"] == 8 + 1
    assert sorted(json.loads(m["Body"])["connection_id"] for m in queued_messages(stack)) == ["due-1", "due-2"]
    assert broker.provider.calls["refresh_token"] == 0  # the scheduler itself refreshes nothing


def test_workers_refresh_what_was_enqueued_and_nothing_else(broker, dynamodb, stack):
    for connection_id in ("due-1", "fresh-1"):
        broker.connect(connection_id)
    make_due(dynamodb, stack, "due-1")

    assert refresh_in_background(stack) == {"batchItemFailures": []}

    assert broker.provider.calls["refresh_token"] == 1
    assert connection_item(dynamodb, stack, "due-1")["version"]["N"] == "2"
    assert connection_item(dynamodb, stack, "fresh-1")["version"]["N"] == "1"
    assert run_scheduler() == {"enqueued": 0, "not_enqueued": 0}  # refreshed: no longer due


def test_a_batch_the_queue_refused_stays_due_and_the_next_run_enqueues_it(broker, dynamodb, stack):
    from botocore.exceptions import ClientError

    ids = [f"due-{n:02d}" for n in range(12)]
    for connection_id in ids:
        broker.connect(connection_id)
        make_due(dynamodb, stack, connection_id)
    refused: list[str] = []

    def refuse_the_first_batch(params, **_):
        if not refused:
            refused.extend(json.loads(e["MessageBody"])["connection_id"] for e in params["Entries"])
            raise ClientError({"Error": {"Code": "KmsThrottled", "Message": "slow down"}}, "SendMessageBatch")

    aws.client("sqs").meta.events.register("before-parameter-build.sqs.SendMessageBatch", refuse_the_first_batch)

    assert run_scheduler() == {"enqueued": 12 - len(refused), "not_enqueued": len(refused)}  # the run went on
    first = [json.loads(m["Body"])["connection_id"] for m in queued_messages(stack)]
    assert refused and sorted(first) == sorted(set(ids) - set(refused))
    assert run_worker(*(json.dumps({"connection_id": cid}) for cid in first)) == {"batchItemFailures": []}

    # Still due: the next run enqueues exactly the refused batch, and it is refreshed.
    assert run_scheduler() == {"enqueued": len(refused), "not_enqueued": 0}
    second = [json.loads(m["Body"])["connection_id"] for m in queued_messages(stack)]
    assert sorted(second) == sorted(refused)
    assert run_worker(*(json.dumps({"connection_id": cid}) for cid in second)) == {"batchItemFailures": []}
    assert all(connection_item(dynamodb, stack, cid)["version"]["N"] == "2" for cid in ids)
    assert broker.provider.calls["refresh_token"] == 12


def test_duplicate_and_late_messages_are_harmless(broker, dynamodb, stack):
    broker.connect("user-1")
    make_due(dynamodb, stack)
    message = json.dumps({"connection_id": "user-1"})

    assert run_worker(message, message) == {"batchItemFailures": []}
    assert run_worker(message) == {"batchItemFailures": []}  # late: already refreshed

    assert broker.provider.calls["refresh_token"] == 1


def test_a_malformed_message_is_dropped_not_retried(broker):
    assert run_worker("not json", json.dumps({"connection_id": "bad id"}), "[]") == {"batchItemFailures": []}
    assert broker.provider.calls["token"] == 0


def test_a_fault_of_the_brokers_own_store_returns_the_message_to_the_queue(broker, dynamodb, stack, monkeypatch):
    from botocore.exceptions import ClientError

    broker.connect("user-1")
    make_due(dynamodb, stack)

    def unavailable(*args, **kwargs):
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "GetItem")

    monkeypatch.setattr(services.token_service().connections, "get", unavailable)

    assert run_worker(json.dumps({"connection_id": "user-1"})) == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}


def test_invalid_grant_in_the_background_marks_needs_reauth_once_and_tells_the_saas(
        broker, dynamodb, stack, lifecycle_events):
    broker.connect("user-1")
    make_due(dynamodb, stack)
    broker.provider.fail_next("invalid_grant")
    lifecycle_events()  # drop the Connected event

    refresh_in_background(stack)

    assert connection_item(dynamodb, stack)["status"]["S"] == "needs_reauth"
    [event] = lifecycle_events()
    assert event["detail-type"] == "NeedsReauth" and event["source"] == "insightly-connect"
    assert event["detail"]["connection_id"] == "user-1" and event["detail"]["reason"] == "invalid_grant"
    assert run_scheduler() == {"enqueued": 0, "not_enqueued": 0}  # out of the index: never tried again
    assert broker.provider.calls["refresh_token"] == 1 and lifecycle_events() == []


def test_a_transient_fault_cools_the_connection_down_and_recovery_is_told(
        broker, dynamodb, stack, lifecycle_events, monkeypatch):
    monkeypatch.setattr(services.token_service(), "sleep", lambda seconds: None)
    broker.connect("user-1")
    make_due(dynamodb, stack)
    broker.provider.fail_next("500", times=3)
    lifecycle_events()

    refresh_in_background(stack)

    item = connection_item(dynamodb, stack)
    assert item["status"]["S"] == "active" and item["failure_count"]["N"] == "1"
    assert int(item["refresh_due_at"]["N"]) >= time.time() + 45  # cooling down, not retried every run
    assert run_scheduler() == {"enqueued": 0, "not_enqueued": 0}
    assert [e["detail-type"] for e in lifecycle_events()] == ["RefreshFailed"]

    make_due(dynamodb, stack)  # the cooldown is over
    refresh_in_background(stack)

    assert "failure_count" not in connection_item(dynamodb, stack)
    assert [e["detail-type"] for e in lifecycle_events()] == ["Recovered"]
    assert broker.provider.calls["refresh_token"] == 4


def test_a_connection_failing_for_days_is_marked_needs_reauth(broker, dynamodb, stack, lifecycle_events, monkeypatch):
    monkeypatch.setattr(services.token_service(), "sleep", lambda seconds: None)
    broker.connect("user-1")
    make_due(dynamodb, stack)
    four_days_ago = str(int(time.time()) - 4 * 86400)
    dynamodb.update_item(TableName=stack.refs["ConnectionsTable"], Key={"connection_id": {"S": "user-1"}},
                         UpdateExpression="SET failure_count = :n, first_failed_at = :t",
                         ExpressionAttributeValues={":n": {"N": "40"}, ":t": {"N": four_days_ago}})
    broker.provider.fail_next("500", times=3)
    lifecycle_events()

    refresh_in_background(stack)

    assert connection_item(dynamodb, stack)["status"]["S"] == "needs_reauth"
    [event] = lifecycle_events()
    assert event["detail-type"] == "NeedsReauth" and event["detail"]["reason"] == "refresh_failing"


def test_connect_and_delete_are_told_to_the_saas(broker, lifecycle_events):
    broker.connect("user-1")
    broker.call("DELETE", "/connections/user-1")

    events = lifecycle_events()
    assert [e["detail-type"] for e in events] == ["Connected", "Deleted"]
    assert all(set(e["detail"]) == {"connection_id", "status", "reason", "at", "tags", "quota_group"} for e in events)


def test_every_dynamodb_call_of_a_background_refresh_is_granted_by_the_workers_role(broker, dynamodb, stack):
    # moto does not enforce IAM: a call the role lacks would pass here and fail in AWS.
    from tests.support.iam import not_granted, recorded_calls

    broker.connect("user-1")
    make_due(dynamodb, stack)
    message = json.dumps({"connection_id": "user-1"})

    with recorded_calls(aws.client("dynamodb")) as calls:
        assert run_worker(message) == {"batchItemFailures": []}

    assert {"GetItem", "UpdateItem"} <= {operation for operation, _ in calls}  # read, lease, store
    assert not_granted(stack, "RefreshWorkerRole", calls) == []
