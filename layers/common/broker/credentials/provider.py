"""ProviderClient: the OAuth 2.0 authorization server and the Insightly API, over requests.

Every URL comes from ProviderSettings; every call has a timeout. Errors are mapped to
ProviderRejected (an OAuth error answer) or ProviderUnavailable (429, 5xx, no answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from broker.credentials.client_credentials import ClientCredentials
from broker.platform.config import ProviderSettings
from broker.platform.errors import ProviderRejected, ProviderUnavailable
from broker.platform.observability import logger
from broker.platform.outbound import HttpClient, parse_retry_after

if TYPE_CHECKING:
    import requests

MAX_EXPIRES_IN = 31_536_000  # one year: a longer lifetime is an anomaly, treated as unknown


@dataclass(frozen=True, repr=False)  # its own __repr__ below hides the tokens
class TokenSet:
    """A token endpoint's answer: the access token, and the refresh token when one came."""

    access_token: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    expires_in: int | None = None
    scope: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # never print a token
        return f"TokenSet(token_type={self.token_type!r}, expires_in={self.expires_in}, scope={self.scope!r})"

    @classmethod
    def from_response(cls, body: dict[str, Any]) -> TokenSet:
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise ProviderUnavailable("the provider's token answer has no access_token")
        refresh_token = body.get("refresh_token")
        return cls(
            access_token=access_token,
            token_type=str(body.get("token_type") or "Bearer"),
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            expires_in=_expires_in(body.get("expires_in")),
            scope=body.get("scope") if isinstance(body.get("scope"), str) else None,
        )


def _expires_in(value: Any) -> int | None:
    """0 < expires_in <= one year, else unknown: a huge value overflowed every date we
    showed, a negative one made every /token call refresh."""
    if value is None:
        return None
    try:
        seconds = int(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except (ValueError, OverflowError):
        seconds = None
    if seconds is None or not 0 < seconds <= MAX_EXPIRES_IN:
        # The value only when it is a number: never echo provider text into the log.
        logger.warning("provider sent an out-of-range expires_in; treating it as unknown",
                       extra={"expires_in": seconds if seconds is not None else "not an integer"})
        return None
    return seconds


def _retry_after(response: requests.Response) -> int | None:
    return parse_retry_after(response.headers.get("Retry-After"))


class ProviderClient(HttpClient):
    def __init__(self, settings: ProviderSettings, *, timeout: tuple[float, float] = (3.05, 8.0),
                 session: requests.Session | None = None):
        super().__init__(timeout=timeout, session=session)
        self.settings = settings

    def authorization_url(self, *, client_id: str, redirect_uri: str, state: str,
                          code_challenge: str | None) -> str:
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state}
        if self.settings.scopes:
            params["scope"] = self.settings.scopes
        if code_challenge:
            params.update(code_challenge=code_challenge, code_challenge_method="S256")
        parts = urlsplit(self.settings.authorize_url)
        query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
        return urlunsplit(parts._replace(query=urlencode(query)))

    # -- token endpoint --------------------------------------------------------------

    def exchange_code(self, creds: ClientCredentials, *, code: str, redirect_uri: str,
                      code_verifier: str | None) -> TokenSet:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        return TokenSet.from_response(self._token_call(creds, form))

    def refresh(self, creds: ClientCredentials, refresh_token: str) -> TokenSet:
        return TokenSet.from_response(
            self._token_call(creds, {"grant_type": "refresh_token", "refresh_token": refresh_token})
        )

    def _token_call(self, creds: ClientCredentials, form: dict[str, str]) -> dict[str, Any]:
        return self._json_or_raise(self._authenticated_post(self.settings.token_url, creds, form))

    # -- API and revocation ------------------------------------------------------------

    def fetch_user(self, access_token: str) -> dict[str, Any]:
        response = self._send("GET", self.settings.userinfo_url,
                              headers={"Authorization": f"Bearer {access_token}"})
        return self._json_or_raise(response)

    def revoke(self, creds: ClientCredentials, token: str, token_type_hint: str) -> None:
        """RFC 7009 revocation. 200 means revoked (or already unknown to the provider)."""
        response = self._authenticated_post(self.settings.revocation_url, creds,
                                            {"token": token, "token_type_hint": token_type_hint})
        if response.status_code != 200:
            self._json_or_raise(response)

    # -- plumbing ----------------------------------------------------------------------

    def _authenticated_post(self, url: str, creds: ClientCredentials, form: dict[str, str]) -> requests.Response:
        """A form POST with client authentication in the configured way (RFC 6749 2.3.1)."""
        if self.settings.token_auth_method == "client_secret_basic":  # nosec B105  # a method name, no secret
            return self._send("POST", url, data=form, auth=(creds.client_id, creds.client_secret))
        return self._send("POST", url, data={**form, "client_id": creds.client_id,
                                             "client_secret": creds.client_secret})

    @staticmethod
    def _json_or_raise(response: requests.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 429:
            raise ProviderUnavailable("the provider is rate limiting", retry_after=_retry_after(response))
        if status >= 500:
            raise ProviderUnavailable(f"the provider answered {status}", retry_after=_retry_after(response))
        try:
            body = response.json()
        except ValueError:
            body = None
        if 200 <= status < 300 and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, str) and error:
            # Only the OAuth error code is kept: error_description is free text from
            # the provider and may echo what we sent.
            raise ProviderRejected(f"the provider refused: {error[:64]}", oauth_error=error[:64])
        if status in (401, 403):
            raise ProviderRejected(f"the provider answered {status}", oauth_error="unauthorized")
        raise ProviderUnavailable(f"the provider gave an unexpected answer ({status})")
