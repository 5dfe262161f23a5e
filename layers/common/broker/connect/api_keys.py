"""API-key connections: the hosted key page and the backend's PUT route.

Both end the same way: the pod is parsed from what the person pasted (no outbound request
for anything that is not the template's own URL), the key is checked with Users/Me at the
URL rebuilt from the template, sealed under its own encryption-context purpose, and the
flow ends as a successful OAuth callback does (ConnectFlow.finish: session binding) or, for
the backend, links at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.connect import key_page
from broker.connect.flowstore import AuthState
from broker.connect.oauth_flow import ConnectFlow, link, with_query
from broker.credentials.insightly import (
    ApiAccessDenied,
    ApiKeyAuth,
    ApiKeyRejected,
    ApiUrlTemplate,
    InsightlyApi,
    check_api_key,
)
from broker.credentials.kinds import API_KEY
from broker.credentials.vault import API_KEY_PURPOSE
from broker.http import requests_in
from broker.platform.config import Settings
from broker.platform.errors import BrokerError, InvalidRequest, ProviderUnavailable
from broker.platform.observability import logger
from broker.store.connections import Connection, NewCredentials
from broker.store.labels import optional_tags
from broker.store.quota import optional_quota_group

MAX_REFUSED_ATTEMPTS = 5
# What the person can correct on the form: re-rendered with a message, the session kept.
REFUSED = (ApiKeyRejected, ApiAccessDenied)


@dataclass(frozen=True)
class PageAnswer:
    """The key page's answer: a page to show (with the CSRF cookie secret to set) or a redirect."""

    html: str | None = None
    cookie_secret: str | None = None
    location: str | None = None
    status: int = 200
    popup: bool = False  # with a location: end with the popup page (display=popup) instead of a 302


