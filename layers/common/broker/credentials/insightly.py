"""What the broker knows about Insightly's documented API (v3.1): per-pod hosts, its two
ways to authenticate a request, the rate-limit headers on every answer, and Users/Me.

An API-key connection is only as safe as the host its key is sent to, so the host is never
taken from input: ApiUrlTemplate.parse() reduces what a person pasted to a pod, and the
base URL is always rebuilt from the configured template.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.platform.errors import BrokerError, ConfigurationError, InvalidRequest, ProviderUnavailable
from broker.platform.outbound import HttpClient, parse_retry_after
from broker.store.quota import RateLimit

if TYPE_CHECKING:
    import requests

DEFAULT_API_URL_TEMPLATE = "https://api.{pod}.insightly.com/v3.1"
POD = re.compile(r"[a-z0-9]{2,10}")
MAX_API_URL_INPUT = 512
# Printable ASCII without the space: checked before anything is lower-cased, so a look-alike
# such as the Kelvin sign (which lower-cases to "k") never becomes a valid pod.
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_VERSION_SUFFIX = re.compile(r"/v\d+(?:\.\d+)*$")
_API_KEY = re.compile(r"[\x21-\x39\x3b-\x7e]{8,256}")  # printable ASCII, no ":" (Basic user name)

INVALID_API_URL_MESSAGE = ("api_url must be the API URL Insightly shows under User Settings → API "
                           "(such as https://api.na1.insightly.com/v3.1/) or just its pod (such as na1)")


class ApiKeyRejected(BrokerError):
    """Insightly answered 401: the key is wrong, or was revoked by "Generate New API Key"."""

    status = 422
    code = "api_key_rejected"


class ApiAccessDenied(BrokerError):
    """Insightly answered 403: the key is known but this user may not use the API."""

    status = 422
    code = "api_access_denied"


class QuotaExhausted(ProviderUnavailable):
    """Insightly answered 429: the account's daily limit is used up. Transient, like any
    ProviderUnavailable (nothing is marked), but answered as 429 provider_quota_exhausted."""

    status = 429
    code = "provider_quota_exhausted"


# -- pod and host ------------------------------------------------------------------------------


class ApiUrlTemplate:
    """The InsightlyApiUrlTemplate parameter: a URL with one `{pod}` placeholder."""

    def __init__(self, template: str = DEFAULT_API_URL_TEMPLATE):
        template = template.strip().rstrip("/")
        if (template.count("{pod}") != 1 or not re.match(r"https?://[^/{}]", template)
                or not _PRINTABLE_ASCII.fullmatch(template.replace("{pod}", "x"))
                or re.search(r"[?#{}]", template.replace("{pod}", ""))):
            raise ConfigurationError("InsightlyApiUrlTemplate must be an http(s) URL with one {pod} "
                                     "and no query, such as https://api.{pod}.insightly.com/v3.1")
        self.template = template
        scheme, _, rest = template.lower().partition("://")
        # Every accepted spelling, as one pattern over the lower-cased input: the template's
        # URL with or without the scheme, the version segment and the trailing slash.
        forms = sorted({prefix + path for path in (rest, _VERSION_SUFFIX.sub("", rest))
                        for prefix in (f"{scheme}://", "")})
        alternatives = "|".join(
            re.escape(form).replace(re.escape("{pod}"), f"(?P<pod{i}>[a-z0-9]{{2,10}})") + "/?"
            for i, form in enumerate(forms))
        self._url = re.compile(alternatives)

    def __repr__(self) -> str:
        return f"ApiUrlTemplate({self.template!r})"

    def base_url(self, pod: str) -> str:
        if not isinstance(pod, str) or not POD.fullmatch(pod):
            raise InvalidRequest(INVALID_API_URL_MESSAGE, code="invalid_api_url")
        return self.template.replace("{pod}", pod)

    def example(self, pod: str = "na1") -> str:
        """An API URL as the key page suggests it (no scheme), one that parse() accepts: what
        Insightly shows for the default template, the local stand-in's own URL locally."""
        return self.base_url(pod).split("://", 1)[1] + "/"

    def parse(self, user_input: Any) -> str:
        """The pod in a pasted API URL or a bare pod; InvalidRequest invalid_api_url otherwise.
        The message never repeats the input."""
        if not isinstance(user_input, str) or len(user_input) > MAX_API_URL_INPUT:
            raise InvalidRequest(INVALID_API_URL_MESSAGE, code="invalid_api_url")
        value = user_input.strip()  # a paste often brings a newline; whitespace inside does not pass below
        if not _PRINTABLE_ASCII.fullmatch(value):
            raise InvalidRequest(INVALID_API_URL_MESSAGE, code="invalid_api_url")
        value = value.lower()
        if POD.fullmatch(value):
            return value
        found = self._url.fullmatch(value)
        if found is None:
            raise InvalidRequest(INVALID_API_URL_MESSAGE, code="invalid_api_url")
        return next(pod for pod in found.groupdict().values() if pod)


