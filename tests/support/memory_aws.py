"""The scheduler's AWS calls answered in memory: a due index of any size and a queue that
counts what it is sent. The clients are real botocore clients, made as the broker makes its
own (timeouts, retries, the deadline check), so a call costs what it costs in Lambda:
serialising the request, signing it, parsing the answer. Only the network is replaced: an
answer is built from memory after `latency` seconds (a sleep, which frees the GIL as a
socket read does). Used by the scheduler's tests and by the scale benchmark.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from botocore.awsrequest import AWSResponse

from broker.platform import aws
from broker.store.connections import ConnectionStore, due_shard

TABLE, QUEUE_URL = "connections", "https://sqs.us-east-1.amazonaws.com/123456789012/refresh"


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def _answer(request, status: int, body: dict) -> AWSResponse:
    return AWSResponse(request.url, status, {"x-amzn-RequestId": "memory"}, _Body(json.dumps(body).encode()))


class MemoryAWS:
    """A due index ((due time, id) per shard) behind a DynamoDB client, and a refresh queue
    behind an SQS client. `sent` counts every id the queue accepted; `queue_fault(n, ids)`
    may return an error answer (status, body) or a list of ids to fail for the n-th call.
    `most_in_flight` is the most calls of one service answered at once."""

    def __init__(self, due: Iterable[tuple[str, int]], *, shards: int, latency: float = 0.0,
                 queue_fault: Callable[[int, list[str]], object] | None = None):
        self.shards, self.latency, self.queue_fault = shards, latency, queue_fault
        self.index: list[list[tuple[int, str]]] = [[] for _ in range(shards)]
        for connection_id, due_at in due:
            self.index[int(due_shard(connection_id, shards))].append((due_at, connection_id))
        for entries in self.index:
            entries.sort()
        self.calls: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()  # calls being answered at once, per service
        self.most_in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.dynamodb = self._client("dynamodb", self._query)
        self.sqs = self._client("sqs", self._send_message_batch)

    def store(self) -> ConnectionStore:
        return ConnectionStore(self.dynamodb, TABLE, shards=self.shards)

    def _client(self, service: str, answer: Callable):
        made = aws.new_client(service)

        def in_memory(request, **_):
            with self._lock:
                self.in_flight[service] += 1
                self.most_in_flight[service] = max(self.most_in_flight[service], self.in_flight[service])
            try:
                if self.latency:
                    time.sleep(self.latency)
                return answer(request, json.loads(request.body))
            finally:
                with self._lock:
                    self.in_flight[service] -= 1

        made.meta.events.register("before-send", in_memory)  # after the deadline check
        return made

    def _query(self, request, body: dict) -> AWSResponse:
        with self._lock:
            self.calls["Query"] += 1
        values = body["ExpressionAttributeValues"]
        shard, now = int(values[":shard"]["S"]), int(values[":now"]["N"])
        entries = self.index[shard]
        start = 0
        if "ExclusiveStartKey" in body:
            last = body["ExclusiveStartKey"]
            start = bisect.bisect_right(entries, (int(last["refresh_due_at"]["N"]), last["connection_id"]["S"]))
        end = min(bisect.bisect_right(entries, (now, "\uffff")), start + body["Limit"])
        items = [{"connection_id": {"S": cid}, "due_shard": {"S": str(shard)}, "refresh_due_at": {"N": str(at)}}
                 for at, cid in entries[start:end]]
        page = {"Items": items, "Count": len(items), "ScannedCount": len(items)}
        if items and end - start == body["Limit"]:  # as DynamoDB: a full page says there may be more
            page["LastEvaluatedKey"] = items[-1]
        return _answer(request, 200, page)

    def _send_message_batch(self, request, body: dict) -> AWSResponse:
        entries = body["Entries"]
        ids = [json.loads(entry["MessageBody"])["connection_id"] for entry in entries]
        with self._lock:
            self.calls["SendMessageBatch"] += 1
            n = self.calls["SendMessageBatch"]
        fault = self.queue_fault(n, ids) if self.queue_fault else None
        if isinstance(fault, tuple):  # the whole call refused
            return _answer(request, *fault)
        refused = set(fault or ())
        accepted = [(e, cid) for e, cid in zip(entries, ids, strict=True) if cid not in refused]
        with self._lock:
            self.sent.update(cid for _, cid in accepted)
        return _answer(request, 200, {
            "Successful": [{"Id": e["Id"], "MessageId": f"m-{n}-{e['Id']}", "MD5OfMessageBody": "0" * 32}
                           for e, _ in accepted],
            "Failed": [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"}
                       for e, cid in zip(entries, ids, strict=True) if cid in refused]})