class ApiKeyConnect:
    def __init__(self, settings: Settings, *, flow: ConnectFlow, api: InsightlyApi,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.flow = flow
        self.api = api
        self.clock = clock
        self.template = ApiUrlTemplate(settings.insightly_api_url_template)

    def _now(self) -> int:
        return int(self.clock())

    def page_headers(self) -> dict[str, str]:
        """The key page's headers: its CSP lets the form end on the allowed return origins."""
        return key_page.response_headers(return_origins=tuple(sorted(self.settings.allowed_return_origins)))

    # -- checking a key ---------------------------------------------------------------------

    def check(self, connection_id: str, api_key: object, api_url: object) -> NewCredentials:
        """The key checked with Users/Me and sealed for the connection. Raises InvalidRequest
        (400, before any outbound request), ApiKeyRejected / ApiAccessDenied (422),
        QuotaExhausted (429) or ProviderUnavailable (503)."""
        pod = self.template.parse(api_url)
        key = check_api_key(api_key)
        base_url = self.template.base_url(pod)  # rebuilt from the template, never copied from input
        user, rate = self.api.users_me(base_url, ApiKeyAuth(key))
        now = self._now()
        interval = self.settings.api_key_check_seconds
        return NewCredentials(
            connection_id, credentials=self.flow.vault.seal(connection_id, {"api_key": key}, purpose=API_KEY_PURPOSE,
                                                         bound={"pod": pod}),
            refresh_due_at=now + interval if interval else None, provider_user=user, auth_mode=API_KEY,
            pod=pod, api_base_url=base_url, rate_limit=rate.as_dict() if rate else None, checked_at=now)

    # -- PUT /connections/{id}/api-key --------------------------------------------------------

    def connect_from_backend(self, connection_id: str, body: str | None) -> Connection:
        """A key the SaaS collected in its own UI: checked the same way, linked at once (the
        backend is the party session binding protects)."""
        self._require_mode()
        data = requests_in.json_object(body, allowed={"api_key", "api_url", "pod", "tags", "quota_group"},
                                    required={"api_key"})
        tags = optional_tags(data)  # before the key check: a bad tag costs no Insightly request
        quota_group = optional_quota_group(data)
        if ("api_url" in data) == ("pod" in data):
            raise InvalidRequest("give exactly one of api_url and pod", code="invalid_api_url")
        connection_id = requests_in.connection_id(connection_id)
        new = dataclasses.replace(self.check(connection_id, data["api_key"], data.get("api_url", data.get("pod"))),
                                  tags=tags, quota_group=quota_group)
        return link(new, connections=self.flow.connections, flows=self.flow.flows, events=self.flow.events,
                    revocation=bool(self.settings.provider.revocation_url), now=self._now())

    # -- the key page ---------------------------------------------------------------------------

    def page(self, raw_query: str | None) -> PageAnswer:
        """GET: the form for a live api_key session, and a CSRF secret for this browser."""
        params = requests_in.query_params(raw_query)
        token = requests_in.random_token(requests_in.single(params, "session", max_length=64), "session")
        self.flow.flows.peek_session(token, now=self._now(), auth_mode=API_KEY)
        return self._form(token)

    def submit(self, body: str | None, *, cookie_secret: str | None) -> PageAnswer:
        """POST: check the key. A key Insightly refuses re-renders the form and counts; the
        fifth refusal spends the session. Success spends it and ends the flow."""
        form = key_page.parse_form(body)
        token = form["session"]
        if not key_page.csrf_ok(cookie_secret, form["csrf"], token):
            raise InvalidRequest("this form was not opened in this browser; open the connect link again",
                                 code="csrf_mismatch")
        # The form's own checks first: a typo costs no attempt and no Insightly request.
        try:
            self.template.parse(form["api_url"])
            check_api_key(form["api_key"])
        except InvalidRequest as exc:
            if key_page.message_for(exc) is None:
                raise
            return self._form(token, exc, form["api_url"], status=exc.status)
        # One write reads the live session and takes an attempt before Insightly is called:
        # parallel submits get at most MAX_REFUSED_ATTEMPTS keys checked per session, whatever
        # their timing, and no key is tried without a live session.
        session, left = self.flow.flows.reserve_attempt(token, now=self._now(), limit=MAX_REFUSED_ATTEMPTS,
                                                        auth_mode=API_KEY)
        if not left:
            return self._too_many_attempts(token, session)
        attempt = session.attempts
        try:
            new = self.check(session.connection_id, form["api_key"], form["api_url"])
        except REFUSED as exc:
            logger.info("API key refused", extra={"connection_id": session.connection_id, "error": exc.code,
                                                  "attempts": attempt})
            if attempt >= MAX_REFUSED_ATTEMPTS:
                return self._too_many_attempts(token, session)
            return self._form(token, exc, form["api_url"], status=422)
        except (InvalidRequest, ProviderUnavailable) as exc:
            if key_page.message_for(exc) is None:
                raise
            # An Insightly outage or its quota: nothing was refused, nothing counts.
            self.flow.flows.release_attempt(token)
            return self._form(token, exc, form["api_url"], status=exc.status)
        session = self.flow.flows.consume_session(token, now=self._now(), auth_mode=API_KEY)
        auth = AuthState(session.connection_id, session.return_to, session.session_id, tags=session.tags,
                         display=session.display, quota_group=session.quota_group)
        return PageAnswer(location=self.flow.end(auth, lambda: self.flow.finish(auth, new)),
                          popup=auth.display == "popup")

    def _too_many_attempts(self, token: str, session) -> PageAnswer:
        """The session's last attempt was refused (or all were taken): spend it, end the flow.
        Of parallel submits, the one that spends it tells the SaaS; all go back with the error."""
        try:
            self.flow.flows.consume_session(token, now=self._now(), auth_mode=API_KEY)
        except InvalidRequest:
            pass  # spent already by a parallel submit, which told the SaaS
        else:
            self.flow.failed(session.connection_id, "too_many_attempts", tags=session.tags)
        return PageAnswer(location=with_query(session.return_to, status="error", error="too_many_attempts"),
                          popup=session.display == "popup")

    def _form(self, token: str, error: BrokerError | None = None, api_url: str = "", *,
              status: int = 200) -> PageAnswer:
        cookie_secret, csrf = key_page.new_csrf(token)
        message = key_page.message_for(error) if error is not None else None
        html = key_page.render(self.settings.app_name, token, csrf, message, api_url,
                               api_url_example=self.template.example())
        return PageAnswer(html=html, cookie_secret=cookie_secret, status=status)

    def _require_mode(self) -> None:
        if API_KEY not in self.settings.auth_modes:
            raise InvalidRequest("this deployment does not offer API-key connections", code="invalid_auth_mode")
