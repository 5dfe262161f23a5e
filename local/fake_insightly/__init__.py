"""FakeInsightly: an OAuth 2.0 authorization server and the Insightly API (Users/Me and a
small Contacts surface) that behave like the provider, with switches for the faults a real
one shows. Pure logic: `install()` serves it through `responses` (no sockets);
local/standin.py serves the same object over HTTP. Every method that reads or changes
state holds the lock: the stand-in calls it from many threads.

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

import base64
import hashlib
import json
import math
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import requests

FAULTS = ("429", "500", "timeout", "invalid_grant", "invalid_client")
API_FAULTS = ("429", "500", "503", "timeout")
SESSION_COOKIE = "AWSALB=fake-balancer-cookie; Path=/; HttpOnly"  # what the API routes (on="api") can be made to answer
FAULT_TARGETS = ("token", "api")
POD = re.compile(r"[a-z0-9]{2,10}")
DAY = 86400
DEFAULT_DAILY_LIMIT = 1000  # Insightly's free plan
OAUTH_ACCOUNT = "oauth"
MAX_TOP = 500  # Insightly's largest page
# The API's paths under a base URL, as (method, pattern) -> route name.
API_ROUTES = (("GET", re.compile(r"/Users/Me"), "users_me"),
              ("GET", re.compile(r"/Contacts"), "list_contacts"),
              ("POST", re.compile(r"/Contacts"), "create_contact"),
              ("GET", re.compile(r"/Contacts/(?P<id>[0-9]{1,18})"), "get_contact"))
CONFIG_FIELDS = ("access_ttl", "rotate_refresh_tokens", "issue_refresh_tokens", "retry_after")

# What `seed_contacts` puts in each new account, in this order (the local stack seeds 3).
SEED_CONTACTS = ({"FIRST_NAME": "Grace", "LAST_NAME": "Hopper", "EMAIL_ADDRESS": "grace@example.com"},
                 {"FIRST_NAME": "Alan", "LAST_NAME": "Turing", "EMAIL_ADDRESS": "alan@example.com"},
                 {"FIRST_NAME": "Katherine", "LAST_NAME": "Johnson", "EMAIL_ADDRESS": "katherine@example.com"},
                 {"FIRST_NAME": "Edsger", "LAST_NAME": "Dijkstra", "EMAIL_ADDRESS": "edsger@example.com"},
                 {"FIRST_NAME": "Barbara", "LAST_NAME": "Liskov", "EMAIL_ADDRESS": "barbara@example.com"})
USER = {"USER_ID": 4242, "EMAIL_ADDRESS": "ada@example.com", "FIRST_NAME": "Ada", "LAST_NAME": "Lovelace",
        "TIMEZONE_ID": "GMT Standard Time", "ADMINISTRATOR": True}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Account:
    """An Insightly instance: its pod, its user, its API key and its daily request counter."""

    id: str
    pod: str | None
    user: dict
    daily_limit: int = DEFAULT_DAILY_LIMIT
    api_key: str | None = None
    used: int = 0
    window_start: float = 0.0
    contacts: dict = field(default_factory=dict)

    def remaining(self) -> int:
        return max(self.daily_limit - self.used, 0)

    def quota(self) -> dict:
        return {"limit": self.daily_limit, "remaining": self.remaining()}

    def rate_headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.daily_limit), "X-RateLimit-Remaining": str(self.remaining())}


@dataclass
class FakeInsightly:
    client_id: str = "test-client-id"
    client_secret: str = "test-client-secret-value"
    base_url: str = "https://api.insightly.com/v3.1"
    access_ttl: int | None = 3600
    rotate_refresh_tokens: bool = True
    issue_refresh_tokens: bool = True
    retry_after: int = 7  # seconds, on the 429 fault
    # The registered redirect URIs; None or empty accepts any http(s) URI (the in-process tests).
    redirect_uris: list[str] | None = None
    user: dict = field(default_factory=lambda: dict(USER))
    calls: Counter = field(default_factory=Counter)
    codes: dict = field(default_factory=dict)
    refresh_tokens: dict = field(default_factory=dict)
    access_tokens: dict = field(default_factory=dict)
    issued: list = field(default_factory=list)  # every token string ever handed out
    faults: deque = field(default_factory=deque)
    revoked: list = field(default_factory=list)
    # The API-key side: per-pod hosts, accounts by id, the live key of each.
    pod_url_template: str = "https://api.{pod}.insightly.com/v3.1"
    oauth_daily_limit: int = 100_000
    accounts: dict = field(default_factory=dict)
    api_keys: dict = field(default_factory=dict)  # live key -> account id
    revoked_api_keys: list = field(default_factory=list)
    api_faults: deque = field(default_factory=deque)
    # method, path and headers of the latest API calls (bounded: the stand-in runs for hours)
    api_requests: deque = field(default_factory=lambda: deque(maxlen=1000))
    clock: Callable[[], float] = time.time
    seed_contacts: int = 0  # contacts each new account starts with (at most len(SEED_CONTACTS))

    def __post_init__(self):
        self._lock = threading.RLock()
        self._oauth_account()

    def _oauth_account(self) -> Account:
        # Bearer calls count against this account; its user is `self.user`, read at answer time.
        account = self.accounts.get(OAUTH_ACCOUNT)
        if account is None:
            account = self.accounts[OAUTH_ACCOUNT] = Account(OAUTH_ACCOUNT, None, self.user, self.oauth_daily_limit,
                                                             window_start=self.clock(), contacts=self._seeded())
        return account

    def _seeded(self) -> dict:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.clock()))
        return {number: {**contact, "CONTACT_ID": number, "DATE_CREATED_UTC": created}
                for number, contact in enumerate(SEED_CONTACTS[:self.seed_contacts], start=1)}

    # -- switches ----------------------------------------------------------------------------

    def fail_next(self, fault: str, times: int = 1, *, on: str = "token") -> None:
        """on="token": '429', '500', 'timeout', 'invalid_grant', 'invalid_client' at the token endpoint;
        on="api": '429', '500', 'timeout' at the API routes (Users/Me, Contacts), Bearer or API key."""
        if on not in FAULT_TARGETS:
            raise ValueError(f"unknown fault target {on!r}")
        if fault not in (FAULTS if on == "token" else API_FAULTS):
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            (self.faults if on == "token" else self.api_faults).extend([fault] * times)

    def issue_api_key(self, pod: str = "na1", *, user: dict | None = None,
                      daily_limit: int = DEFAULT_DAILY_LIMIT, account: str | None = None) -> dict:
        """A new account on `pod` with a live API key: {"account", "api_key", "pod", "api_url"}.
        With `account`: another user's key on that existing account (one Insightly instance,
        one daily counter shared by every key of it)."""
        if account is not None:
            with self._lock:
                existing = self._account(account)
                key = "key-" + secrets.token_hex(16)
                self.api_keys[key] = existing.id
                self.issued.append(key)
                return {"account": existing.id, "api_key": key, "pod": existing.pod,
                        "api_url": self.api_url(existing.pod)}
        if not isinstance(pod, str) or not POD.fullmatch(pod):
            raise ValueError("pod must be 2-10 characters of a-z 0-9")
        if isinstance(daily_limit, bool) or not isinstance(daily_limit, int) or daily_limit < 0:
            raise ValueError("daily_limit must be a non-negative integer")
        with self._lock:
            number = len(self.accounts)
            account = Account(f"acct-{number}", pod, dict(user) if user else {
                "USER_ID": 5000 + number, "EMAIL_ADDRESS": f"user{number}@{pod}.example.com",
                "FIRST_NAME": "Key", "LAST_NAME": f"User {number}", "ADMINISTRATOR": False},
                daily_limit, window_start=self.clock(), contacts=self._seeded())
            self.accounts[account.id] = account
            self._new_key(account)
            return {"account": account.id, "api_key": account.api_key, "pod": pod, "api_url": self.api_url(pod)}

    def regenerate_api_key(self, account_id: str) -> str:
        """Insightly's "Generate New API Key": the old key stops working at once."""
        with self._lock:
            account = self._account(account_id)
            if account.pod is None:
                raise ValueError("the oauth account has no API key")
            self.revoked_api_keys.append(account.api_key)
            del self.api_keys[account.api_key]
            return self._new_key(account)

    def set_quota(self, account_id: str, *, remaining: int | None = None, limit: int | None = None) -> dict:
        """Set the account's daily limit and/or what is left of it in the current window."""
        for name, value in (("remaining", remaining), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer")
        with self._lock:
            account = self._account(account_id)
            if limit is not None:
                account.daily_limit = limit
            if remaining is not None:
                account.used, account.window_start = max(account.daily_limit - remaining, 0), self.clock()
            return account.quota()

    def api_url(self, pod: str) -> str:
        return self.pod_url_template.replace("{pod}", pod)

    def _account(self, account_id: str) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            raise ValueError("no such account")
        return account

    def _new_key(self, account: Account) -> str:
        key = "key-" + secrets.token_hex(16)
        account.api_key = key
        self.api_keys[key] = account.id
        self.issued.append(key)
        return key

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

    # -- the person at the consent page --------------------------------------------------------

    def authorize_error(self, params: dict[str, str]) -> str | None:
        """Why an authorization request must not even be answered with a redirect, or None."""
        if params.get("client_id") != self.client_id:
            return "unknown client_id"
        if params.get("response_type") != "code":
            return "unsupported response_type (only 'code')"
        redirect = urlsplit(params.get("redirect_uri", ""))
        if redirect.scheme not in ("http", "https") or not redirect.netloc or redirect.fragment:
            return "missing or invalid redirect_uri"
        if self.redirect_uris and params["redirect_uri"] not in self.redirect_uris:
            return "redirect_uri is not registered for this client"
        return None

    def approve(self, authorize_url: str) -> str:
        """Approve the request; returns the callback URL the browser is sent to."""
        return self.approve_params(self._authorize_params(authorize_url))

    def deny(self, authorize_url: str) -> str:
        return self.deny_params(self._authorize_params(authorize_url))

    def approve_params(self, params: dict[str, str]) -> str:
        """Approve from the authorization request's query parameters; returns the callback URL."""
        self._check_authorize(params)
        code = "code-" + secrets.token_urlsafe(16)
        with self._lock:
            self.codes[code] = {"client_id": params["client_id"], "redirect_uri": params["redirect_uri"],
                                "challenge": params.get("code_challenge"), "used": False}
            self.issued.append(code)
        return self._back(params, code=code)

    def deny_params(self, params: dict[str, str]) -> str:
        self._check_authorize(params)
        return self._back(params, error="access_denied")

    def _check_authorize(self, params: dict[str, str]) -> None:
        error = self.authorize_error(params)
        if error:
            raise ValueError(error)

    def _authorize_params(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{self.base_url}/oauth2/authorize", url
        return dict(parse_qsl(parts.query))

    @staticmethod
    def _back(params: dict[str, str], **answer: str) -> str:
        if params.get("state") is not None:
            answer["state"] = params["state"]
        uri = params["redirect_uri"]
        return f"{uri}{'&' if '?' in uri else '?'}{urlencode(answer)}"

    # -- endpoints -------------------------------------------------------------------------

    def token_endpoint(self, form: dict[str, str], headers: dict[str, str]) -> tuple[int, dict, dict]:
        with self._lock:
            self.calls["token"] += 1
            self.calls[form.get("grant_type", "?")] += 1
            if self.faults:
                fault = self.faults.popleft()
                if fault == "timeout":
                    raise requests.ReadTimeout("fake provider timed out")
                if fault == "429":
                    return 429, {"Retry-After": str(self.retry_after)}, {"error": "rate_limited"}
                if fault == "500":
                    return 500, {}, {"error": "server_error"}
                return 400 if fault == "invalid_grant" else 401, {}, {"error": fault}
            if not self._client_ok(form, headers):
                return 401, {}, {"error": "invalid_client"}
            if form.get("grant_type") == "authorization_code":
                return self._exchange(form)
            if form.get("grant_type") == "refresh_token":
                return self._refresh(form)
            return 400, {}, {"error": "unsupported_grant_type"}

    def users_me(self, headers: dict[str, str]) -> tuple[int, dict, dict]:
        """GET {base_url}/Users/Me with a Bearer token."""
        return self.api("GET", None, "/Users/Me", "", headers, b"")

    def api(self, method: str, pod: str | None, path: str, query: str, headers: dict[str, str],
            body: bytes | str) -> tuple[int, dict, object]:
        """One call to the API below a base URL: `pod` None for the Bearer base URL, else the
        pod of an API-key host. Answers (status, headers, JSON body)."""
        route = next(((name, found) for m, pattern, name in API_ROUTES
                      if m == method and (found := pattern.fullmatch(path))), None)
        with self._lock:
            self.calls["api"] += 1
            self.api_requests.append({"method": method, "path": path, "pod": pod,
                                      "headers": {k.lower(): v for k, v in headers.items()}})
            if route is not None:
                self.calls[route[0]] += 1
            if self.api_faults:
                fault = self.api_faults.popleft()
                if fault == "timeout":
                    raise requests.ReadTimeout("fake provider timed out")
                if fault == "429":
                    return 429, {"Retry-After": str(self.retry_after)}, {"Message": "Too many requests"}
                if fault == "503":
                    return 503, {}, {"Message": "Service unavailable"}
                if fault == "401":  # refused whatever the credential (a permission, a bad deploy)
                    return 401, {}, {"Message": "Authorization has been denied for this request."}
                return 500, {}, {"Message": "An error has occurred."}
            account = self._caller(pod, headers)
            if account is None:
                return 401, {}, {"Message": "Authorization has been denied for this request."}
            if route is None:
                known = any(pattern.fullmatch(path) for _, pattern, _ in API_ROUTES)
                return (405, {}, {"Message": "Method not allowed"}) if known else (404, {}, {"Message": "Not found"})
            now = self.clock()
            if now - account.window_start >= DAY:
                account.used, account.window_start = 0, now
            if account.used >= account.daily_limit:
                wait = max(math.ceil(account.window_start + DAY - now), 1)
                return 429, {**account.rate_headers(), "Retry-After": str(wait)}, {
                    "Message": "API request limit exceeded"}
            account.used += 1
            status, extra, answer = getattr(self, "_" + route[0])(account, query, body, **route[1].groupdict())
            # Insightly's load balancer sets a cookie: nothing a proxy may pass on.
            return status, {**account.rate_headers(), **extra, "Set-Cookie": SESSION_COOKIE}, answer

    def _caller(self, pod: str | None, headers: dict[str, str]) -> Account | None:
        auth = headers.get("Authorization", "")
        if pod is None:  # the Bearer base URL: OAuth access tokens only
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            expires_at = self.access_tokens.get(token)
            if expires_at is None or (expires_at and expires_at < time.time()):
                return None
            account = self._oauth_account()
            account.user = self.user
            return account
        if not auth.startswith("Basic "):
            return None
        try:
            key, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        account = self.accounts.get(self.api_keys.get(key, ""))
        return account if account is not None and account.pod == pod and password == "" else None

    # -- the CRM surface -------------------------------------------------------------------------

    def _users_me(self, account: Account, _query: str, _body) -> tuple[int, dict, object]:
        return 200, {}, dict(account.user)

    def _list_contacts(self, account: Account, query: str, _body) -> tuple[int, dict, object]:
        params = dict(parse_qsl(query, keep_blank_values=True))
        try:
            top, skip = int(params.get("top", "100")), int(params.get("skip", "0"))
        except ValueError:
            return 400, {}, {"Message": "top and skip must be integers"}
        if not 0 <= top <= MAX_TOP or skip < 0:
            return 400, {}, {"Message": f"top must be 0-{MAX_TOP} and skip 0 or more"}
        contacts = [account.contacts[i] for i in sorted(account.contacts)]
        extra = {"X-Total-Count": str(len(contacts))} if params.get("count_total", "").lower() == "true" else {}
        return 200, extra, contacts[skip:skip + top]

    def _create_contact(self, account: Account, _query: str, body) -> tuple[int, dict, object]:
        try:
            data = json.loads(body or b"")
        except ValueError:
            return 400, {}, {"Message": "The body is not JSON"}
        if not isinstance(data, dict):
            return 400, {}, {"Message": "The body must be a contact object"}
        contact_id = max(account.contacts, default=0) + 1
        account.contacts[contact_id] = contact = {**data, "CONTACT_ID": contact_id,
                                                  "DATE_CREATED_UTC": time.strftime("%Y-%m-%d %H:%M:%S",
                                                                                    time.gmtime(self.clock()))}
        return 200, {}, dict(contact)

    def _get_contact(self, account: Account, _query: str, _body, id: str) -> tuple[int, dict, object]:
        contact = account.contacts.get(int(id))
        return (200, {}, dict(contact)) if contact else (404, {}, {"Message": "Contact not found"})

    def revoke_endpoint(self, form: dict[str, str], headers: dict[str, str]) -> tuple[int, dict, dict]:
        with self._lock:
            self.calls["revoke"] += 1
            if not self._client_ok(form, headers):
                return 401, {}, {"error": "invalid_client"}
            self.revoked.append(form.get("token"))
            self.refresh_tokens.pop(form.get("token"), None)
            self.access_tokens.pop(form.get("token"), None)
            return 200, {}, {}

    # -- grant logic ---------------------------------------------------------------------------

    def _client_ok(self, form: dict[str, str], headers: dict[str, str]) -> bool:
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
                return False
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.client_id and secrets.compare_digest(secret.encode(), self.client_secret.encode())

    def _exchange(self, form: dict[str, str]):
        grant = self.codes.get(form.get("code", ""))
        if grant is None or grant["used"] or grant["redirect_uri"] != form.get("redirect_uri"):
            return 400, {}, {"error": "invalid_grant"}
        grant["used"] = True
        if grant["challenge"]:
            verifier = form.get("code_verifier", "")
            if _b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
                return 400, {}, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        return 200, {}, self._issue()

    def _refresh(self, form: dict[str, str]):
        token = form.get("refresh_token", "")
        if not self.refresh_tokens.get(token):
            return 400, {}, {"error": "invalid_grant"}
        if self.rotate_refresh_tokens:
            self.refresh_tokens[token] = False
        return 200, {}, self._issue(keep_refresh=None if self.rotate_refresh_tokens else token)

    def _issue(self, keep_refresh: str | None = None) -> dict:
        access = "at-" + secrets.token_urlsafe(24)
        self.access_tokens[access] = time.time() + self.access_ttl if self.access_ttl else 0
        self.issued.append(access)
        body = {"access_token": access, "token_type": "Bearer"}
        if self.access_ttl is not None:
            body["expires_in"] = self.access_ttl
        if self.issue_refresh_tokens and keep_refresh is None:
            refresh = "rt-" + secrets.token_urlsafe(24)
            self.refresh_tokens[refresh] = True
            self.issued.append(refresh)
            body["refresh_token"] = refresh
        return body

    @property
    def current_refresh_tokens(self) -> list[str]:
        with self._lock:
            return [t for t, live in self.refresh_tokens.items() if live]

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
