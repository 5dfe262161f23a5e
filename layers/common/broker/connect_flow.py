"""The connect flow: connect session -> authorize redirect -> callback -> stored connection.

Browser binding and PKCE: /oauth/authorize gives the browser a random secret in an
HttpOnly cookie scoped to the callback. The state item stores only a hash of it, and the
PKCE verifier is derived from it (HMAC over the state), so neither the verifier nor
anything that yields it is ever stored, and the authorize function needs no KMS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError

from . import requests_in
from .client_credentials import ClientCredentialSource
from .config import Settings
from .connections import ConnectionStore
from .errors import BrokerError, InvalidRequest, ProviderRejected, ProviderUnavailable
from .flowstore import FlowStore
from .lifecycle import CONNECTED, LifecycleEvents
from .observability import count, logger
from .provider import ProviderClient
from .tokens import expiry_and_due, iso, sealed_fields
from .vault import TokenVault

CALLBACK_PATH = "/oauth/callback"
BROWSER_COOKIE = "ic_oauth_browser"
# Provider error codes passed on to return_to as they are; anything else is "provider_error".
KNOWN_PROVIDER_ERRORS = frozenset({
    "access_denied", "invalid_request", "unauthorized_client", "unsupported_response_type",
    "invalid_scope", "server_error", "temporarily_unavailable", "consent_required", "login_required",
})


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def pkce_verifier(browser_secret: str, state: str) -> str:
    # 43 characters of base64url: a valid RFC 7636 verifier, reproducible only with the cookie.
    return b64url(hmac.new(browser_secret.encode(), b"pkce-verifier:" + state.encode(), hashlib.sha256).digest())


def pkce_challenge(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode()).digest())


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def provider_user(raw: dict) -> dict[str, str]:
    """The few fields of Insightly's Users/Me worth keeping (no tokens, nothing large)."""
    name = " ".join(str(raw[k]) for k in ("FIRST_NAME", "LAST_NAME") if raw.get(k))
    user = {"id": raw.get("USER_ID"), "email": raw.get("EMAIL_ADDRESS"), "name": name or None}
    return {k: str(v)[:256] for k, v in user.items() if v not in (None, "")}


@dataclass(frozen=True)
class Redirect:
    location: str
    browser_secret: str | None = None  # set on the authorize redirect: goes into the cookie


