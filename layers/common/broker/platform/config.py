"""Settings read once from the environment the template gives each function."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from broker.platform.errors import ConfigurationError


def origin_of(scheme: str, host: str, port: int | None) -> str:
    """scheme://host[:port], lower-case, default port left out: the form origins compare in."""
    default_port = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host.lower()}" + (f":{port}" if port and port != default_port else "")


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigurationError("ALLOWED_RETURN_ORIGINS: one entry is not an http(s) origin")
    return origin_of(parts.scheme, parts.hostname, port)


# What a container of the local stack calls this machine's loopback (`sam local`).
_LOCAL_HOSTS = frozenset({"localhost", "host.docker.internal"})


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # the resolver also takes 127.1, 0x7f.0.0.1 and 2130706433 as IPv4 addresses
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _provider_url(name: str, url: str, *, allow_loopback_http: bool) -> str:
    """An https URL of a public host: the broker sends the client secret and tokens there, so
    no other scheme, no private, loopback, link-local or reserved address (e.g. the instance
    metadata service), no user info, no fragment. The local stack and tests may allow http
    to this machine (ALLOW_LOOPBACK_HTTP_PROVIDER); nothing else."""
    refused = ConfigurationError(f"{name} must be an https URL of a public host, without user info or fragment")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a garbage port
    except ValueError:
        raise refused from None
    host = (parts.hostname or "").rstrip(".")
    if (not host or parts.username is not None or parts.password is not None or parts.fragment
            or "\\" in url or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url)):
        raise refused
    ip = _ip_literal(host)
    local = host in _LOCAL_HOSTS or host.endswith(".localhost") or (ip is not None and ip.is_loopback)
    if allow_loopback_http and local and parts.scheme in ("http", "https"):
        return url
    if parts.scheme != "https" or local or (ip is not None and (not ip.is_global or ip.is_multicast)):
        raise refused
    return url


# No generated __eq__/__repr__: nothing compares or prints it, and each generated method is an
# exec() at import, in every cold start (docs/benchmarks.md, cold start). The docstring spares
# the inspect.signature() dataclass otherwise runs to write one.
@dataclass(frozen=True, eq=False, repr=False)
class ProviderSettings:
    """Where and how the broker talks OAuth to the provider (PROVIDER_* variables)."""

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


