"""One scheduled run at a time (issue 11, point 4): the run's timeout (300 s) equals the
5-minute schedule, and Lambda retries a failed run, so two could otherwise overlap."""

import threading
import time

from broker.store.connections import ConnectionStore
from local.lambda_events import LambdaContext, load_handler
from tests.integration.test_scheduler import SCHEDULE_EVENT, queued_messages
from tests.integration.test_tokens import make_due


def run_scheduler(request_id: str, *, container: int = 0):
    """One invocation of the scheduler in a given container (a separately imported handler)."""
    handler = load_handler("functions/scheduler/", copy=container).lambda_handler
    return handler(SCHEDULE_EVENT, LambdaContext(timeout_seconds=300, aws_request_id=request_id))


def test_a_second_run_while_one_is_running_does_nothing(broker, dynamodb, stack, monkeypatch):
    broker.connect("due-1")
    make_due(dynamodb, stack, "due-1")
    reading, finish = threading.Event(), threading.Event()
    due_ids = ConnectionStore.due_connection_ids

    def slow_first_read(self, shard, **query):
        if shard == 0 and not reading.is_set():
            reading.set()
            assert finish.wait(10)
        return due_ids(self, shard, **query)

    monkeypatch.setattr(ConnectionStore, "due_connection_ids", slow_first_read)
    answers = {}
    first = threading.Thread(target=lambda: answers.update(first=run_scheduler("run-1")))
    first.start()
    assert reading.wait(10)

    # A second run (the next schedule tick, or a retry, in another container) while the first reads
    second = run_scheduler("run-2", container=1)

    finish.set()
    first.join(10)
    assert second == {"skipped": "another scheduled run is in progress"}
    assert answers["first"] == {"enqueued": 1, "not_enqueued": 0}
    assert len(queued_messages(stack)) == 1  # enqueued once, by the first run only

    # The first run let go when it finished: the next one runs.
    make_due(dynamodb, stack, "due-1")
    assert run_scheduler("run-3", container=1) == {"enqueued": 1, "not_enqueued": 0}


def test_a_run_that_died_holding_the_lease_blocks_the_next_only_until_its_timeout(broker, dynamodb, stack):
    broker.connect("due-1")
    make_due(dynamodb, stack, "due-1")
    flows = stack.refs["FlowTable"]
    now = int(time.time())
    # A run killed at its timeout leaves its lease; the lease ends when the run would have.
    dynamodb.put_item(TableName=flows, Item={"flow_key": {"S": "scheduler-run"}, "run_id": {"S": "dead"},
                                             "expires_at": {"N": str(now + 60)}})
    assert run_scheduler("run-1") == {"skipped": "another scheduled run is in progress"}

    dynamodb.update_item(TableName=flows, Key={"flow_key": {"S": "scheduler-run"}},
                         UpdateExpression="SET expires_at = :past",
                         ExpressionAttributeValues={":past": {"N": str(now - 1)}})
    assert run_scheduler("run-2") == {"enqueued": 1, "not_enqueued": 0}
    assert "Item" not in dynamodb.get_item(TableName=flows, Key={"flow_key": {"S": "scheduler-run"}})


def test_lambdas_retry_of_a_failed_run_takes_over_its_own_lease(broker, dynamodb, stack):
    broker.connect("due-1")
    make_due(dynamodb, stack, "due-1")
    now = int(time.time())
    # Lambda retries an asynchronous invocation with the same request id.
    dynamodb.put_item(TableName=stack.refs["FlowTable"], Item={
        "flow_key": {"S": "scheduler-run"}, "run_id": {"S": "run-1"}, "expires_at": {"N": str(now + 300)}})

    assert run_scheduler("run-1") == {"enqueued": 1, "not_enqueued": 0}


def test_a_lease_that_cannot_be_released_does_not_fail_a_run_that_worked(broker, dynamodb, stack, monkeypatch):
    from botocore.exceptions import ClientError

    from broker.connect.flowstore import FlowStore

    broker.connect("due-1")
    make_due(dynamodb, stack, "due-1")

    def throttled(self, run_id):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "DeleteItem")

    monkeypatch.setattr(FlowStore, "release_scheduled_run", throttled)

    assert run_scheduler("run-1") == {"enqueued": 1, "not_enqueued": 0}  # not an invocation error
    # Left behind, the lease lapses at the run's own timeout (no later than 300 s from now).
    lease = dynamodb.get_item(TableName=stack.refs["FlowTable"], Key={"flow_key": {"S": "scheduler-run"}})["Item"]
    assert lease["run_id"]["S"] == "run-1" and int(lease["expires_at"]["N"]) <= int(time.time()) + 300
