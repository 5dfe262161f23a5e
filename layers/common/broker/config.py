"""Settings read once from the environment the template gives each function."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .requests_in import origin_of


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigurationError(f"ALLOWED_RETURN_ORIGINS: not an http(s) origin: {url!r}")
    return origin_of(parts.scheme, parts.hostname, port)


@dataclass(frozen=True)
class ProviderSettings:
    authorize_url: str
    token_url: str
    api_base_url: str
    userinfo_path: str
    revocation_url: str
    scopes: str
    use_pkce: bool
    token_auth_method: str  # client_secret_basic | client_secret_post
    issuer: str

    @property
    def userinfo_url(self) -> str:
        return self.api_base_url.rstrip("/") + "/" + self.userinfo_path.lstrip("/")


@dataclass(frozen=True)
class Settings:
    connections_table: str
    flow_table: str
    token_key_id: str
    client_secret_arn: str
    provider: ProviderSettings
    allowed_return_origins: frozenset[str]
    refresh_lead_seconds: int
    due_index_shards: int
    public_base_url: str
    cookie_secure: bool
    refresh_queue_url: str = ""
    event_bus_name: str = ""
    # Refresh at least this often (tokens without expires_in, refresh tokens that expire unused).
    keep_alive_refresh_seconds: int = 604800
    reauth_after_failing_days: int = 3
    # A token expiring within this many seconds is refreshed before it is handed out.
    token_skew_seconds: int = 60
    flow_ttl_seconds: int = 600
    # Longer than a provider call with its retries, shorter than the refresh functions'
    # timeouts (RefreshFunction 25 s, RefreshWorkerFunction 30 s).
    lease_seconds: int = 20
    http_connect_timeout: float = 3.05
    http_read_timeout: float = 6.0
    # confirm: a finished flow waits for the SaaS backend to complete it (see connect_flow).
    session_binding: str = "confirm"

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ = os.environ) -> Settings:
        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigurationError(f"environment variable {name} is required")
            return value

        def flag(name: str, default: str) -> bool:
            value = env.get(name, default).strip().lower()
            if value not in ("true", "false"):
                raise ConfigurationError(f"{name} must be true or false, not {value!r}")
            return value == "true"

        def number(name: str, default: str) -> int:
            try:
                return int(env.get(name, default))
            except ValueError as exc:
                raise ConfigurationError(f"{name} must be an integer") from exc

        method = env.get("PROVIDER_TOKEN_AUTH_METHOD", "client_secret_post").strip()
        if method not in ("client_secret_basic", "client_secret_post"):
            raise ConfigurationError(f"PROVIDER_TOKEN_AUTH_METHOD {method!r} is not supported")
        origins = frozenset(
            _origin(o) for o in env.get("ALLOWED_RETURN_ORIGINS", "").split(",") if o.strip()
        )
        binding = env.get("SESSION_BINDING", "confirm").strip()
        if binding not in ("confirm", "none"):
            raise ConfigurationError("SESSION_BINDING must be confirm or none")
        shards = number("DUE_INDEX_SHARDS", "8")
        if not 1 <= shards <= 64:
            raise ConfigurationError("DUE_INDEX_SHARDS must be between 1 and 64")
        return cls(
            connections_table=need("CONNECTIONS_TABLE"),
            flow_table=need("FLOW_TABLE"),
            token_key_id=env.get("TOKEN_KEY_ID", "").strip(),
            client_secret_arn=need("CLIENT_SECRET_ARN"),
            provider=ProviderSettings(
                authorize_url=need("PROVIDER_AUTHORIZE_URL"),
                token_url=need("PROVIDER_TOKEN_URL"),
                api_base_url=need("PROVIDER_API_BASE_URL"),
                userinfo_path=env.get("PROVIDER_USER_INFO_PATH", "/Users/Me"),
                revocation_url=env.get("PROVIDER_REVOCATION_URL", "").strip(),
                scopes=" ".join(env.get("PROVIDER_SCOPES", "").split()),
                use_pkce=flag("PROVIDER_USE_PKCE", "true"),
                token_auth_method=method,
                issuer=env.get("PROVIDER_ISSUER", "").strip(),
            ),
            allowed_return_origins=origins,
            refresh_lead_seconds=number("REFRESH_LEAD_SECONDS", "300"),
            due_index_shards=shards,
            public_base_url=env.get("PUBLIC_BASE_URL", "").strip().rstrip("/"),
            cookie_secure=flag("COOKIE_SECURE", "true"),
            refresh_queue_url=env.get("REFRESH_QUEUE_URL", "").strip(),
            event_bus_name=env.get("EVENT_BUS_NAME", "").strip(),
            keep_alive_refresh_seconds=number("KEEP_ALIVE_REFRESH_SECONDS", "604800"),
            reauth_after_failing_days=number("REAUTH_AFTER_FAILING_DAYS", "3"),
            session_binding=binding,
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The settings of this container, validated on first use and then reused."""
    return Settings.from_env()
