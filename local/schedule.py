"""Local EventBridge schedules and SQS event-source mappings for the template's functions.

`Scheduler` runs a function on the rate of its `Schedule` event (for SchedulerFunction:
the template's RefreshSchedule parameter, e.g. `rate(5 minutes)`), with the event shape
of events/scheduler.json. LOCAL_SCHEDULE_SECONDS overrides the interval.

`SqsEventSource` does what Lambda's event-source mapping does for a function with an `SQS`
event: receive batches of up to BatchSize, invoke the handler with the SQS event shape,
and delete what succeeded (with ReportBatchItemFailures, everything but the
`batchItemFailures`; nothing when the handler raised).

Both invoke the handlers in this process with the process environment: start them after
the Gateway (which sets the functions' shared environment, see gateway.py), or set it
yourself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable

from local.lambda_events import function_setting, lambda_context, load_handler
from local.stack import ACCOUNT_ID, Stack

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(expression: str) -> float:
    """Seconds between runs for `rate(N unit)`; cron() schedules are not supported locally."""
    found = re.fullmatch(r"\s*rate\(\s*(\d+)\s+(second|minute|hour|day)s?\s*\)\s*", expression or "")
    if not found or int(found.group(1)) < 1:
        raise ValueError(f"not a rate() schedule expression: {expression!r} (set LOCAL_SCHEDULE_SECONDS)")
    return int(found.group(1)) * _UNITS[found.group(2)]


def _events_of(stack: Stack, type_: str) -> list[tuple[str, str, dict]]:
    found = []
    for logical, resource in stack.of_type("AWS::Serverless::Function").items():
        for name, event in (resource["Properties"].get("Events") or {}).items():
            if event.get("Type") == type_:
                found.append((logical, name, stack.resolve(event.get("Properties", {}))))
    return found


# -- schedules -------------------------------------------------------------------------------

def activity(stream, what: str, started: float) -> None:
    """One console line for a background invocation, in the gateway's access-line shape."""
    if stream is not None:
        took = (time.monotonic() - started) * 1000
        print(f"{time.strftime('%H:%M:%S')} {what} {took:.0f} ms", file=stream, flush=True)


def _summary(result) -> str:
    """A scheduled run's result in a few words ({"enqueued": 2, "not_enqueued": 0} -> enqueued=2 ...)."""
    if isinstance(result, dict):
        return " ".join(f"{key}={value}" for key, value in result.items() if not isinstance(value, (dict, list)))
    return ""


class Scheduler:
    """Invokes one function on its Schedule event's rate, in a thread, until stop()."""

    def __init__(self, stack: Stack, function: str = "SchedulerFunction", *, interval: float | None = None,
                 event_name: str | None = None, load: Callable = load_handler, log=True):
        schedules = [(name, props) for logical, name, props in _events_of(stack, "Schedule") if logical == function]
        if event_name is not None:
            schedules = [(n, p) for n, p in schedules if n == event_name]
        if not schedules:
            raise ValueError(f"{function} has no Schedule event in the template")
        self.stack, self.function = stack, function
        self.event_name, props = schedules[0]
        self.expression = props.get("Schedule", "")
        override = os.environ.get("LOCAL_SCHEDULE_SECONDS")
        self.interval = float(interval if interval is not None else override or parse_rate(self.expression))
        self.input = props.get("Input")  # a JSON string, when the template gives one
        self.enabled = str(props.get("Enabled", True)).lower() != "false"
        self._code_uri = stack.resources[function]["Properties"]["CodeUri"]
        self._load = load
        self._log = log
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_result = None
        self.last_error: str | None = None
        self.activity = None  # a stream for one line per run (`make local`'s console), or None

    def event(self) -> dict:
        """The event EventBridge sends for a scheduled rule (events/scheduler.json)."""
        if self.input:
            return json.loads(self.input)
        return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                "source": "aws.events", "account": ACCOUNT_ID,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": self.stack.region,
                "resources": [f"arn:aws:events:{self.stack.region}:{ACCOUNT_ID}:rule/"
                              f"{self.stack.name}-{self.event_name}"],
                "detail": {}}

    def run_once(self):
        """One scheduled invocation now (also what the thread does on every tick)."""
        with self._lock:
            started = time.monotonic()
            try:
                handler = self._load(self._code_uri)
                result = handler.lambda_handler(self.event(), lambda_context(self.stack, self.function))
                activity(self.activity, f"schedule {self.function} {_summary(result)}", started)
            except Exception:
                self.last_error = traceback.format_exc()
                print(f"[scheduler] {self.function} failed:\n{self.last_error}", file=sys.stderr)
                result = None
            else:
                self.last_error = None
            self.runs += 1
            self.last_result = result
            return result

    def start(self) -> Scheduler:
        if self._thread is None and self.enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"schedule-{self.function}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        # Like EventBridge: the first run comes one interval after the rule exists.
        while not self._stop.wait(self.interval):
            self.run_once()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            # A run in progress finishes (it is bounded by the function's timeout).
            self._thread.join(timeout if timeout is not None else
                              float(function_setting(self.stack, self.function, "Timeout", 3)) + 5)
            self._thread = None