def check_api_key(value: Any) -> str:
    """The key as Insightly can take it in a Basic user name; InvalidRequest otherwise (no echo)."""
    key = value.strip() if isinstance(value, str) else ""
    if not _API_KEY.fullmatch(key):
        raise InvalidRequest("api_key must be the API key Insightly shows under User Settings → API",
                             code="invalid_api_key")
    return key


# -- authenticating a request ------------------------------------------------------------------


# Plain callables rather than requests.auth.AuthBase subclasses: requests takes any callable as
# `auth`, and this module is loaded by routes that never call out (no import of requests).
Auth = Callable[[Any], Any]  # a requests auth: takes the request, sets its headers, returns it


class BearerAuth:
    """An OAuth access token (RFC 6750)."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:  # never print a token
        return "BearerAuth(...)"


class ApiKeyAuth:
    """Insightly's own scheme: the API key as the Basic user name, an empty password."""

    def __init__(self, api_key: str):
        self.username, self.password = api_key, ""

    def __call__(self, request):
        # What requests' HTTPBasicAuth sends: latin-1, base64 of "user:password".
        basic = base64.b64encode(f"{self.username}:{self.password}".encode("latin1")).decode("ascii")
        request.headers["Authorization"] = f"Basic {basic}"
        return request

    def __repr__(self) -> str:  # never print a key
        return "ApiKeyAuth(...)"


class _Headers:
    """The part of a request an auth above writes to."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}


def authorization_header(auth: Auth) -> str:
    """The whole Authorization header value the auth would send (`Bearer …` or `Basic …`):
    what /token hands a backend so it calls Insightly the same way for both kinds."""
    return auth(_Headers()).headers["Authorization"]


# -- quota -------------------------------------------------------------------------------------


def provider_user(raw: dict) -> dict[str, str]:
    """The few fields of Insightly's Users/Me worth keeping (no credential, nothing large)."""
    name = " ".join(str(raw[k]) for k in ("FIRST_NAME", "LAST_NAME") if raw.get(k))
    user = {"id": raw.get("USER_ID"), "email": raw.get("EMAIL_ADDRESS"), "name": name or None}
    return {k: str(v)[:256] for k, v in user.items() if v not in (None, "")}


# -- the API -----------------------------------------------------------------------------------


class InsightlyApi(HttpClient):
    """Calls to Insightly's API with a credential given per call. Every error raised by a
    call carries `rate_limit` (the RateLimit of the answer, or None) so the caller can
    record the quota whatever happened."""

    who = "Insightly"

    def __init__(self, *, session: requests.Session | None = None, timeout: tuple[float, float] = (3.05, 8.0),
                 clock: Callable[[], float] = time.time):
        super().__init__(timeout=timeout, session=session)
        self.clock = clock

    def users_me(self, api_base_url: str, auth: Auth) -> tuple[dict[str, str], RateLimit | None]:
        """Who the credential belongs to (id, email, name) and the quota the answer showed."""
        response = self._send("GET", api_base_url.rstrip("/") + "/Users/Me", auth=auth)
        rate = RateLimit.from_headers(response.headers, now=self.clock())
        self._raise_for_status(response, rate)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._with_rate(ProviderUnavailable("Insightly's Users/Me answer is not a JSON object"), rate)
        return provider_user(body), rate

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            return super()._send(method, url, **kwargs)
        except ProviderUnavailable as error:
            raise self._with_rate(error, None) from None

    def _raise_for_status(self, response: requests.Response, rate: RateLimit | None) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 401:
            error: BrokerError = ApiKeyRejected("Insightly did not accept this API key")
        elif status == 403:
            error = ApiAccessDenied("Insightly refused API access for this user")
        elif status == 429:
            error = QuotaExhausted("Insightly's daily API limit for this account is used up",
                                   retry_after=retry_after)
        elif status >= 500:
            error = ProviderUnavailable(f"Insightly answered {status}", retry_after=retry_after)
        else:
            error = ProviderUnavailable(f"Insightly gave an unexpected answer ({status})")
        raise self._with_rate(error, rate)

    @staticmethod
    def _with_rate(error: BrokerError, rate: RateLimit | None) -> BrokerError:
        error.rate_limit = rate
        return error
