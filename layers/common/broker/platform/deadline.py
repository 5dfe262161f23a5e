"""The time this invocation has left, so no outbound call outlives the Lambda function.

Handlers call start(context); code deep in the package asks seconds_left(). Outside a
handler (tests, scripts) there is no deadline.
"""

from __future__ import annotations

import contextvars
import math
import time

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("deadline", default=math.inf)


def start(context) -> None:
    _deadline.set(time.monotonic() + context.get_remaining_time_in_millis() / 1000)


def seconds_left() -> float:
    return _deadline.get() - time.monotonic()