class ConnectFlow:
    def __init__(self, settings: Settings, *, flows: FlowStore, connections: ConnectionStore,
                 vault: TokenVault, provider: ProviderClient, credentials: ClientCredentialSource,
                 events: LifecycleEvents | None = None, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.flows = flows
        self.connections = connections
        self.vault = vault
        self.provider = provider
        self.credentials = credentials
        self.events = events
        self.clock = clock

    def _now(self) -> int:
        return int(self.clock())

    # -- POST /connect-sessions ------------------------------------------------------------

    def create_session(self, body: str | None, *, base_url: str) -> dict[str, str]:
        data = requests_in.json_object(body, allowed={"connection_id", "return_to"},
                                       required={"connection_id", "return_to"})
        connection_id = requests_in.connection_id(data["connection_id"])
        return_to = requests_in.return_to(data["return_to"], self.settings.allowed_return_origins)
        token = secrets.token_urlsafe(32)
        expires_at = self._now() + self.settings.flow_ttl_seconds
        self.flows.put_session(token, connection_id=connection_id, return_to=return_to, expires_at=expires_at)
        return {"connect_url": with_query(f"{base_url}/oauth/authorize", session=token),
                "expires_at": iso(expires_at)}

    # -- GET /oauth/authorize --------------------------------------------------------------

    def begin_authorization(self, raw_query: str | None, *, base_url: str) -> Redirect:
        params = requests_in.query_params(raw_query)
        token = requests_in.random_token(requests_in.single(params, "session", max_length=64), "session")
        client_id = self.credentials.get().client_id  # before the session is spent: a bad secret burns nothing
        session = self.flows.consume_session(token, now=self._now())
        state, browser_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.flows.put_state(state, browser_secret=browser_secret, connection_id=session.connection_id,
                             return_to=session.return_to, expires_at=self._now() + self.settings.flow_ttl_seconds)
        challenge = pkce_challenge(pkce_verifier(browser_secret, state)) if self.settings.provider.use_pkce else None
        location = self.provider.authorization_url(client_id=client_id, redirect_uri=base_url + CALLBACK_PATH,
                                                   state=state, code_challenge=challenge)
        logger.info("authorization started", extra={"connection_id": session.connection_id})
        return Redirect(location, browser_secret)

    # -- GET /oauth/callback ---------------------------------------------------------------

    def complete_callback(self, raw_query: str | None, *, browser_secret: str | None, base_url: str) -> Redirect:
        """Checks the state before anything else; from then on every outcome is a redirect."""
        params = requests_in.query_params(raw_query)
        state = requests_in.random_token(requests_in.single(params, "state", max_length=64), "state")
        if not browser_secret or not requests_in.RANDOM_TOKEN.fullmatch(browser_secret):
            raise InvalidRequest("this browser did not start the authorization (no state cookie)",
                                 code="state_mismatch")
        auth = self.flows.consume_state(state, browser_secret=browser_secret, now=self._now())
        try:
            self._link(params, auth.connection_id, verifier=pkce_verifier(browser_secret, state),
                       redirect_uri=base_url + CALLBACK_PATH)
        except (ClientError, BotoCoreError) as fault:
            # The code is spent; send the person back with an answer rather than a bare 500.
            # The type only: AWS error text may quote what was sent.
            exc = BrokerError("the connection could not be stored", code="storage_unavailable")
            logger.error("connection not stored",
                         extra={"connection_id": auth.connection_id, "exception_type": type(fault).__name__})
        except BrokerError as caught:
            exc = caught
        else:
            return Redirect(with_query(auth.return_to, status="connected", connection_id=auth.connection_id))
        logger.warning("connection failed", extra={"connection_id": auth.connection_id, "error": exc.code})
        count("ConnectionsFailed")
        return Redirect(with_query(auth.return_to, status="error", error=exc.code))

    def _link(self, params: dict[str, list[str]], connection_id: str, *, verifier: str, redirect_uri: str) -> None:
        error = requests_in.single(params, "error", required=False, max_length=128)
        if error is not None:
            raise BrokerError("the provider did not authorize",
                              code=error if error in KNOWN_PROVIDER_ERRORS else "provider_error")
        issuer = requests_in.single(params, "iss", required=False, max_length=512)
        if issuer is not None and self.settings.provider.issuer and issuer != self.settings.provider.issuer:
            # RFC 9207: a response from another authorization server (mix-up attack).
            raise BrokerError("the authorization response came from another issuer", code="issuer_mismatch")
        code = requests_in.single(params, "code", required=False, max_length=2048)
        if not code:
            raise BrokerError("the provider sent no authorization code", code="missing_code")

        try:  # the code is single use: one exchange, retried only after a client auth refusal
            tokens = self.credentials.call(lambda creds: self.provider.exchange_code(
                creds, code=code, redirect_uri=redirect_uri,
                code_verifier=verifier if self.settings.provider.use_pkce else None))
            user = provider_user(self.provider.fetch_user(tokens.access_token))
        except ProviderRejected as exc:
            raise BrokerError("the provider refused the authorization code", code="token_exchange_failed") from exc
        except ProviderUnavailable as exc:
            raise BrokerError("the provider is unavailable", code="provider_unavailable") from exc

        now = self._now()
        expires_at, due = expiry_and_due(tokens.expires_in, bool(tokens.refresh_token), now,
                                         self.settings.refresh_lead_seconds,
                                         keep_alive=self.settings.keep_alive_refresh_seconds)
        self.connections.save_connected(
            connection_id, credentials=self.vault.seal(connection_id, sealed_fields(tokens)),
            expires_at=expires_at, refresh_due_at=due, provider_user=user,
            scopes=tokens.scope if tokens.scope is not None else self.settings.provider.scopes, now=now,
        )
        count("ConnectionsCreated")
        if self.events is not None:
            self.events.emit(CONNECTED, connection_id=connection_id, status="active", reason=None, at=now)
        logger.info("connection linked", extra={"connection_id": connection_id})
