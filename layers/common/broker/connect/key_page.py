"""The hosted key-entry page for api_key connect sessions: rendering, form parsing, CSRF.

Pure functions, no AWS. The page works without JavaScript and loads nothing from anywhere:
one inline <style>, one form posting back to this API.

CSRF uses the browser-binding idea of the OAuth state cookie (connect.oauth_flow): the GET sets a
random secret in an HttpOnly, SameSite=Lax cookie, and the form carries an HMAC of the
session token under that secret. A submit from a browser without the cookie, or for
another session, fails the check; nothing about the secret is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
from urllib.parse import parse_qsl

from broker.http.requests_in import RANDOM_TOKEN
from broker.platform.errors import BrokerError, InvalidRequest

FORM_ACTION = "api-key"  # relative: resolves to the page's own route whatever the stage prefix
MAX_FORM_BODY = 4096
FIELDS = ("session", "csrf", "api_key", "api_url")
_FIELD_LIMITS = {"session": 64, "csrf": 64, "api_key": 512, "api_url": 512}

# What the person sees when a submit does not connect.
KEY_REJECTED = "Insightly did not accept this API key."
ACCESS_DENIED = "Insightly refused API access for this user. Ask your Insightly administrator."
QUOTA_USED_UP = "Insightly's daily API limit for this account is used up; try again later."
NOT_ANSWERING = "Insightly is not answering; try again."
INVALID_API_URL = ("This is not an Insightly API URL. Paste the API URL from User Settings → API, "
                   "or just its pod, such as na1.")
INVALID_API_KEY = "This does not look like an Insightly API key. Copy it from User Settings → API."
HELP = "In Insightly: User Settings → API: your API key and the API URL."

_MESSAGES = {
    "api_key_rejected": KEY_REJECTED,
    "api_access_denied": ACCESS_DENIED,
    "provider_quota_exhausted": QUOTA_USED_UP,
    "provider_unavailable": NOT_ANSWERING,
    "invalid_api_url": INVALID_API_URL,
    "invalid_api_key": INVALID_API_KEY,
    "missing_api_key": INVALID_API_KEY,
    "missing_api_url": INVALID_API_URL,
}


def message_for(error: BrokerError) -> str | None:
    """The page's message for an error the form can recover from; None: end the flow instead."""
    return _MESSAGES.get(error.code)


def response_headers(*, return_origins: tuple[str, ...] = ()) -> dict[str, str]:
    """The page's headers. Browsers apply form-action to the redirects that follow a submit,
    so the origins the flow may end on (return_to) must be listed beside 'self'."""
    form_action = " ".join(("'self'", *return_origins))
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": (f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
                                    "frame-ancestors 'none'; base-uri 'none'"),
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


HEADERS = response_headers()


# -- CSRF --------------------------------------------------------------------------------------


