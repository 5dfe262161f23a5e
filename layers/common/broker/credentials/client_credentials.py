"""The OAuth client id and secret, read from Secrets Manager and cached between invocations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from broker.platform import aws
from broker.platform.errors import ConfigurationError, ProviderRejected

T = TypeVar("T")

# Long enough that warm invocations make no Secrets Manager call, short enough that a
# rotated secret is picked up without a redeploy (invalid_client also forces a refetch).
CACHE_SECONDS = 300


@dataclass(frozen=True, repr=False)  # its own __repr__ below hides the secret
class ClientCredentials:
    """The OAuth client id and secret, from the Secrets Manager secret."""

    client_id: str
    client_secret: str

    def __repr__(self) -> str:  # keep the secret out of any accidental log line
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret=***)"


class ClientCredentialSource:
    def __init__(self, secret_arn: str, fetch=aws.get_secret):
        self._arn = secret_arn
        self._fetch = fetch

    def get(self, *, force_fetch: bool = False) -> ClientCredentials:
        value = self._fetch(self._arn, transform="json", max_age=CACHE_SECONDS, force_fetch=force_fetch)
        if not isinstance(value, dict) or not value.get("client_id") or not value.get("client_secret"):
            raise ConfigurationError('the client secret must be JSON {"client_id": ..., "client_secret": ...}')
        return ClientCredentials(str(value["client_id"]), str(value["client_secret"]))

    def call(self, provider_call: Callable[[ClientCredentials], T]) -> T:
        """Run a provider call with the client credentials. On invalid_client the secret may
        have been rotated since it was cached: fetch it once more and, if it changed, retry
        once. Token refresh, revocation and the code exchange all go through here."""
        creds = self.get()
        try:
            return provider_call(creds)
        except ProviderRejected as exc:
            if exc.oauth_error != "invalid_client":
                raise
            fetched = self.get(force_fetch=True)
            if fetched == creds:
                raise  # the stored secret is the one just refused: retrying cannot help
        return provider_call(fetched)
