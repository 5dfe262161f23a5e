"""Verify the broker's webhooks (Standard Webhooks) with the off-the-shelf `standardwebhooks`.

    from insightly_connect import webhooks
    event = webhooks.verify("whsec_...", request.headers, request.body)   # raises if forged or stale
    if event["type"] == "NeedsReauth": ...

`secret` is the stack's WebhookSecret, `whsec_<current>` (docs/events.md). `body` must be
the raw bytes as received: a re-serialised JSON body no longer matches the signature. The
timestamp must be within 5 minutes; drop duplicates by `event["id"]` (the same on a retry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "verify"]


def verify(secret: str, headers: Mapping[str, str], body: bytes | str) -> dict[str, Any]:
    """The event (`id`, `type`, `connection_id`, `status`, `reason`, `at`, `tags`, ...) if the
    signature and timestamp hold; WebhookVerificationError otherwise."""
    event = Webhook(secret).verify(body, dict(headers.items()))
    if not isinstance(event, dict):
        raise WebhookVerificationError("the payload is not a JSON object")
    return event