def _form_token(cookie_secret: str, session: str) -> str:
    digest = hmac.new(cookie_secret.encode(), b"key-page-csrf:" + session.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()  # 43 characters, like a random token


def new_csrf(session: str) -> tuple[str, str]:
    """(cookie_secret, form_token) for a page render of this session."""
    cookie_secret = secrets.token_urlsafe(32)
    return cookie_secret, _form_token(cookie_secret, session)


def csrf_ok(cookie_secret: str | None, form_token: str | None, session: str) -> bool:
    """True only when the cookie this browser holds made the token in the form for this session."""
    if not (cookie_secret and form_token and RANDOM_TOKEN.fullmatch(cookie_secret)
            and RANDOM_TOKEN.fullmatch(form_token)):
        return False
    return hmac.compare_digest(_form_token(cookie_secret, session), form_token)


# -- the form ----------------------------------------------------------------------------------


def parse_form(body: str | None) -> dict[str, str]:
    """The four fields of an application/x-www-form-urlencoded submit, each given once.
    Errors name the field and never echo a value (one of them is the key)."""
    if not body:
        raise InvalidRequest("the form is empty", code="invalid_form")
    if len(body) > MAX_FORM_BODY:
        raise InvalidRequest("the form is too large", code="invalid_form")
    try:
        pairs = parse_qsl(body, keep_blank_values=True, strict_parsing=True, max_num_fields=16)
    except ValueError:
        raise InvalidRequest("the form is not url-encoded", code="invalid_form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name not in _FIELD_LIMITS:
            continue  # a browser extension may add fields; they are not ours to read
        if name in form:
            raise InvalidRequest(f"the {name} field is given more than once", code="invalid_form")
        if len(value) > _FIELD_LIMITS[name]:
            raise InvalidRequest(f"the {name} field is too long", code=f"invalid_{name}")
        form[name] = value
    for name in FIELDS:
        if not form.get(name, "").strip():
            raise InvalidRequest(f"the {name} field is required", code=f"missing_{name}")
    for name in ("session", "csrf"):
        if not RANDOM_TOKEN.fullmatch(form[name]):
            raise InvalidRequest(f"the {name} field is malformed", code=f"invalid_{name}")
    return form


# -- the page ----------------------------------------------------------------------------------

STYLE = """*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f6f8;color:#1f2933}
main{max-width:30rem;margin:3rem auto;background:#fff;border-radius:10px;padding:2rem;
box-shadow:0 1px 4px rgba(0,0,0,.12)}
h1{font-size:1.35rem;line-height:1.3;margin:0 0 .75rem}
p{margin:0 0 1rem}
.help{color:#52606d;font-size:.95rem}
label{display:block;font-weight:600;margin:1.1rem 0 .35rem}
input{width:100%;font:inherit;padding:.6rem .7rem;border:1px solid #9aa5b1;border-radius:6px;background:#fff}
input::placeholder{color:#9aa5b1}
input:focus{outline:3px solid #f9b58f;outline-offset:1px;border-color:#f26522}
.hint{display:block;color:#52606d;font-size:.85rem;margin-top:.3rem}
button{margin-top:1.5rem;width:100%;font:inherit;font-weight:600;padding:.7rem 1rem;border:0;border-radius:6px;
background:#f26522;color:#fff;cursor:pointer}
button:hover{background:#d9541a}
button:focus{outline:3px solid #1f2933;outline-offset:2px}
.message{border-left:4px solid #b42318;background:#fef3f2;color:#7a271a;padding:.6rem .8rem;border-radius:4px}
.note{color:#52606d;font-size:.8rem;margin:1.25rem 0 0}
@media (max-width:32rem){main{margin:0;border-radius:0;box-shadow:none;min-height:100vh;padding:1.25rem}}"""


def render(app_name: str, session_token: str, csrf_token: str, message: str | None = None,
           api_url_value: str = "", *, action: str = FORM_ACTION,
           api_url_example: str = "api.na1.insightly.com/v3.1/") -> str:
    """The page as one HTML string; every value is escaped. The key field is never refilled.
    `api_url_example` is the placeholder: an API URL this deployment accepts."""
    e = html.escape
    title = f"Connect {app_name} to Insightly"
    alert = f'<p class="message" id="message" role="alert">{e(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{e(title)}</title><style>{STYLE}</style></head>
<body><main>
<h1>{e(title)}</h1>
<p class="help" id="help">{e(HELP)}</p>
{alert}
<form method="post" action="{e(action)}" autocomplete="off">
<input type="hidden" name="session" value="{e(session_token)}">
<input type="hidden" name="csrf" value="{e(csrf_token)}">
<label for="api_key">API key</label>
<input id="api_key" name="api_key" type="password" autocomplete="off" required maxlength="256"
 spellcheck="false" autocapitalize="off" aria-describedby="help">
<label for="api_url">API URL</label>
<input id="api_url" name="api_url" type="text" inputmode="url" autocomplete="off" required maxlength="512"
 spellcheck="false" autocapitalize="off" value="{e(api_url_value)}" placeholder="{e(api_url_example)}"
 aria-describedby="api_url_hint">
<span class="hint" id="api_url_hint">The whole API URL, or just its pod, such as na1.</span>
<button type="submit">Connect</button>
</form>
<p class="note">Your key is stored encrypted and used only to call Insightly for {e(app_name)}.</p>
</main></body></html>
"""
