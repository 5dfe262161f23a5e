"""FakeInsightly: an OAuth 2.0 authorization server and the Insightly API (Users/Me and a
small Contacts surface) that behave like the provider, with switches for the faults a real
one shows. Pure logic: `install()` serves it through `responses` (no sockets);
local/standin.py serves the same object over HTTP. Every method that reads or changes
state holds the lock: the stand-in calls it from many threads.

One object, because tests and the stand-in drive and inspect it as one provider; its parts
each own their state and methods, one module each:
- state.py     ProviderState: the lock, the clock, call counters, every secret handed out
- faults.py    FaultSwitches: fail_next and the answers of each fault
- accounts.py  Account (its daily quota) and KeyAccounts: accounts, pods, API keys
- oauth.py     AuthorizationServer: consent, token endpoint, revocation
- crm.py       the records an account answers with (Users/Me, Contacts)
- api.py       InsightlyApi: one API call (caller, fault, quota, record)
- here         FakeInsightly: settings, reset, snapshot, and serving through `responses`

Two ways into the same API, as on Insightly:
- Bearer (OAuth connections) at `base_url` (https://api.insightly.com/v3.1): the access
  tokens this fake issued; the calls count against the "oauth" account.
- Basic with an API key as the user name (API-key connections) at the per-pod
  `pod_url_template` (https://api.{pod}.insightly.com/v3.1): keys from issue_api_key(); a
  key answers only on its own pod, and regenerate_api_key() revokes it.
Every authenticated answer carries X-RateLimit-Limit / X-RateLimit-Remaining from the
account's daily counter; past the limit the answer is 429 until the 24-hour window moves on.
"""


from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from local.fake_insightly.accounts import (
    DAY,
    DEFAULT_DAILY_LIMIT,
    OAUTH_ACCOUNT,
    POD,
    SEED_CONTACTS,
    USER,
    Account,
)
from local.fake_insightly.api import SESSION_COOKIE, InsightlyApi
from local.fake_insightly.crm import API_ROUTES, MAX_TOP
from local.fake_insightly.faults import API_FAULTS, FAULT_TARGETS, FAULTS

__all__ = ["API_FAULTS", "API_ROUTES", "CONFIG_FIELDS", "DAY", "DEFAULT_DAILY_LIMIT", "FAULTS", "FAULT_TARGETS",
           "MAX_TOP", "OAUTH_ACCOUNT", "POD", "SEED_CONTACTS", "SESSION_COOKIE", "USER", "Account", "FakeInsightly"]

CONFIG_FIELDS = ("access_ttl", "rotate_refresh_tokens", "issue_refresh_tokens", "retry_after")


@dataclass
class FakeInsightly(InsightlyApi):
    def configure(self, **settings) -> dict:
        """Change access_ttl, rotate_refresh_tokens or issue_refresh_tokens; returns them all."""
        unknown = set(settings) - set(CONFIG_FIELDS)
        if unknown:
            raise ValueError(f"not a provider setting: {sorted(unknown)}")
        with self._lock:
            for name, value in settings.items():
                setattr(self, name, value)
            return {name: getattr(self, name) for name in CONFIG_FIELDS}

    def reset(self, *, tokens: bool = False) -> None:
        """Forget calls, pending faults and revocations and refill every daily quota; with
        tokens=True also every code, token, API key and key account."""
        with self._lock:
            self.calls.clear()
            self.faults.clear()
            self.api_faults.clear()
            self.api_requests.clear()
            self.revoked.clear()
            self.revoked_api_keys.clear()
            for account in self.accounts.values():  # a fresh daily window
                account.used, account.window_start = 0, self.clock()
            if tokens:
                self.codes.clear()
                self.refresh_tokens.clear()
                self.access_tokens.clear()
                self.issued.clear()
                self.api_keys.clear()
                oauth = self.accounts[OAUTH_ACCOUNT]
                self.accounts.clear()
                self.accounts[OAUTH_ACCOUNT] = oauth

    def snapshot(self) -> dict:
        """Counts only, never a token value: safe to show over HTTP."""
        with self._lock:
            return {"calls": dict(self.calls), "current_refresh_tokens": len(self.current_refresh_tokens),
                    "revoked": len(self.revoked), "pending_faults": list(self.faults),
                    "pending_api_faults": list(self.api_faults), "live_api_keys": len(self.api_keys),
                    "revoked_api_keys": len(self.revoked_api_keys),
                    "accounts": {a.id: {"pod": a.pod, **a.quota(), "contacts": len(a.contacts)}
                                 for a in self.accounts.values()},
                    "config": {name: getattr(self, name) for name in CONFIG_FIELDS}}

    # -- serving through `responses` -------------------------------------------------------------

    def install(self, mock) -> FakeInsightly:
        self.mock = mock  # a test may add hosts of its own (one that must never be called)
        def adapt(handler, with_form=True):
            def callback(request):
                form = {k: v[0] for k, v in parse_qs(request.body or "").items()} if with_form else None
                args = (form, dict(request.headers)) if with_form else (dict(request.headers),)
                status, headers, body = handler(*args)
                return status, {"Content-Type": "application/json", **headers}, json.dumps(body)
            return callback

        def api(request):
            found = api_url.match(request.url)
            status, headers, body = self.api(request.method, found["pod"], found["path"], found["query"] or "",
                                             dict(request.headers), request.body or b"")
            return status, {"Content-Type": "application/json", **headers}, json.dumps(body)

        # The API at the Bearer base URL and at every pod's host, one pattern for both.
        pods = re.escape(self.pod_url_template).replace(re.escape("{pod}"), "(?P<pod>[a-z0-9]{2,10})")
        api_url = re.compile(f"(?:{re.escape(self.base_url)}|{pods})"
                             r"(?P<path>/(?:Users/Me|Contacts(?:/[^?#]*)?))(?:\?(?P<query>[^#]*))?$")
        mock.add_callback("POST", f"{self.base_url}/oauth2/token", callback=adapt(self.token_endpoint))
        mock.add_callback("POST", f"{self.base_url}/oauth2/revoke", callback=adapt(self.revoke_endpoint))
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):  # the API answers 405 where it has no route
            mock.add_callback(method, api_url, callback=api)
        return self