@dataclass(frozen=True, eq=False, repr=False)  # as ProviderSettings
class Settings:
    """This function's configuration, from the environment the template gives it."""

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
    # Credential kinds this deployment offers (AuthModes); the first is the default.
    auth_modes: tuple[str, ...] = ("oauth2", "api_key")
    app_name: str = "this app"  # "Connect <AppName> to Insightly" on the key page
    insightly_api_url_template: str = "https://api.{pod}.insightly.com/v3.1"
    # How often an API key is checked with Users/Me (each check spends one of the account's
    # daily requests); 0 turns checks off.
    api_key_check_seconds: int = 86400
    # The proxy answers 429 itself this long after Insightly's 429 when it sent no Retry-After.
    quota_backoff_seconds: int = 900
    # GET /connections: the one tag key the tag-index serves ("" = off) and the cursor's HMAC key.
    list_tag_key: str = ""
    list_cursor_secret_arn: str = ""
    # Background calls (X-Broker-Priority: background, scheduled key checks) stop once a quota
    # group's last observed remaining is at or under this share of its limit; 0 = no reserve.
    background_quota_reserve_percent: int = 20
    # "execute-api.<region>.<url suffix>" from the template: with the API id API Gateway puts
    # in every event, this stack's own API URL when PublicBaseUrl is empty.
    api_domain_suffix: str = ""

    def public_url(self, api_id: str) -> str:
        """The public URL of this API (redirect_uri, connect links, cookie paths): PublicBaseUrl,
        else this stack's own execute-api URL. Never the request's Host: HTTP API copies that
        into requestContext.domainName, so a caller could choose where the callback points."""
        if self.public_base_url:
            return self.public_base_url
        if not self.api_domain_suffix or not re.fullmatch(r"[a-z0-9]{1,32}", api_id or ""):
            raise ConfigurationError("PUBLIC_BASE_URL or API_DOMAIN_SUFFIX is required to build the callback URL")
        return f"https://{api_id}.{self.api_domain_suffix}"

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
                raise ConfigurationError(f"{name} must be true or false")
            return value == "true"

        def number(name: str, default: str) -> int:
            try:
                return int(env.get(name, default))
            except ValueError as exc:
                raise ConfigurationError(f"{name} must be an integer") from exc

        method = env.get("PROVIDER_TOKEN_AUTH_METHOD", "client_secret_post").strip()
        if method not in ("client_secret_basic", "client_secret_post"):
            raise ConfigurationError("PROVIDER_TOKEN_AUTH_METHOD must be client_secret_basic or client_secret_post")
        origins = frozenset(
            _origin(o) for o in env.get("ALLOWED_RETURN_ORIGINS", "").split(",") if o.strip()
        )
        binding = env.get("SESSION_BINDING", "confirm").strip()
        if binding not in ("confirm", "none"):
            raise ConfigurationError("SESSION_BINDING must be confirm or none")
        shards = number("DUE_INDEX_SHARDS", "8")
        if not 1 <= shards <= 64:
            raise ConfigurationError("DUE_INDEX_SHARDS must be between 1 and 64")
        loopback_http = flag("ALLOW_LOOPBACK_HTTP_PROVIDER", "false")
        modes = tuple(m.strip() for m in env.get("AUTH_MODES", "oauth2,api_key").split(",") if m.strip())
        if not modes or len(set(modes)) != len(modes) or not set(modes) <= {"oauth2", "api_key"}:
            raise ConfigurationError("AUTH_MODES must list oauth2 and/or api_key, each once")
        api_url_template = env.get("INSIGHTLY_API_URL_TEMPLATE", "https://api.{pod}.insightly.com/v3.1").strip()
        # The host of every API-key call: held to the same rules as the provider's URLs.
        _provider_url("INSIGHTLY_API_URL_TEMPLATE", api_url_template.replace("{pod}", "na1"),
                      allow_loopback_http=loopback_http)
        check_seconds = number("API_KEY_CHECK_SECONDS", "86400")
        if check_seconds < 0:
            raise ConfigurationError("API_KEY_CHECK_SECONDS must be 0 or more")
        app_name = " ".join(env.get("APP_NAME", "this app").split())[:80] or "this app"
        quota_backoff = number("QUOTA_BACKOFF_SECONDS", "900")
        reserve_percent = number("BACKGROUND_QUOTA_RESERVE_PERCENT", "20")
        if not 0 <= reserve_percent <= 90:
            raise ConfigurationError("BACKGROUND_QUOTA_RESERVE_PERCENT must be between 0 and 90")
        if not 1 <= quota_backoff <= 86400:
            raise ConfigurationError("QUOTA_BACKOFF_SECONDS must be between 1 and 86400")

        def provider_url(name: str, *, required: bool = True) -> str:
            value = need(name) if required else env.get(name, "").strip()
            return _provider_url(name, value, allow_loopback_http=loopback_http) if value else ""

        return cls(
            connections_table=need("CONNECTIONS_TABLE"),
            flow_table=need("FLOW_TABLE"),
            token_key_id=env.get("TOKEN_KEY_ID", "").strip(),
            client_secret_arn=need("CLIENT_SECRET_ARN"),
            provider=ProviderSettings(
                authorize_url=provider_url("PROVIDER_AUTHORIZE_URL"),
                token_url=provider_url("PROVIDER_TOKEN_URL"),
                api_base_url=provider_url("PROVIDER_API_BASE_URL"),
                userinfo_path=env.get("PROVIDER_USER_INFO_PATH", "/Users/Me"),
                revocation_url=provider_url("PROVIDER_REVOCATION_URL", required=False),
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
            auth_modes=modes,
            app_name=app_name,
            insightly_api_url_template=api_url_template,
            api_key_check_seconds=check_seconds,
            quota_backoff_seconds=quota_backoff,
            list_tag_key=env.get("LIST_TAG_KEY", "").strip(),
            list_cursor_secret_arn=env.get("LIST_CURSOR_SECRET_ARN", "").strip(),
            background_quota_reserve_percent=reserve_percent,
            api_domain_suffix=env.get("API_DOMAIN_SUFFIX", "").strip().strip("."),
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The settings of this container, validated on first use and then reused."""
    return Settings.from_env()
