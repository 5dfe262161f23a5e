"""What the measurements share: a loopback-only network, quiet broker output, an AWS call
ledger, the broker in-process under moto, realistic connection items, and SQS events."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import responses
from botocore.client import BaseClient
from moto import mock_aws

from broker.connect.oauth_flow import ConnectFlow
from broker.credentials.insightly import provider_user
from broker.credentials.provider import TokenSet
from broker.credentials.tokens import expiry_and_due, sealed_fields
from broker.store.connections import NewCredentials
from local.aws import put_client_credentials
from local.fake_insightly import USER, FakeInsightly
from local.gateway import EnvironmentOverlay, reset_broker
from local.lambda_events import load_handler
from local.stack import ROOT, Stack
from tests.support.inprocess import InProcessBroker

RESULTS_DIR = ROOT / ".bench"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# The template's defaults, plus a revocation endpoint so DELETE does what it does with a
# provider that has one (the dearer case).
PARAMETERS = {"AllowedReturnOrigins": "https://app.example.com",
              "ProviderRevocationUrl": "https://api.insightly.com/v3.1/oauth2/revoke"}



# -- the process ------------------------------------------------------------------------------

def loopback_only() -> None:
    """Every socket of this process may connect to loopback only (moto, the stand-in)."""
    real_connect, real_sendto = socket.socket.connect, socket.socket.sendto

    def address_ok(address) -> bool:
        return not isinstance(address, tuple) or address[0] in LOOPBACK

    def connect(sock, address):
        if not address_ok(address):
            raise RuntimeError(f"the benchmark may not leave loopback (tried {address!r})")
        return real_connect(sock, address)

    def sendto(sock, data, *args):
        if not address_ok(args[-1]):
            raise RuntimeError(f"the benchmark may not leave loopback (tried {args[-1]!r})")
        return real_sendto(sock, data, *args)

    socket.socket.connect, socket.socket.sendto = connect, sendto


class ByteCount(io.TextIOBase):
    """A stream that keeps only how much was written (logs and EMF metrics, measured not shown)."""

    def __init__(self):
        self.chars = 0
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.chars += len(text)
        return len(text)


@contextlib.contextmanager
def broker_output() -> Iterator[ByteCount]:
    """The broker's log lines and EMF metric blobs go to a counter instead of the terminal.

    Powertools' Logger writes to the stream it was built with and Metrics prints to
    sys.stdout, so both are redirected; what the benchmark prints uses sys.__stdout__."""
    from broker.platform.observability import logger

    sink, handler = ByteCount(), logger.registered_handler
    previous = handler.setStream(sink)
    try:
        with contextlib.redirect_stdout(sink):
            yield sink
    finally:
        handler.setStream(previous)


# -- AWS calls --------------------------------------------------------------------------------

@dataclass
class AwsCall:
    service: str  # botocore's name: dynamodb, kms, secretsmanager, sqs, events
    operation: str
    params: dict
    response: dict | None  # None when the call raised (a failed condition still counts)


@dataclass
class Ledger:
    calls: list[AwsCall] = field(default_factory=list)

    def services(self) -> Counter:
        return Counter(call.service for call in self.calls)

    def operations(self) -> Counter:
        return Counter(f"{call.service}:{call.operation}" for call in self.calls)


@contextlib.contextmanager
def aws_calls() -> Iterator[Ledger]:
    """Record every botocore API call made in this process, whoever made the client (the
    broker's own clients and Powertools' Secrets Manager client alike)."""
    ledger, lock, original = Ledger(), threading.Lock(), BaseClient._make_api_call

    def recorded(client, operation_name, api_params):
        response = None
        try:
            response = original(client, operation_name, api_params)
            return response
        finally:
            with lock:
                ledger.calls.append(AwsCall(client.meta.service_model.service_name, operation_name,
                                            api_params, response))

    BaseClient._make_api_call = recorded
    try:
        yield ledger
    finally:
        BaseClient._make_api_call = original


# -- the broker in-process under moto -----------------------------------------------------------

@dataclass
class MotoStack:
    stack: Stack
    provider: FakeInsightly
    broker: InProcessBroker

    @property
    def connections_table(self) -> str:
        return self.stack.refs["ConnectionsTable"]


@contextlib.contextmanager
def moto_stack() -> Iterator[MotoStack]:
    """The template's resources in moto (in-process, no sockets), FakeInsightly behind
    `responses`, and the functions' environment set: what tests/conftest.py builds."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        raise RuntimeError("AWS_ENDPOINT_URL is set: moto's in-process mock would not see the calls")
    with mock_aws(), responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        session = boto3.Session()
        provider = FakeInsightly()
        stack = Stack(parameters=PARAMETERS).provision(session)
        put_client_credentials(stack, session, provider.client_id, provider.client_secret)
        provider.install(mock)
        overlay = EnvironmentOverlay(stack.function_environment("ConnectionsFunction"))
        overlay.apply()
        reset_broker()
        try:
            yield MotoStack(stack, provider, InProcessBroker(stack, provider))
        finally:
            overlay.restore()
            reset_broker()


