"""DataKeyCache: the data keys KMS opened for this container, so a warm read makes no KMS call.

Modelled on the AWS Encryption SDK's caching materials manager with its local cache:

- keyed by the wrapped (KMS-encrypted) data key together with the encryption context KMS
  checked when it opened it, so a key is only ever handed back for the same blob header and
  the same context;
- bounded in entries (least recently used goes first) and in age: an entry is used for at
  most `max_age_seconds` after KMS opened it, then KMS is asked again, so a disabled key or a
  revoked grant takes effect within that time;
- in this process's memory only: never written anywhere, never logged (its repr shows a
  count), and the key bytes are overwritten when an entry leaves;
- wiped whole on a failed open (TokenVault calls wipe()): a refusal from KMS, a blob that
  does not authenticate or does not parse is the one sign a container gets that keys,
  grants or items changed, and starting over costs one KMS call per connection.

The connection item is still read on every call (the vault opens what the item holds now):
a deleted, revoked or reconnected connection stops working at its next call whatever the
cache holds; a reconnect seals under a new data key, which is not in the cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

MAX_ENTRIES = 2000
MAX_AGE_SECONDS = 300.0


class DataKeyCache:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_age_seconds: float = MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        if max_entries < 1 or max_age_seconds <= 0:
            raise ValueError("a data key cache holds at least one entry for a positive time")
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple, tuple[float, bytearray]] = OrderedDict()
        self._lock = threading.Lock()  # the worker opens from several threads

    @staticmethod
    def _key(wrapped_key: bytes, context: Mapping[str, str]) -> tuple:
        return bytes(wrapped_key), tuple(sorted(context.items()))

    def get(self, wrapped_key: bytes, context: Mapping[str, str]) -> bytes | None:
        """The opened data key, or None when it is not here or older than max_age_seconds."""
        key = self._key(wrapped_key, context)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            opened_at, data_key = entry
            if self._clock() - opened_at >= self.max_age_seconds:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return bytes(data_key)

    def put(self, wrapped_key: bytes, context: Mapping[str, str], data_key: bytes) -> None:
        """Keep a data key KMS has just opened under this context."""
        key = self._key(wrapped_key, context)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (self._clock(), bytearray(data_key))
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def wipe(self) -> None:
        """Forget every key, overwriting each one's bytes."""
        with self._lock:
            for key in list(self._entries):
                self._drop(key)

    def _drop(self, key: tuple) -> None:
        _, data_key = self._entries.pop(key)
        data_key[:] = bytes(len(data_key))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never a key, wrapped or not
        return f"DataKeyCache({len(self._entries)} of {self.max_entries} entries, {self.max_age_seconds:g} s)"
