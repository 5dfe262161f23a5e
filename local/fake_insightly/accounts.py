"""Insightly instances: each with its pod, its user, its API keys, its records and its daily
request counter. Keys answer only on their own pod; regenerating one revokes it at once."""

from __future__ import annotations

import base64
import math
import re
import secrets
import time
from dataclasses import dataclass, field

from local.fake_insightly.state import ProviderState

POD = re.compile(r"[a-z0-9]{2,10}")
DAY = 86400
DEFAULT_DAILY_LIMIT = 1000  # Insightly's free plan
OAUTH_ACCOUNT = "oauth"
# What `seed_contacts` puts in each new account, in this order (the local stack seeds 3).
SEED_CONTACTS = ({"FIRST_NAME": "Grace", "LAST_NAME": "Hopper", "EMAIL_ADDRESS": "grace@example.com"},
                 {"FIRST_NAME": "Alan", "LAST_NAME": "Turing", "EMAIL_ADDRESS": "alan@example.com"},
                 {"FIRST_NAME": "Katherine", "LAST_NAME": "Johnson", "EMAIL_ADDRESS": "katherine@example.com"},
                 {"FIRST_NAME": "Edsger", "LAST_NAME": "Dijkstra", "EMAIL_ADDRESS": "edsger@example.com"},
                 {"FIRST_NAME": "Barbara", "LAST_NAME": "Liskov", "EMAIL_ADDRESS": "barbara@example.com"})
USER = {"USER_ID": 4242, "EMAIL_ADDRESS": "ada@example.com", "FIRST_NAME": "Ada", "LAST_NAME": "Lovelace",
        "TIMEZONE_ID": "GMT Standard Time", "ADMINISTRATOR": True}


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

    def spend(self, now: float) -> int | None:
        """Count one request in the 24-hour window (a new window once the day is over); past
        the limit, count nothing and return the seconds until the window moves on."""
        if now - self.window_start >= DAY:
            self.used, self.window_start = 0, now
        if self.used >= self.daily_limit:
            return max(math.ceil(self.window_start + DAY - now), 1)
        self.used += 1
        return None


@dataclass
class KeyAccounts(ProviderState):
    """The accounts, by id, and the live API key of each; the "oauth" account is the one
    Bearer calls count against, its user `user`."""

    user: dict = field(default_factory=lambda: dict(USER))
    # The API-key side: per-pod hosts, accounts by id, the live key of each.
    pod_url_template: str = "https://api.{pod}.insightly.com/v3.1"
    oauth_daily_limit: int = 100_000
    accounts: dict = field(default_factory=dict)
    api_keys: dict = field(default_factory=dict)  # live key -> account id
    revoked_api_keys: list = field(default_factory=list)
    seed_contacts: int = 0  # contacts each new account starts with (at most len(SEED_CONTACTS))

    def __post_init__(self):
        super().__post_init__()
        self._oauth_account()

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

    def _key_holder(self, pod: str, auth: str) -> Account | None:
        """The account whose live key is in this Basic header (key as user name, empty
        password), if the key belongs to `pod`."""
        if not auth.startswith("Basic "):
            return None
        try:
            key, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        account = self.accounts.get(self.api_keys.get(key, ""))
        return account if account is not None and account.pod == pod and password == "" else None
