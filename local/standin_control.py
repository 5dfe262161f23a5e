"""The stand-in's control API (POST/GET /_control/...): switches for tests and the benchmark,
JSON in, JSON out. Every field is checked before anything changes; a bad one is a
BadRequest (the stand-in answers 400). The routes are listed in local/standin.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from local.fake_insightly import API_FAULTS, DEFAULT_DAILY_LIMIT, FAULT_TARGETS, FAULTS

if TYPE_CHECKING:
    from local.standin import StandIn

# A control route: the request body in, (status, JSON answer) out.
ControlRoute = Callable[[bytes], tuple[int, dict]]
SETTINGS = ("latency_ms", "timeout_seconds", "access_ttl", "rotate_refresh_tokens", "issue_refresh_tokens",
            "retry_after")


class BadRequest(Exception):
    pass


def json_body(body: bytes) -> dict:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise BadRequest("the body is not JSON") from exc
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _unknown(data: dict, allowed: set[str], what: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise BadRequest(f"unknown {what}: {', '.join(sorted(unknown))}")


def _number(name: str, value, maximum: float, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= maximum:
        raise BadRequest(f"{name} must be a number from 0 to {maximum}")
    return value


class StandInControl:
    """Faults, accounts and keys, quotas and settings of one stand-in and its FakeInsightly;
    `reset` puts the settings back to what they were when the stand-in was made."""

    def __init__(self, standin: StandIn):
        self.standin = standin
        self.provider = standin.provider
        self._initial = {**self.provider.configure(), **self.own_config()}

    def routes(self) -> dict[tuple[str, str], ControlRoute]:
        return {
            ("POST", "/_control/faults"): self.set_faults,
            ("POST", "/_control/config"): self.set_config,
            ("GET", "/_control/state"): self.state,
            ("POST", "/_control/reset"): self.reset,
            ("POST", "/_control/api-keys"): self.issue_api_key,
            ("POST", "/_control/api-keys/regenerate"): self.regenerate_api_key,
            ("POST", "/_control/quota"): self.set_quota,
        }

    def own_config(self) -> dict:
        return {"latency_ms": self.standin.latency_ms, "timeout_seconds": self.standin.timeout_seconds}

    def set_faults(self, body: bytes) -> tuple[int, dict]:
        data = json_body(body)
        fault, times, on = data.get("fault"), data.get("times", 1), data.get("on", "token")
        if on not in FAULT_TARGETS:
            raise BadRequest(f"on must be one of {', '.join(FAULT_TARGETS)}")
        allowed = FAULTS if on == "token" else API_FAULTS
        if fault not in allowed:
            raise BadRequest(f"fault must be one of {', '.join(allowed)}")
        if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= 10_000:
            raise BadRequest("times must be an integer from 1 to 10000")
        self.provider.fail_next(fault, times, on=on)
        snapshot = self.provider.snapshot()
        return 200, {"pending_faults": snapshot["pending_faults"], "pending_api_faults": snapshot["pending_api_faults"]}

    def issue_api_key(self, body: bytes) -> tuple[int, dict]:
        data = json_body(body)
        _unknown(data, {"pod", "daily_limit", "user", "account"}, "fields")
        user = data.get("user")
        if user is not None and not isinstance(user, dict):
            raise BadRequest("user must be an object of Users/Me fields")
        try:
            issued = self.provider.issue_api_key(data.get("pod", "na1"), user=user,
                                                 daily_limit=data.get("daily_limit", DEFAULT_DAILY_LIMIT),
                                                 account=data.get("account"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return 200, issued

    def regenerate_api_key(self, body: bytes) -> tuple[int, dict]:
        account = json_body(body).get("account")
        try:
            key = self.provider.regenerate_api_key(account if isinstance(account, str) else "")
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return 200, {"account": account, "api_key": key}

    def set_quota(self, body: bytes) -> tuple[int, dict]:
        data = json_body(body)
        _unknown(data, {"account", "remaining", "limit"}, "fields")
        account = data.get("account")
        try:
            quota = self.provider.set_quota(account if isinstance(account, str) else "",
                                            remaining=data.get("remaining"), limit=data.get("limit"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return 200, quota

    def set_config(self, body: bytes) -> tuple[int, dict]:
        self.apply_config(json_body(body))
        return 200, {**self.provider.configure(), **self.own_config()}

    def apply_config(self, data: dict) -> None:
        _unknown(data, set(SETTINGS), "settings")
        provider = self._provider_config(data)
        standin = self.standin
        latency = _number("latency_ms", data["latency_ms"], 60_000) if "latency_ms" in data else standin.latency_ms
        timeout = (_number("timeout_seconds", data["timeout_seconds"], 600) if "timeout_seconds" in data
                   else standin.timeout_seconds)
        self.provider.configure(**provider)  # everything validated before anything changes
        standin.latency_ms, standin.timeout_seconds = float(latency), float(timeout)

    @staticmethod
    def _provider_config(data: dict) -> dict:
        provider = {}
        if "access_ttl" in data:  # null: the token answer carries no expires_in
            ttl = _number("access_ttl", data["access_ttl"], 10 * 365 * 86400, allow_none=True)
            if ttl is not None and (int(ttl) != ttl or ttl < 1):
                raise BadRequest("access_ttl must be a positive integer or null")
            provider["access_ttl"] = None if ttl is None else int(ttl)
        for flag in ("rotate_refresh_tokens", "issue_refresh_tokens"):
            if flag in data:
                if not isinstance(data[flag], bool):
                    raise BadRequest(f"{flag} must be true or false")
                provider[flag] = data[flag]
        if "retry_after" in data:
            provider["retry_after"] = int(_number("retry_after", data["retry_after"], 3600))
        return provider

    def state(self, _body: bytes = b"") -> tuple[int, dict]:
        snapshot = self.provider.snapshot()
        snapshot["config"].update(self.own_config())
        return 200, snapshot

    def reset(self, body: bytes) -> tuple[int, dict]:
        tokens = json_body(body).get("tokens", False)
        if not isinstance(tokens, bool):
            raise BadRequest("tokens must be true or false")
        self.provider.reset(tokens=tokens)
        self.apply_config(self._initial)
        return self.state()
