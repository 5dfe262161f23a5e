"""The OAuth 2.0 authorization server: the consent decision (authorize), the token endpoint
(authorization_code with PKCE, refresh_token with or without rotation) and revocation."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from local.fake_insightly.faults import FaultSwitches


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class AuthorizationServer(FaultSwitches):
    client_id: str = "test-client-id"
    client_secret: str = "test-client-secret-value"
    base_url: str = "https://api.insightly.com/v3.1"
    access_ttl: int | None = 3600
    rotate_refresh_tokens: bool = True
    issue_refresh_tokens: bool = True
    # The registered redirect URIs; None or empty accepts any http(s) URI (the in-process tests).
    redirect_uris: list[str] | None = None
    codes: dict = field(default_factory=dict)
    refresh_tokens: dict = field(default_factory=dict)
    access_tokens: dict = field(default_factory=dict)
    revoked: list = field(default_factory=list)

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
            fault = self._next_fault("token")
            if fault is not None:
                return fault
            if not self._client_ok(form, headers):
                return 401, {}, {"error": "invalid_client"}
            if form.get("grant_type") == "authorization_code":
                return self._exchange(form)
            if form.get("grant_type") == "refresh_token":
                return self._refresh(form)
            return 400, {}, {"error": "unsupported_grant_type"}

    def revoke_endpoint(self, form: dict[str, str], headers: dict[str, str]) -> tuple[int, dict, dict]:
        with self._lock:
            self.calls["revoke"] += 1
            if not self._client_ok(form, headers):
                return 401, {}, {"error": "invalid_client"}
            self.revoked.append(form.get("token"))
            self.refresh_tokens.pop(form.get("token"), None)
            self.access_tokens.pop(form.get("token"), None)
            return 200, {}, {}

    def _bearer_ok(self, auth: str) -> bool:
        """Whether this Authorization header carries a live access token this server issued."""
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        expires_at = self.access_tokens.get(token)
        return not (expires_at is None or (expires_at and expires_at < time.time()))

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
