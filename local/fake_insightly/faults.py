"""The fault switches: the next calls to the token endpoint or to the API fail as a real
provider's do (429 with Retry-After, 5xx, silence, invalid_grant, invalid_client)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import requests

from local.fake_insightly.state import ProviderState

FAULTS = ("429", "500", "timeout", "invalid_grant", "invalid_client")
API_FAULTS = ("429", "500", "503", "timeout")
FAULT_TARGETS = ("token", "api")

Answer = tuple[int, dict, object]


@dataclass
class FaultSwitches(ProviderState):
    retry_after: int = 7  # seconds, on the 429 fault
    faults: deque = field(default_factory=deque)
    api_faults: deque = field(default_factory=deque)

    def fail_next(self, fault: str, times: int = 1, *, on: str = "token") -> None:
        """on="token": '429', '500', 'timeout', 'invalid_grant', 'invalid_client' at the token endpoint;
        on="api": '429', '500', 'timeout' at the API routes (Users/Me, Contacts), Bearer or API key."""
        if on not in FAULT_TARGETS:
            raise ValueError(f"unknown fault target {on!r}")
        if fault not in (FAULTS if on == "token" else API_FAULTS):
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            (self.faults if on == "token" else self.api_faults).extend([fault] * times)

    def _next_fault(self, target: str) -> Answer | None:
        """The answer for the next pending fault at `target` ("token" or "api"; None: none
        pending); "timeout" raises, as the caller's read timeout would. The caller holds the lock."""
        queue = self.faults if target == "token" else self.api_faults
        if not queue:
            return None
        fault = queue.popleft()
        if fault == "timeout":
            raise requests.ReadTimeout("fake provider timed out")
        return (_token_answer if target == "token" else _api_answer)(fault, self.retry_after)


def _token_answer(fault: str, retry_after: int) -> Answer:
    if fault == "429":
        return 429, {"Retry-After": str(retry_after)}, {"error": "rate_limited"}
    if fault == "500":
        return 500, {}, {"error": "server_error"}
    return 400 if fault == "invalid_grant" else 401, {}, {"error": fault}


def _api_answer(fault: str, retry_after: int) -> Answer:
    if fault == "429":
        return 429, {"Retry-After": str(retry_after)}, {"Message": "Too many requests"}
    if fault == "503":
        return 503, {}, {"Message": "Service unavailable"}
    if fault == "401":  # refused whatever the credential (a permission, a bad deploy)
        return 401, {}, {"Message": "Authorization has been denied for this request."}
    return 500, {}, {"Message": "An error has occurred."}
