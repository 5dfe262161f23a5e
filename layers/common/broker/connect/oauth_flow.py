"""The connect flow: connect session -> authorize redirect -> callback -> stored connection.

Browser binding and PKCE: /oauth/authorize gives the browser a random secret in an
HttpOnly cookie scoped to the callback. The state item stores only a hash of it, and the
PKCE verifier is derived from it (HMAC over the state), so neither the verifier nor
anything that yields it is ever stored, and the authorize function needs no KMS.

Session binding (SessionBinding=confirm, the pattern of AWS AgentCore Identity's session
binding): a successful flow does not link the connection. Its sealed credentials wait as a
pending completion, and the browser returns to the SaaS with the connect session's id and a
fresh completion code. Only the SaaS backend, after checking that session id against the
signed-in user's own session, links it (POST /connect-sessions/{session_id}/complete). So
a connect link opened by someone else's browser links nothing for its creator.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError

from broker.connect.flowstore import AuthState, FlowStore
from broker.credentials.client_credentials import ClientCredentialSource
from broker.credentials.insightly import provider_user
from broker.credentials.kinds import OAUTH2, check_auth_mode
from broker.credentials.kinds.oauth2 import revoke_token_set
from broker.credentials.provider import ProviderClient
from broker.credentials.tokens import expiry_and_due, sealed_fields
from broker.credentials.vault import TokenVault
from broker.http import requests_in
from broker.http.api import CALLBACK_PATH, KEY_PAGE_PATH
from broker.http.popup import DISPLAYS
from broker.platform.config import Settings
from broker.platform.errors import (
    BrokerError,
    CredentialsUnreadable,
    InvalidRequest,
    ProviderRejected,
    ProviderUnavailable,
)
from broker.platform.lifecycle import CONNECT_FAILED, CONNECTED, LifecycleEvents
from broker.platform.observability import count, logger
from broker.store.connections import Connection, ConnectionStore, NewCredentials
from broker.store.labels import optional_tags
from broker.store.listing import iso
from broker.store.quota import optional_quota_group

# Provider error codes passed on to return_to as they are; anything else is "provider_error".
KNOWN_PROVIDER_ERRORS = frozenset({
    "access_denied", "invalid_request", "unauthorized_client", "unsupported_response_type",
    "invalid_scope", "server_error", "temporarily_unavailable", "consent_required", "login_required",
})
# The parameters the broker puts on return_to: any return_to already carries are replaced.
RETURN_PARAMS = frozenset({"status", "error", "connection_id", "session_id", "completion_code"})
COMPLETION_SECONDS = 600  # a pending completion is single use and lives this long
SWEEP_RESERVE_SECONDS = 15  # the expired-completion sweep stops with this much time left


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def pkce_verifier(browser_secret: str, state: str) -> str:
    # 43 characters of base64url: a valid RFC 7636 verifier, reproducible only with the cookie.
    return b64url(hmac.new(browser_secret.encode(), b"pkce-verifier:" + state.encode(), hashlib.sha256).digest())


def pkce_challenge(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode()).digest())


def with_query(url: str, **params: str) -> str:
    """url with params set: a value of the same name (or of ours) already there is replaced, so
    the SaaS never reads a status or id that return_to brought along."""
    parts = urlsplit(url)
    replaced = RETURN_PARAMS | set(params)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in replaced]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def link(result: NewCredentials, *, connections: ConnectionStore, flows: FlowStore,
         events: LifecycleEvents | None, revocation: bool, now: int) -> Connection:
    """Store a connection's new credentials (either kind), tell the SaaS, and retire what they
    replace. A replaced OAuth grant is handed to the scheduled sweep of expired completions,
    which revokes it: the function linking needs no Decrypt for that."""
    connection, replaced = connections.save_connected(result, now=now)
    count("ConnectionsCreated")
    if events is not None:
        events.emit(CONNECTED, connection_id=result.connection_id, status="active", reason=None, at=now,
                    tags=connection.tags, quota_group=connection.quota_group)
    logger.info("connection linked", extra={"connection_id": result.connection_id, "auth_mode": result.auth_mode})
    if revocation and replaced is not None and replaced.auth_mode == "oauth2" and replaced.credentials:
        try:
            flows.put_completion(secrets.token_urlsafe(32), session_id=secrets.token_urlsafe(32),
                                 pending=NewCredentials(replaced.connection_id, credentials=replaced.credentials),
                                 complete_by=now)
        except (ClientError, BotoCoreError) as fault:  # the new connection stands; the old grant stays live
            logger.warning("replaced grant not queued for revocation",
                           extra={"connection_id": result.connection_id, "exception_type": type(fault).__name__})
    return connection


@dataclass(frozen=True)
class Redirect:
    """Where a connect-flow step sends the browser, and what it sets there."""

    location: str
    browser_secret: str | None = None  # set on the authorize redirect: goes into the cookie
    popup: bool = False  # the flow's end for display=popup: a page posting to window.opener instead


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
        data = requests_in.json_object(body, allowed={"connection_id", "return_to", "auth_mode", "tags", "display",
                                                      "quota_group"},
                                       required={"connection_id", "return_to"})
        connection_id = requests_in.connection_id(data["connection_id"])
        return_to = requests_in.return_to(data["return_to"], self.settings.allowed_return_origins)
        auth_mode = check_auth_mode(data.get("auth_mode"), self.settings.auth_modes)
        tags = optional_tags(data)
        quota_group = optional_quota_group(data)
        display = data.get("display", "redirect")
        if display not in DISPLAYS:
            raise InvalidRequest(f"display must be one of: {', '.join(DISPLAYS)}", code="invalid_display")
        token, session_id = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires_at = self._now() + self.settings.flow_ttl_seconds
        self.flows.put_session(token, session_id=session_id, connection_id=connection_id, return_to=return_to,
                               expires_at=expires_at, auth_mode=auth_mode, tags=tags, display=display,
                               quota_group=quota_group)
        # The page of the kind: the provider's consent (through /oauth/authorize) or the key page.
        page = "/oauth/authorize" if auth_mode == OAUTH2 else KEY_PAGE_PATH
        # session_id is for the SaaS's own server-side session of this user, never for a browser.
        return {"connect_url": with_query(f"{base_url}{page}", session=token), "auth_mode": auth_mode,
                "session_id": session_id, "expires_at": iso(expires_at)}

    # -- GET /oauth/authorize --------------------------------------------------------------

    def begin_authorization(self, raw_query: str | None, *, base_url: str) -> Redirect:
        params = requests_in.query_params(raw_query)
        token = requests_in.random_token(requests_in.single(params, "session", max_length=64), "session")
        client_id = self.credentials.get().client_id  # before the session is spent: a bad secret burns nothing
        session = self.flows.consume_session(token, now=self._now(), auth_mode=OAUTH2)
        state, browser_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.flows.put_state(state, browser_secret=browser_secret, connection_id=session.connection_id,
                             return_to=session.return_to, expires_at=self._now() + self.settings.flow_ttl_seconds,
                             session_id=session.session_id, tags=session.tags, display=session.display,
                             quota_group=session.quota_group)
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
        # A malformed answer is refused while the state is unspent, so the real one still works.
        if requests_in.single(params, "error", required=False, max_length=128) is None:
            if not requests_in.single(params, "code", max_length=2048):
                raise InvalidRequest("the code parameter is required", code="missing_code")
        else:
            requests_in.single(params, "code", required=False, max_length=2048)
        auth = self.flows.consume_state(state, browser_secret=browser_secret, now=self._now())
        return Redirect(self.end(auth, lambda: self._link(params, auth, verifier=pkce_verifier(browser_secret, state),
                                                          redirect_uri=base_url + CALLBACK_PATH)),
                        popup=auth.display == "popup")

    def end(self, auth: AuthState, step: Callable[[], str]) -> str:
        """Run what follows a spent state or session (the OAuth callback, the key page): from
        then on every outcome is a redirect to return_to, an error code included."""
        try:
            return step()
        except BrokerError as caught:
            exc = caught
        except Exception as fault:  # noqa: BLE001 - the state is spent: whatever failed, answer with a redirect
            # The type only: AWS and library error text may quote what was sent.
            storage = isinstance(fault, (ClientError, BotoCoreError))
            exc = BrokerError("the connection could not be stored" if storage else "the broker hit an unexpected error",
                              code="storage_unavailable" if storage else "internal_error")
            logger.error("connection not stored",
                         extra={"connection_id": auth.connection_id, "exception_type": type(fault).__name__})
        logger.warning("connection failed", extra={"connection_id": auth.connection_id, "error": exc.code})
        self.failed(auth.connection_id, exc.code, tags=auth.tags)
        return with_query(auth.return_to, status="error", error=exc.code)

    def failed(self, connection_id: str, code: str, *, tags: dict[str, str] | None) -> None:
        """A connect attempt ended in an error: counted, and a ConnectFailed event, so the SaaS
        sees it even when the browser never comes back to return_to."""
        count("ConnectionsFailed")
        if self.events is not None:
            self.events.emit(CONNECT_FAILED, connection_id=connection_id, status="failed", reason=code,
                             at=self._now(), tags=tags)

    def _link(self, params: dict[str, list[str]], auth: AuthState, *, verifier: str, redirect_uri: str) -> str:
        connection_id = auth.connection_id
        error = requests_in.single(params, "error", required=False, max_length=128)
        if error is not None:
            raise BrokerError("the provider did not authorize",
                              code=error if error in KNOWN_PROVIDER_ERRORS else "provider_error")
        issuer = requests_in.single(params, "iss", required=False, max_length=512)
        if issuer is not None and self.settings.provider.issuer and issuer != self.settings.provider.issuer:
            # RFC 9207: a response from another authorization server (mix-up attack).
            raise BrokerError("the authorization response came from another issuer", code="issuer_mismatch")
        code = requests_in.single(params, "code", max_length=2048)
        if self.settings.session_binding == "confirm" and auth.session_id is None:
            # Started before session binding was turned on: nobody could confirm it.
            raise BrokerError("the connect session has no session id; start again", code="session_expired")

        try:  # the code is single use: one exchange, retried only after a client auth refusal
            tokens = self.credentials.call(lambda creds: self.provider.exchange_code(
                creds, code=code, redirect_uri=redirect_uri,
                code_verifier=verifier if self.settings.provider.use_pkce else None))
            user = provider_user(self.provider.fetch_user(tokens.access_token))
        except ProviderRejected as exc:
            raise BrokerError("the provider refused the authorization code", code="token_exchange_failed") from exc
        except ProviderUnavailable as exc:
            raise BrokerError("the provider is unavailable", code="provider_unavailable") from exc

        expires_at, due = expiry_and_due(tokens.expires_in, bool(tokens.refresh_token), self._now(),
                                         self.settings.refresh_lead_seconds,
                                         keep_alive=self.settings.keep_alive_refresh_seconds)
        return self.finish(auth, NewCredentials(
            connection_id, credentials=self.vault.seal(connection_id, sealed_fields(tokens)),
            expires_at=expires_at, refresh_due_at=due, provider_user=user,
            scopes=tokens.scope if tokens.scope is not None else self.settings.provider.scopes,
        ))

    # -- the end of every successful flow ------------------------------------------------------

    def finish(self, auth: AuthState, result: NewCredentials) -> str:
        """Where the browser goes after a flow succeeded (OAuth callback; the API-key page).

        result.credentials are already sealed for the connection. With SessionBinding=none the
        connection is linked now; with confirm it waits for the SaaS backend to complete it.
        """
        if auth.tags is not None:  # given on the connect session
            result = dataclasses.replace(result, tags=auth.tags)
        if auth.quota_group is not None:
            result = dataclasses.replace(result, quota_group=auth.quota_group)
        if self.settings.session_binding == "none":
            self._save(result)
            return with_query(auth.return_to, status="connected", connection_id=auth.connection_id)
        completion_code = secrets.token_urlsafe(32)  # only this browser ever sees it
        self.flows.put_completion(completion_code, session_id=auth.session_id, pending=result,
                                  complete_by=self._now() + COMPLETION_SECONDS)
        count("ConnectionsPending")
        logger.info("connection pending completion", extra={"connection_id": auth.connection_id})
        return with_query(auth.return_to, status="pending", session_id=auth.session_id,
                          completion_code=completion_code)

    # -- POST /connect-sessions/{session_id}/complete --------------------------------------------

    def complete_session(self, session_id: str, body: str | None) -> Connection:
        """The SaaS backend confirms the flow of its own user's session: link the connection."""
        session_id = requests_in.random_token(session_id, "session_id")
        data = requests_in.json_object(body, allowed={"completion_code"}, required={"completion_code"})
        code = data["completion_code"]
        if not isinstance(code, str) or not requests_in.RANDOM_TOKEN.fullmatch(code):
            raise InvalidRequest("unknown or already used completion code", code="invalid_completion_code")
        return self._save(self.flows.consume_completion(code, session_id=session_id, now=self._now()))

    def _save(self, result: NewCredentials) -> Connection:
        return link(result, connections=self.connections, flows=self.flows, events=self.events,
                    revocation=bool(self.settings.provider.revocation_url), now=self._now())

    # -- the scheduled run: pending completions nobody completed -----------------------------

    def sweep_expired_completions(self, *, seconds_left: Callable[[], float]) -> dict[str, int]:
        """Revoke the grant of every expired pending completion (when revocation is configured),
        then delete it. A completion whose revocation failed stays for the next run."""
        now, swept, failed = self._now(), 0, 0
        for flow_key, item in self.flows.expired_completions(now=now):
            if seconds_left() < SWEEP_RESERVE_SECONDS:
                break
            pending = None
            try:
                pending = self.flows.open_expired(item)
                if pending is None:
                    continue
                if self.settings.provider.revocation_url:
                    self._revoke_pending(pending)
                self.flows.discard_expired_completion(flow_key, now=now)
                swept += 1
            except Exception as fault:  # noqa: BLE001 - one bad item must not stop the sweep
                failed += 1
                logger.warning("expired completion not swept; retried next run",
                               extra={"connection_id": pending.connection_id if pending else None,
                                      "exception_type": type(fault).__name__,
                                      "error": getattr(fault, "code", None)})
        if swept or failed:
            count("CompletionsExpired", swept)
            logger.info("expired completions swept", extra={"swept": swept, "not_swept": failed})
        return {"swept": swept, "not_swept": failed}

    def _revoke_pending(self, pending: NewCredentials) -> None:
        if pending.auth_mode != OAUTH2:
            return  # an API key has nothing to revoke at Insightly (the user regenerates it)
        try:
            sealed = self.vault.open(pending.connection_id, pending.credentials)
        except CredentialsUnreadable:
            return  # nothing anyone could use: just delete it
        revoke_token_set(self.provider, self.credentials, sealed)  # raises: retried by the next sweep
