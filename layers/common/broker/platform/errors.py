"""Domain errors. Each carries the HTTP status and machine code the API answers with.

Messages are written for the SaaS developer and never contain a token, code or secret.
"""

from __future__ import annotations


class BrokerError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class ConfigurationError(BrokerError):
    """A setting of the deployment is wrong. The message names the setting, never its value;
    callers get only the code (http.api)."""

    status = 500
    code = "misconfigured"


class InvalidRequest(BrokerError):
    status = 400
    code = "invalid_request"


class NotFound(BrokerError):
    status = 404
    code = "not_found"


class Conflict(BrokerError):
    status = 409
    code = "conflict"


class ProviderUnavailable(BrokerError):
    """A transient fault at the provider: 429, 5xx, timeout, connection error."""

    status = 503
    code = "provider_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ProviderRejected(BrokerError):
    """The provider answered with an OAuth error (invalid_grant, invalid_client, ...)."""

    status = 502
    code = "provider_rejected"

    def __init__(self, message: str, *, oauth_error: str):
        super().__init__(message)
        self.oauth_error = oauth_error


class CredentialsUnreadable(BrokerError):
    """KMS refused to decrypt: the ciphertext does not belong to this connection."""

    status = 409
    code = "credentials_unreadable"


class VaultUnavailable(BrokerError):
    status = 503
    code = "vault_unavailable"


class NewerSchemaVersion(BrokerError):
    """An item written by a newer version of the broker (the stack was rolled back): refused
    and left unchanged, so the newer code finds it intact when it is deployed again."""

    status = 409
    code = "unsupported_schema_version"