def schedulers(stack: Stack, **kwargs) -> list[Scheduler]:
    """One Scheduler per function with a Schedule event."""
    return [Scheduler(stack, logical, event_name=name, **kwargs) for logical, name, _ in _events_of(stack, "Schedule")]


# -- SQS event sources -----------------------------------------------------------------------

class SqsEventSource:
    """Lambda's SQS event-source mapping for one function event."""

    def __init__(self, stack: Stack, function: str, event_name: str, props: dict, sqs,
                 load: Callable = load_handler, wait_seconds: int = 1):
        self.stack, self.function, self.event_name = stack, function, event_name
        self.queue_arn = props["Queue"]
        self.batch_size = int(props.get("BatchSize", 10))
        self.enabled = str(props.get("Enabled", True)).lower() != "false"
        self.report_failures = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
        self.sqs = sqs
        self.wait_seconds = wait_seconds
        self._code_uri = stack.resources[function]["Properties"]["CodeUri"]
        self._load = load
        self._queue_url: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.invocations = 0
        self.activity = None  # a stream for one line per invocation (`make local`'s console), or None

    @property
    def queue_url(self) -> str:
        if self._queue_url is None:
            self._queue_url = self.sqs.get_queue_url(QueueName=self.queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
        return self._queue_url

    def receive(self, wait_seconds: int | None = None) -> list[dict]:
        """Up to BatchSize messages (SQS hands out at most 10 per call)."""
        messages: list[dict] = []
        while len(messages) < self.batch_size:
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
                AttributeNames=["All"], MessageAttributeNames=["All"])
            got = answer.get("Messages", [])
            if not got:
                break
            messages += got
            wait_seconds = 0  # gather what is there, do not wait for more
        return messages

    def event(self, messages: list[dict]) -> dict:
        return {"Records": [self._record(m) for m in messages]}

    def _record(self, message: dict) -> dict:
        attributes = {
            "ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000)),
            "SenderId": "AIDAEXAMPLE", "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
            **(message.get("Attributes") or {}),
        }
        message_attributes = {}
        for name, value in (message.get("MessageAttributes") or {}).items():
            message_attributes[name] = {
                "stringValue": value.get("StringValue"), "binaryValue": value.get("BinaryValue"),
                "stringListValues": value.get("StringListValues", []),
                "binaryListValues": value.get("BinaryListValues", []), "dataType": value.get("DataType")}
            message_attributes[name] = {k: v for k, v in message_attributes[name].items() if v is not None}
        return {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"], "attributes": attributes, "messageAttributes": message_attributes,
                "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),  # noqa: S324
                "eventSource": "aws:sqs", "eventSourceARN": self.queue_arn, "awsRegion": self.stack.region}

    def poll_once(self, wait_seconds: int | None = None) -> int:
        """Receive one batch, invoke, delete what succeeded; the number of messages received."""
        messages = self.receive(wait_seconds)
        if not messages:
            return 0
        self.invocations += 1
        started = time.monotonic()
        try:
            result = self._load(self._code_uri).lambda_handler(self.event(messages),
                                                               lambda_context(self.stack, self.function))
            failed = len(messages) - len(self.succeeded(messages, result))
            activity(self.activity, f"sqs {self.function} {len(messages)} message(s)"
                     + (f", {failed} back to the queue" if failed else ""), started)
        except Exception:
            print(f"[sqs] {self.function} failed, the batch returns to the queue:\n{traceback.format_exc()}",
                  file=sys.stderr)
            return len(messages)
        done = self.succeeded(messages, result)
        for start in range(0, len(done), 10):
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[start:start + 10])])
        return len(messages)

    def succeeded(self, messages: list[dict], result) -> list[dict]:
        """The messages to delete, as Lambda decides from the handler's response."""
        if not self.report_failures:
            return messages
        failures = result.get("batchItemFailures") if isinstance(result, dict) else None
        if not failures:
            return messages
        ids = {m["MessageId"] for m in messages}
        failed = set()
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not identifier or identifier not in ids:
                return []  # a malformed response fails the whole batch
            failed.add(identifier)
        return [m for m in messages if m["MessageId"] not in failed]

    def start(self) -> SqsEventSource:
        if self._thread is None and self.enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"sqs-{self.function}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                print(f"[sqs] polling {self.queue_arn} failed:\n{traceback.format_exc()}", file=sys.stderr)
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.wait_seconds + float(function_setting(self.stack, self.function,
                                                                           "Timeout", 3)) + 5)
            self._thread = None


def sqs_event_sources(stack: Stack, sqs=None, **kwargs) -> list[SqsEventSource]:
    """One SqsEventSource per SQS event in the template."""
    return [SqsEventSource(stack, logical, name, props, sqs, **kwargs)
            for logical, name, props in _events_of(stack, "SQS")]
