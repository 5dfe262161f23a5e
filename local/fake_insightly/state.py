"""What every part of FakeInsightly shares: the lock, the clock, the call counters and the
list of every secret handed out."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProviderState:
    calls: Counter = field(default_factory=Counter)
    issued: list = field(default_factory=list)  # every code, token and key string ever handed out
    clock: Callable[[], float] = time.time

    def __post_init__(self):
        # Every method that reads or changes state holds it: the stand-in calls from many threads.
        self._lock = threading.RLock()
