"""The popup ending of a connect flow (display=popup): instead of a 302 to return_to,
a tiny page that posts the outcome to window.opener and closes.

The message carries exactly what the redirect would have put on return_to (status, error,
connection_id, session_id, completion_code), so the SaaS backend completes a popup flow as it
completes a redirect. It is posted with return_to's exact origin as targetOrigin: a page of
any other origin that opened the popup receives nothing. Without an opener (the person opened
the link in a tab, or a Cross-Origin-Opener-Policy severed it) the page redirects as usual.
The only script is inline and allowed by a per-response nonce; nothing else may load.
"""

from __future__ import annotations

import html
import json
import secrets
from urllib.parse import parse_qsl, urlsplit

from broker.platform.config import origin_of

DISPLAYS = ("redirect", "popup")
MESSAGE_TYPE = "insightly-connect"
_MESSAGE_FIELDS = ("status", "connection_id", "error", "session_id", "completion_code")


def message_for(location: str) -> dict[str, str | None]:
    """The postMessage payload for the flow's final return_to URL."""
    params = dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))
    message: dict[str, str | None] = {"type": MESSAGE_TYPE}
    message.update({name: params.get(name) for name in _MESSAGE_FIELDS[:3]})
    message.update({name: params[name] for name in _MESSAGE_FIELDS[3:] if name in params})
    return message


def _script_json(value) -> str:
    # Inside <script>: no "</script>", "<!--" or line separators can break out of the literal.
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render(location: str) -> tuple[str, dict[str, str]]:
    """(page, headers) that end a popup flow whose redirect would have gone to location."""
    parts = urlsplit(location)
    target = origin_of(parts.scheme, parts.hostname, parts.port)
    nonce = secrets.token_urlsafe(18)
    script = (f"var m={_script_json(message_for(location))},o={_script_json(target)},u={_script_json(location)};"
              "var w=window.opener;"
              "if(w&&!w.closed){try{w.postMessage(m,o)}catch(e){}window.close()}else{location.replace(u)}")
    page = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="referrer" content="no-referrer"><title>Connecting…</title></head><body>'
            f'<p><a href="{html.escape(location)}" rel="noreferrer">Continue</a></p>'
            f'<script nonce="{nonce}">{script}</script></body></html>')
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": (f"default-src 'none'; script-src 'nonce-{nonce}'; frame-ancestors 'none'; "
                                    "base-uri 'none'; form-action 'none'"),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }
    return page, headers
