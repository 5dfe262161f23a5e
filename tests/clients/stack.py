"""The local stack the backend clients are tested against, plus a webhook inbox.

    python -m tests.clients.stack      # prints one JSON line (URLs, credentials, secret), runs until stdin closes

The stack runs on free ports with `ListTagKey=customer` (so listing by tag works) and sends
its webhooks to the inbox, which keeps each delivery as it came (headers and raw body), so a
client's own `webhooks.verify` can check the real signature. `clients/node`'s `npm test`
starts this and runs the Node client's tests against it; the Python client's tests start the
same stack in-process (tests/clients/conftest.py).
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from local import LocalStack, start_local_stack
from local.server import ThreadedServer

LIST_TAG_KEY = "customer"
MAX_DELIVERY_BYTES = 64 * 1024


class WebhookInbox:
    """POST /hooks keeps the delivery; GET /hooks lists them ({"headers", "body"}), oldest first."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.deliveries: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadedServer(host, port, _InboxHandler, name="webhook-inbox", app=self)
        self.url = f"{self._server.url}/hooks"

    def keep(self, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.deliveries.append({"headers": headers, "body": body.decode()})

    def listed(self) -> list[dict]:
        with self._lock:
            return list(self.deliveries)

    def start(self) -> WebhookInbox:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


class _InboxHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_DELIVERY_BYTES:
            return self._send(413, b"")
        body = self.rfile.read(length)
        self.server.app.keep({name.lower(): value for name, value in self.headers.items()}, body)
        self._send(204, b"")

    def do_GET(self):
        self._send(200, json.dumps(self.server.app.listed()).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass


@dataclass
class ClientStack:
    local: LocalStack
    inbox: WebhookInbox
    webhook_secret: str

    def describe(self) -> dict[str, str]:
        """What a client's tests need, as environment-style names."""
        return {"BROKER_URL": self.local.gateway_url, "AWS_REGION": self.local.region,
                "AWS_ACCESS_KEY_ID": self.local.access_key, "AWS_SECRET_ACCESS_KEY": self.local.secret_key,
                "STANDIN_URL": self.local.standin_url, "PROVIDER_BASE_URL": self.local.provider_base_url,
                "RETURN_TO": f"{self.local.demo_url}/", "WEBHOOK_INBOX_URL": self.inbox.url,
                "WEBHOOK_SECRET": self.webhook_secret, "LIST_TAG_KEY": LIST_TAG_KEY}

    def stop(self) -> None:
        self.local.stop()
        self.inbox.stop()


def start_client_stack() -> ClientStack:
    inbox = WebhookInbox().start()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    try:
        # The scheduler stays off: the tests refresh on purpose, so nothing happens behind them.
        local = start_local_stack(schedule=False, ListTagKey=LIST_TAG_KEY, WebhookUrl=inbox.url,
                                  environ={"WEBHOOK_SECRET": secret})
    except BaseException:
        inbox.stop()
        raise
    return ClientStack(local, inbox, secret)


def main() -> int:
    def stop(signum, frame):
        raise KeyboardInterrupt

    stack = start_client_stack()
    signal.signal(signal.SIGTERM, stop)
    try:
        print(json.dumps(stack.describe()), flush=True)
        sys.stdin.read()  # until the test runner that started us closes our stdin (or exits)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
