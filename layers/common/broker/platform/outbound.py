"""HttpClient: how the broker makes every outbound HTTP call, to the OAuth server and to Insightly.

One requests Session per container (keep-alive across warm invocations), JSON accepted, no
redirects followed (a credential goes to the configured host and nowhere else), and
timeouts cut to what is left of the invocation, so no call outlives the function.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from broker.platform import deadline
from broker.platform.errors import ProviderUnavailable

if TYPE_CHECKING:
    import requests

USER_AGENT = "insightly-connect/0.1"
# Kept back from the invocation's end to record the outcome of a call; and the least time
# worth starting a call with.
RESERVE_SECONDS, MIN_CALL_SECONDS = 1.0, 0.5
MAX_RETRY_AFTER = 3600  # a server asking for a longer pause is not believed past an hour
_SECONDS = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also takes "²"


def parse_retry_after(value: str | None, *, now: datetime | None = None, cap: int = MAX_RETRY_AFTER) -> int | None:
    """Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP date, as seconds from now,
    capped (an hour unless told); None for anything else."""
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return min(int(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    delay = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return min(max(int(delay), 0), cap)


class HttpClient:
    who = "the provider"  # named in the errors' messages

    def __init__(self, *, timeout: tuple[float, float] = (3.05, 8.0), session: requests.Session | None = None):
        self._timeout = timeout
        self._session = session

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            # Imported on the first call out, not with the module: routes that never call out
            # (authorize, a fresh token, the key form) load no requests (docs/benchmarks.md, cold start).
            # The functions whose every invocation calls out import it in their handler module.
            from http.cookiejar import DefaultCookiePolicy

            import requests

            self._session = requests.Session()
            self._session.headers["User-Agent"] = USER_AGENT
            # No cookie jar: the session serves every connection in a warm container, so a
            # cookie one tenant's answer set would go out with the next tenant's call.
            self._session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        return self._session

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        budget = deadline.seconds_left() - RESERVE_SECONDS
        if budget < MIN_CALL_SECONDS:
            raise ProviderUnavailable(f"no time left in this invocation to call {self.who}")
        connect, read = self._timeout
        import requests  # loaded by the session; named here for its exceptions

        try:
            return self.session.request(method, url, headers=headers, timeout=(min(connect, budget), min(read, budget)),
                                        allow_redirects=False, **kwargs)
        except requests.Timeout:
            error = ProviderUnavailable(f"{self.who} did not answer in time")
        except requests.RequestException:
            error = ProviderUnavailable(f"{self.who} could not be reached")
        # Raised outside the except block: the library's exception (its text may hold the URL
        # and what was sent) is not chained onto ours.
        raise error
