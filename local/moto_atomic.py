"""DynamoDB's per-request atomicity, which moto lacks.

Real DynamoDB evaluates a condition expression and applies the write as one step. moto
checks the condition and then writes, with nothing in between to stop another thread, so
two workers that both "win" a conditional lease is moto's artefact, not the broker's bug
(it made the duplicate-message test flaky under load). One lock around moto's table
operations gives tests the guarantee the broker relies on in production."""

from __future__ import annotations

import functools
import threading

from moto.dynamodb.models import DynamoDBBackend

OPERATIONS = ("get_item", "put_item", "update_item", "delete_item", "query", "scan",
              "batch_get_item", "batch_write_item", "transact_get_items", "transact_write_items")

_lock = threading.RLock()


def install() -> None:
    """Serialize moto's DynamoDB operations (idempotent: a second call changes nothing)."""
    for name in OPERATIONS:
        original = getattr(DynamoDBBackend, name)
        if getattr(original, "_serialized", False):
            continue

        @functools.wraps(original)
        def serialized(self, *args, _original=original, **kwargs):
            with _lock:
                return _original(self, *args, **kwargs)

        serialized._serialized = True
        setattr(DynamoDBBackend, name, serialized)
