"""The local scheduler and the SQS event-source driver (local/schedule.py)."""

import json
import threading

import boto3
import pytest
from moto import mock_aws

from local.lambda_events import RecordingHandler
from local.schedule import Scheduler, parse_rate, sqs_event_sources
from local.stack import ROOT, Stack

WORKER_TEMPLATE = {
    "Globals": {"Function": {"Timeout": 10}},
    "Resources": {
        "WorkQueue": {"Type": "AWS::SQS::Queue", "Properties": {"VisibilityTimeout": 60}},
        "WorkerFunction": {"Type": "AWS::Serverless::Function", "Properties": {
            "CodeUri": "functions/worker/",
            "Events": {"Work": {"Type": "SQS", "Properties": {
                "Queue": {"Fn::GetAtt": ["WorkQueue", "Arn"]}, "BatchSize": 3,
                "FunctionResponseTypes": ["ReportBatchItemFailures"]}}}}},
    },
}
SQS_RECORD_KEYS = {"messageId", "receiptHandle", "body", "attributes", "messageAttributes", "md5OfBody",
                   "eventSource", "eventSourceARN", "awsRegion"}


@pytest.mark.parametrize(("expression", "seconds"), [
    ("rate(5 minutes)", 300), ("rate(1 minute)", 60), ("rate(30 seconds)", 30), ("rate(2 hours)", 7200),
    ("rate(1 day)", 86400)])
def test_rate_expressions(expression, seconds):
    assert parse_rate(expression) == seconds


@pytest.mark.parametrize("expression", ["cron(0 12 * * ? *)", "rate(0 minutes)", "rate(five minutes)", ""])
def test_other_expressions_are_refused(expression):
    with pytest.raises(ValueError):
        parse_rate(expression)


def test_the_scheduler_runs_on_the_templates_refresh_schedule(monkeypatch):
    monkeypatch.delenv("LOCAL_SCHEDULE_SECONDS", raising=False)
    scheduler = Scheduler(Stack(parameters={"RefreshSchedule": "rate(2 minutes)"}))
    assert (scheduler.function, scheduler.expression, scheduler.interval) == ("SchedulerFunction", "rate(2 minutes)",
                                                                              120)
    monkeypatch.setenv("LOCAL_SCHEDULE_SECONDS", "7")
    assert Scheduler(Stack()).interval == 7


def test_the_schedule_event_has_the_shape_of_events_scheduler_json():
    reference = json.loads((ROOT / "events" / "scheduler.json").read_text())
    event = Scheduler(Stack(), interval=1).event()
    assert set(event) == set(reference)
    assert {k: event[k] for k in ("detail-type", "source", "detail", "resources")} == \
        {k: reference[k] for k in ("detail-type", "source", "detail", "resources")}


def test_the_thread_invokes_the_handler_on_every_tick_and_stops_cleanly():
    calls, ticked = [], threading.Event()

    class Handler:
        @staticmethod
        def lambda_handler(event, context):
            calls.append((event, context.get_remaining_time_in_millis()))
            if len(calls) >= 2:
                ticked.set()
            return {"outcomes": {}}

    scheduler = Scheduler(Stack(), interval=0.01, load=lambda code_uri: Handler).start()
    assert ticked.wait(5)
    scheduler.stop()
    assert scheduler._thread is None and scheduler.runs >= 2
    assert calls[0][0]["detail-type"] == "Scheduled Event"
    assert 290_000 < calls[0][1] <= 300_000  # the function's own Timeout (300 s)


def test_a_failing_run_is_reported_and_the_next_one_still_happens():
    class Handler:
        @staticmethod
        def lambda_handler(event, context):
            raise RuntimeError("boom")

    scheduler = Scheduler(Stack(), interval=60, load=lambda code_uri: Handler)
    assert scheduler.run_once() is None and "boom" in scheduler.last_error
    assert scheduler.runs == 1


# -- SQS -------------------------------------------------------------------------------------

def test_the_refresh_worker_is_driven_from_its_queue():
    [source] = sqs_event_sources(Stack())
    assert source.function == "RefreshWorkerFunction"
    assert source.batch_size == 10 and source.report_failures


@pytest.fixture
def queue():
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        stack = Stack(template=json.loads(json.dumps(WORKER_TEMPLATE))).provision(session)
        yield stack, session.client("sqs")


def remaining(sqs, url) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def source_with(stack, sqs, worker):
    sources = sqs_event_sources(stack, sqs, load=lambda code_uri: worker, wait_seconds=0)
    assert len(sources) == 1
    return sources[0]


def test_batches_of_batch_size_and_only_the_failures_stay(queue):
    stack, sqs = queue
    url = stack.refs["WorkQueue"]
    for body in ("ok-1", "bad", "ok-2", "ok-3", "ok-4"):
        sqs.send_message(QueueUrl=url, MessageBody=body)

    def fail_bad(event):
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]}
                                      for r in event["Records"] if r["body"] == "bad"]}

    worker = RecordingHandler(answer=fail_bad)
    source = source_with(stack, sqs, worker)
    assert (source.batch_size, source.report_failures) == (3, True)
    assert source.poll_once() == 3
    assert source.poll_once() == 2
    assert source.poll_once() == 0

    assert [len(e["Records"]) for e in worker.events] == [3, 2]
    record = worker.events[0]["Records"][0]
    assert set(record) == SQS_RECORD_KEYS
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == stack.attrs[("WorkQueue", "Arn")]
    assert sorted(r["body"] for e in worker.events for r in e["Records"]) == ["bad", "ok-1", "ok-2", "ok-3", "ok-4"]
    assert remaining(sqs, url) == 1  # only "bad" is left (invisible until its visibility timeout)


def test_a_failing_handler_deletes_nothing(queue):
    stack, sqs = queue
    url = stack.refs["WorkQueue"]
    for body in ("a", "b"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    assert source_with(stack, sqs, RecordingHandler(fail=True)).poll_once() == 2
    assert remaining(sqs, url) == 2


def test_a_malformed_failure_list_fails_the_whole_batch(queue):
    stack, sqs = queue
    url = stack.refs["WorkQueue"]
    sqs.send_message(QueueUrl=url, MessageBody="a")
    malformed = {"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]}
    source_with(stack, sqs, RecordingHandler(answer=malformed)).poll_once()
    assert remaining(sqs, url) == 1


def test_without_report_batch_item_failures_the_response_is_ignored(queue):
    stack, sqs = queue
    url = stack.refs["WorkQueue"]
    sqs.send_message(QueueUrl=url, MessageBody="a")
    source = source_with(stack, sqs, RecordingHandler(answer={"batchItemFailures": [{"itemIdentifier": "x"}]}))
    source.report_failures = False
    source.poll_once()
    assert remaining(sqs, url) == 0


def test_the_polling_thread_starts_and_stops(queue):
    stack, sqs = queue
    worker = RecordingHandler()
    source = source_with(stack, sqs, worker).start()
    sqs.send_message(QueueUrl=stack.refs["WorkQueue"], MessageBody="a")
    for _ in range(200):
        if worker.events:
            break
        threading.Event().wait(0.01)
    source.stop()
    assert worker.events and source._thread is None
