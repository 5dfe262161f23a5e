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
    # confirm: a finished flow waits for the SaaS backend to complete it (see connect.oauth_flow).
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
        """Every variable checked here, once; an error names the variable, never its value."""
        read = _Environment(env)
        loopback_http = read.flag("ALLOW_LOOPBACK_HTTP_PROVIDER", "false")
        return cls(
            connections_table=read.need("CONNECTIONS_TABLE"),
            flow_table=read.need("FLOW_TABLE"),
            token_key_id=read.text("TOKEN_KEY_ID"),
            client_secret_arn=read.need("CLIENT_SECRET_ARN"),
            provider=_provider_settings(read, loopback_http),
            **_web_settings(read),
            **_connect_settings(read),
            **_api_key_settings(read, loopback_http),
            **_schedule_settings(read),
            **_quota_settings(read),
            **_listing_settings(read),
        )


class _Environment:
    """One variable at a time, read and checked."""

    def __init__(self, env: dict[str, str] | os._Environ):
        self.env = env

    def text(self, name: str, default: str = "") -> str:
        return self.env.get(name, default).strip()

    def need(self, name: str) -> str:
        value = self.text(name)
        if not value:
            raise ConfigurationError(f"environment variable {name} is required")
        return value

    def flag(self, name: str, default: str) -> bool:
        value = self.text(name, default).lower()
        if value not in ("true", "false"):
            raise ConfigurationError(f"{name} must be true or false")
        return value == "true"

    def number(self, name: str, default: str, *, low: int | None = None, high: int | None = None,
               bounds: str = "") -> int:
        """An integer; with `low`/`high`, refused outside them as "{name} must be {bounds}"."""
        try:
            value = int(self.env.get(name, default))
        except ValueError as exc:
            raise ConfigurationError(f"{name} must be an integer") from exc
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigurationError(f"{name} must be {bounds}")
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise ConfigurationError(f"{name} must be {' or '.join(allowed)}")
        return value


def _provider_settings(read: _Environment, loopback_http: bool) -> ProviderSettings:
    """The OAuth provider (PROVIDER_*): every URL https to a public host (see _provider_url)."""
    def url(name: str, *, required: bool = True) -> str:
        value = read.need(name) if required else read.text(name)
        return _provider_url(name, value, allow_loopback_http=loopback_http) if value else ""

    method = read.choice("PROVIDER_TOKEN_AUTH_METHOD", "client_secret_post",
                         ("client_secret_basic", "client_secret_post"))
    return ProviderSettings(
        authorize_url=url("PROVIDER_AUTHORIZE_URL"),
        token_url=url("PROVIDER_TOKEN_URL"),
        api_base_url=url("PROVIDER_API_BASE_URL"),
        userinfo_path=read.env.get("PROVIDER_USER_INFO_PATH", "/Users/Me"),
        revocation_url=url("PROVIDER_REVOCATION_URL", required=False),
        scopes=" ".join(read.env.get("PROVIDER_SCOPES", "").split()),
        use_pkce=read.flag("PROVIDER_USE_PKCE", "true"),
        token_auth_method=method,
        issuer=read.text("PROVIDER_ISSUER"),
    )


def _web_settings(read: _Environment) -> dict:
    """Where browsers are sent and how this API names itself: origins, public URL, cookies."""
    return {
        "allowed_return_origins": frozenset(
            _origin(o) for o in read.env.get("ALLOWED_RETURN_ORIGINS", "").split(",") if o.strip()),
        "public_base_url": read.text("PUBLIC_BASE_URL").rstrip("/"),
        "cookie_secure": read.flag("COOKIE_SECURE", "true"),
        "api_domain_suffix": read.text("API_DOMAIN_SUFFIX").strip("."),
    }


def _connect_settings(read: _Environment) -> dict:
    """What a connect flow offers: the credential kinds, session binding, the app's name."""
    modes = tuple(m.strip() for m in read.env.get("AUTH_MODES", "oauth2,api_key").split(",") if m.strip())
    if not modes or len(set(modes)) != len(modes) or not set(modes) <= {"oauth2", "api_key"}:
        raise ConfigurationError("AUTH_MODES must list oauth2 and/or api_key, each once")
    return {
        "session_binding": read.choice("SESSION_BINDING", "confirm", ("confirm", "none")),
        "auth_modes": modes,
        "app_name": " ".join(read.env.get("APP_NAME", "this app").split())[:80] or "this app",
    }


def _api_key_settings(read: _Environment, loopback_http: bool) -> dict:
    """API-key connections: the per-pod host template and how often a key is checked."""
    template = read.text("INSIGHTLY_API_URL_TEMPLATE", "https://api.{pod}.insightly.com/v3.1")
    # The host of every API-key call: held to the same rules as the provider's URLs.
    _provider_url("INSIGHTLY_API_URL_TEMPLATE", template.replace("{pod}", "na1"), allow_loopback_http=loopback_http)
    return {
        "insightly_api_url_template": template,
        "api_key_check_seconds": read.number("API_KEY_CHECK_SECONDS", "86400", low=0, bounds="0 or more"),
    }


def _schedule_settings(read: _Environment) -> dict:
    """When the background refreshes run and where their work goes."""
    return {
        "refresh_lead_seconds": read.number("REFRESH_LEAD_SECONDS", "300"),
        "due_index_shards": read.number("DUE_INDEX_SHARDS", "8", low=1, high=64, bounds="between 1 and 64"),
        "keep_alive_refresh_seconds": read.number("KEEP_ALIVE_REFRESH_SECONDS", "604800"),
        "reauth_after_failing_days": read.number("REAUTH_AFTER_FAILING_DAYS", "3"),
        "refresh_queue_url": read.text("REFRESH_QUEUE_URL"),
        "event_bus_name": read.text("EVENT_BUS_NAME"),
    }


def _quota_settings(read: _Environment) -> dict:
    """The quota guard: the backoff after a bare 429 and the reserve background calls leave."""
    return {
        "quota_backoff_seconds": read.number("QUOTA_BACKOFF_SECONDS", "900", low=1, high=86400,
                                             bounds="between 1 and 86400"),
        "background_quota_reserve_percent": read.number("BACKGROUND_QUOTA_RESERVE_PERCENT", "20", low=0, high=90,
                                                        bounds="between 0 and 90"),
    }


def _listing_settings(read: _Environment) -> dict:
    """GET /connections: the tag the tag index serves and the secret behind the cursor."""
    return {"list_tag_key": read.text("LIST_TAG_KEY"), "list_cursor_secret_arn": read.text("LIST_CURSOR_SECRET_ARN")}


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The settings of this container, validated on first use and then reused."""
    return Settings.from_env()
