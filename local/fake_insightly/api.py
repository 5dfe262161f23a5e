"""The Insightly API below a base URL: who is calling (a Bearer token this server issued, or
an API key on its own pod), the fault switches, the daily quota, then the CRM records."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from local.fake_insightly import crm
from local.fake_insightly.accounts import Account, KeyAccounts
from local.fake_insightly.oauth import AuthorizationServer

SESSION_COOKIE = "AWSALB=fake-balancer-cookie; Path=/; HttpOnly"


@dataclass
class InsightlyApi(AuthorizationServer, KeyAccounts):
    # method, path and headers of the latest API calls (bounded: the stand-in runs for hours)
    api_requests: deque = field(default_factory=lambda: deque(maxlen=1000))

    def users_me(self, headers: dict[str, str]) -> tuple[int, dict, dict]:
        """GET {base_url}/Users/Me with a Bearer token."""
        return self.api("GET", None, "/Users/Me", "", headers, b"")

    def api(self, method: str, pod: str | None, path: str, query: str, headers: dict[str, str],
            body: bytes | str) -> tuple[int, dict, object]:
        """One call to the API below a base URL: `pod` None for the Bearer base URL, else the
        pod of an API-key host. Answers (status, headers, JSON body)."""
        route = crm.route(method, path)
        with self._lock:
            self.calls["api"] += 1
            self.api_requests.append({"method": method, "path": path, "pod": pod,
                                      "headers": {k.lower(): v for k, v in headers.items()}})
            if route is not None:
                self.calls[route[0]] += 1
            fault = self._next_fault("api")
            if fault is not None:
                return fault
            account = self._caller(pod, headers)
            if account is None:
                return 401, {}, {"Message": "Authorization has been denied for this request."}
            if route is None:
                return (405, {}, {"Message": "Method not allowed"}) if crm.known_path(path) else (
                    404, {}, {"Message": "Not found"})
            wait = account.spend(self.clock())
            if wait is not None:
                return 429, {**account.rate_headers(), "Retry-After": str(wait)}, {
                    "Message": "API request limit exceeded"}
            name, found = route
            status, extra, answer = crm.RECORDS[name](account, query, body, self.clock, **found.groupdict())
            # Insightly's load balancer sets a cookie: nothing a proxy may pass on.
            return status, {**account.rate_headers(), **extra, "Set-Cookie": SESSION_COOKIE}, answer

    def _caller(self, pod: str | None, headers: dict[str, str]) -> Account | None:
        auth = headers.get("Authorization", "")
        if pod is None:  # the Bearer base URL: OAuth access tokens only
            if not self._bearer_ok(auth):
                return None
            account = self._oauth_account()
            account.user = self.user
            return account
        return self._key_holder(pod, auth)