# -- connections ------------------------------------------------------------------------------

def mint_token_set(provider: FakeInsightly) -> TokenSet:
    """A token set the provider really issued (so it will accept the refresh token), without
    the browser round trip of the connect flow."""
    with provider._lock:
        return TokenSet.from_response(provider._issue())


def store_connection(flow: ConnectFlow, provider: FakeInsightly, connection_id: str, at: int) -> None:
    """Store a connection as the callback does: the broker's own vault and store."""
    store_tokens(flow, mint_token_set(provider), connection_id, at)


def store_tokens(flow: ConnectFlow, tokens: TokenSet, connection_id: str, at: int) -> None:
    """Store `tokens` (a set the provider issued) as the callback does."""
    expires_at, due = expiry_and_due(tokens.expires_in, True, at, flow.settings.refresh_lead_seconds)
    flow.connections.save_connected(NewCredentials(
        connection_id, credentials=flow.vault.seal(connection_id, sealed_fields(tokens)), expires_at=expires_at,
        refresh_due_at=due, provider_user=provider_user(USER)), now=at)


def make_due(dynamodb, table: str, connection_id: str, at: int) -> None:
    """Due a minute before `at`, as the due-index sees it (nothing else about it changes)."""
    dynamodb.update_item(TableName=table, Key={"connection_id": {"S": connection_id}},
                         UpdateExpression="SET refresh_due_at = :due",
                         ExpressionAttributeValues={":due": {"N": str(at - 60)}})


def versions(dynamodb, table: str, connection_ids: list[str]) -> dict[str, int]:
    found = {}
    for start in range(0, len(connection_ids), 100):
        keys = [{"connection_id": {"S": cid}} for cid in connection_ids[start:start + 100]]
        request = {table: {"Keys": keys, "ProjectionExpression": "connection_id, version", "ConsistentRead": True}}
        while request:
            answer = dynamodb.batch_get_item(RequestItems=request)
            for item in answer["Responses"][table]:
                found[item["connection_id"]["S"]] = int(item["version"]["N"])
            request = answer.get("UnprocessedKeys")
    return found


# -- the worker -------------------------------------------------------------------------------

def sqs_event(connection_ids: list[str], due_by: int) -> dict:
    """The event Lambda's SQS event source hands the worker (one record per id)."""
    return {"Records": [
        {"messageId": f"m-{i}", "receiptHandle": f"r-{i}", "attributes": {}, "messageAttributes": {},
         "body": json.dumps({"connection_id": cid, "due_by": due_by}), "md5OfBody": "", "eventSource": "aws:sqs",
         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:RefreshQueue", "awsRegion": "us-east-1"}
        for i, cid in enumerate(connection_ids)]}


def worker_container(number: int):
    """A separately imported copy of functions/worker/app.py: its own BatchProcessor, as one
    Lambda container has (the broker package and its clients stay shared in this process)."""
    return load_handler("functions/worker/", copy=number + 1)


def now() -> int:
    return int(time.time())
