"""The demo app's webhook receiver: Standard Webhooks signatures checked with the
off-the-shelf `standardwebhooks` library, the last events kept for the page."""

from __future__ import annotations

import json
import time
from collections import deque

from standardwebhooks import Webhook, WebhookVerificationError

WEBHOOKS_KEPT = 20


class WebhookInbox:
    """POST /webhooks and GET /webhooks.json. `secret` is the stack's whsec_... (None: nothing
    verifies); `received` holds the last events, newest first, marked verified or not."""

    def __init__(self, kept: int = WEBHOOKS_KEPT):
        self.secret: str | None = None
        self.received: deque[dict] = deque(maxlen=kept)

    def receive(self, headers: dict[str, str], body: bytes) -> tuple[int, dict, str]:
        """Verify the signature (and the timestamp's freshness), then remember the event. A real
        receiver acts only on verified ones and answers 2xx quickly; a 4xx tells the broker not
        to send this one again."""
        verified = False
        if self.secret:
            try:
                payload = Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                payload = None
        if not verified:  # shown, marked not verified; never acted on
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        payload = payload if isinstance(payload, dict) else {}
        self.received.appendleft({
            "id": str(headers.get("webhook-id", ""))[:100], "type": str(payload.get("type") or "?")[:100],
            "connection_id": str(payload.get("connection_id") or "")[:200], "verified": verified,
            "received_at": time.strftime("%H:%M:%S", time.localtime())})
        if not verified:
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": "invalid_signature"})
        return 204, {}, ""

    def as_json(self) -> tuple[int, dict, str]:
        return 200, {"Content-Type": "application/json"}, json.dumps(list(self.received))
