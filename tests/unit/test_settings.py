"""Settings.from_env: provider URLs are checked, and no error message quotes a value."""

import pytest

from broker.platform.config import Settings
from broker.platform.errors import ConfigurationError

BASE_ENV = {
    "CONNECTIONS_TABLE": "connections", "FLOW_TABLE": "flows", "CLIENT_SECRET_ARN": "arn:secret",
    "PROVIDER_AUTHORIZE_URL": "https://api.insightly.com/v3.1/oauth2/authorize",
    "PROVIDER_TOKEN_URL": "https://api.insightly.com/v3.1/oauth2/token",
    "PROVIDER_API_BASE_URL": "https://api.insightly.com/v3.1",
    "PROVIDER_REVOCATION_URL": "https://api.insightly.com/v3.1/oauth2/revoke",
    "ALLOWED_RETURN_ORIGINS": "https://app.example.com",
}
PROVIDER_URLS = ("PROVIDER_AUTHORIZE_URL", "PROVIDER_TOKEN_URL", "PROVIDER_API_BASE_URL", "PROVIDER_REVOCATION_URL")

BAD_PROVIDER_URLS = [
    "javascript:alert(1)",
    "file:///etc/passwd",
    "http://api.insightly.com/v3.1",  # plaintext
    "ftp://api.insightly.com/v3.1",
    "https://169.254.169.254/latest/meta-data/",  # link-local: the instance metadata service
    "http://169.254.169.254/latest/meta-data/",
    "https://10.0.0.5/token",  # private
    "https://172.16.3.4/token",
    "https://192.168.1.1/token",
    "https://100.64.0.1/token",  # shared address space (carrier NAT)
    "https://127.0.0.1/token",  # loopback
    "https://2130706433/token",  # 127.0.0.1 spelt as one number
    "https://0x7f.1/token",  # and in hex
    "https://[::1]/token",
    "https://[::ffff:169.254.169.254]/token",  # IPv4-mapped
    "https://[fd00::1]/token",  # unique local
    "https://[fe80::1]/token",
    "https://0.0.0.0/token",
    "https://240.0.0.1/token",  # reserved
    "https://localhost/token",
    "https://user:pw@api.insightly.com/v3.1",  # userinfo
    "https://api.insightly.com/v3.1#frag",
    "https:///v3.1",  # no host
    "https://api.insightly.com:99999/v3.1",  # garbage port
    "https://api.insightly.com/v3.1 x",  # whitespace
    "https://api.insightly.com\\@evil.example/",
]


def settings_with(**changes):
    return Settings.from_env({**BASE_ENV, **changes})


def test_the_template_defaults_are_accepted():
    provider = settings_with().provider
    assert provider.token_url == BASE_ENV["PROVIDER_TOKEN_URL"]
    assert provider.api_base_url == BASE_ENV["PROVIDER_API_BASE_URL"]


@pytest.mark.parametrize("url", ["https://login.example.com/authorize?prompt=consent",
                                 "https://api.insightly.com:8443/v3.1", "https://93.184.215.14/token"])
def test_other_public_https_urls_are_accepted(url):
    assert settings_with(PROVIDER_AUTHORIZE_URL=url).provider.authorize_url == url


@pytest.mark.parametrize("variable", PROVIDER_URLS)
@pytest.mark.parametrize("url", BAD_PROVIDER_URLS)
def test_a_provider_url_that_is_not_public_https_is_refused_without_quoting_it(variable, url):
    with pytest.raises(ConfigurationError) as caught:
        settings_with(**{variable: url})
    assert variable in caught.value.message
    assert url not in caught.value.message and "//" not in caught.value.message


def test_no_revocation_url_is_fine():
    assert settings_with(PROVIDER_REVOCATION_URL="").provider.revocation_url == ""


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/v3.1", "http://localhost:9000/v3.1", "http://[::1]:9000/v3.1",
                                 "http://host.docker.internal:9000/v3.1"])
def test_loopback_http_is_allowed_only_when_the_local_stack_says_so(url):
    with pytest.raises(ConfigurationError):
        settings_with(PROVIDER_TOKEN_URL=url)
    allowed = settings_with(PROVIDER_TOKEN_URL=url, ALLOW_LOOPBACK_HTTP_PROVIDER="true")
    assert allowed.provider.token_url == url


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/", "http://10.0.0.5/token", "file:///etc/passwd",
                                 "http://api.insightly.com/v3.1"])
def test_the_loopback_allowance_allows_nothing_else(url):
    with pytest.raises(ConfigurationError):
        settings_with(PROVIDER_TOKEN_URL=url, ALLOW_LOOPBACK_HTTP_PROVIDER="true")


@pytest.mark.parametrize("changes", [
    {"PROVIDER_TOKEN_AUTH_METHOD": "secret-sauce-value"},
    {"COOKIE_SECURE": "secret-sauce-value"},
    {"ALLOWED_RETURN_ORIGINS": "https://secret-sauce-value.example/path"},
    {"DUE_INDEX_SHARDS": "secret-sauce-value"},
    {"ALLOW_LOOPBACK_HTTP_PROVIDER": "secret-sauce-value"},
])
def test_configuration_errors_name_the_variable_but_never_its_value(changes):
    with pytest.raises(ConfigurationError) as caught:
        settings_with(**changes)
    [(variable, _)] = changes.items()
    assert variable in caught.value.message
    assert "secret-sauce-value" not in caught.value.message
