"""The local Insightly stand-in: FakeInsightly (local/fake_insightly/) over real HTTP.

    standin = StandIn().start()        # port 0: a free port is picked
    standin.base_url                   # http://127.0.0.1:PORT/v3.1 (the provider's URLs hang off it)
    ...
    standin.stop()

Routes under /v3.1 (OAuth, like the provider):
    GET  /oauth2/authorize            consent page with "Approve" and "Deny"
    POST /oauth2/authorize/decision   302 back to redirect_uri with code+state or error=access_denied
    POST /oauth2/token                authorization_code and refresh_token grants (Basic or post auth)
    POST /oauth2/revoke               RFC 7009
The API, Bearer under /v3.1 and API key (Basic key:"") under /{pod}/v3.1, so the API-key
URL template is http://127.0.0.1:PORT/{pod}/v3.1 (`standin.api_url_template`):
    GET  /Users/Me
    GET  /Contacts?top=&skip=&count_total=true   (count_total adds X-Total-Count)
    POST /Contacts                    JSON contact, answered with CONTACT_ID
    GET  /Contacts/{id}
    Every authenticated answer has X-RateLimit-Limit/-Remaining (a daily counter per account);
    past the limit: 429 with Retry-After. A key answers only on its own pod.
Switches for tests and the benchmark (JSON in, JSON out):
    POST /_control/faults   {"fault": "429"|"500"|"timeout"|"invalid_grant"|"invalid_client", "times": N}
                            at the token endpoint, or with "on": "api" {"fault": "429"|"500"|"timeout"}
                            at the API routes (both kinds)
    POST /_control/api-keys {"pod": "na1", "daily_limit"?: N, "user"?: {...Users/Me fields}}: a new
                            account with a key -> {"account", "api_key", "pod", "api_url"};
                            {"account": id}: another user's key on that account (its daily counter)
    POST /_control/api-keys/regenerate  {"account": id} -> {"account", "api_key"}; the old key is revoked
    POST /_control/quota    {"account": id|"oauth", "remaining"?: N, "limit"?: N} -> {"limit", "remaining"}
    POST /_control/config   any of latency_ms, access_ttl, retry_after, rotate_refresh_tokens, issue_refresh_tokens,
                            timeout_seconds
    GET  /_control/state    calls, current_refresh_tokens, revoked (counts only), pending_faults,
                            pending_api_faults, live_api_keys, revoked_api_keys, accounts (pod, limit,
                            remaining, contacts; never a key), config
    POST /_control/reset    counters, faults, quotas and config back to the start; {"tokens": true}
                            also forgets every code, token and API key (connections then need re-auth)

The "timeout" fault holds the answer for `timeout_seconds` (default 10 s, longer than the
broker's 8 s read timeout) and then answers 504, so the caller's own timeout is what fires.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, parse_qsl, urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from local.fake_insightly import FakeInsightly
from local.server import ThreadedServer
from local.standin_control import BadRequest, StandInControl

API_PREFIX = "/v3.1"
API_PATH = re.compile(r"/(?:Users/Me|Contacts(?:/.*)?)")  # the API below the Bearer base URL
POD_API = re.compile(r"/(?P<pod>[a-z0-9]{2,10})/v3\.1(?P<path>/.*)")  # the API below a pod's base URL
MAX_BODY = 64 * 1024
log = logging.getLogger("insightly_connect.standin")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "InsightlyStandIn/1.0"
    timeout = 30  # an idle keep-alive connection frees its thread after this long (or on stop())
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    server: ThreadedServer

    def do_GET(self):
        self.server.app._dispatch(self, "GET")

    def do_POST(self):
        self.server.app._dispatch(self, "POST")

    def do_PUT(self):  # the API answers 405 where it has no route, as Insightly does
        self.server.app._dispatch(self, "PUT")

    def do_PATCH(self):
        self.server.app._dispatch(self, "PATCH")

    def do_DELETE(self):
        self.server.app._dispatch(self, "DELETE")

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code="-", size="-"):  # the path only: queries carry codes and states
        log.debug('"%s %s" %s', self.command, urlsplit(self.path).path, code)


class StandIn:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, provider: FakeInsightly | None = None, *,
                 latency_ms: float = 0, timeout_seconds: float = 10.0):
        self.provider = provider or FakeInsightly()
        self.latency_ms = float(latency_ms)
        self.timeout_seconds = float(timeout_seconds)
        # Binds now, so the URL is known before start().
        self._server = ThreadedServer(host, port, _Handler, name="standin", app=self)
        self.url = self._server.url
        self.base_url = self.url + API_PREFIX
        self.provider.base_url = self.base_url
        self.api_url_template = self.url + "/{pod}" + API_PREFIX
        self.provider.pod_url_template = self.api_url_template
        self.control = StandInControl(self)
        self._stopping = threading.Event()
        self._routes = {
            ("GET", "/oauth2/authorize"): self._consent_page,
            ("POST", "/oauth2/authorize/decision"): self._decision,
            ("POST", "/oauth2/token"): self._token,
            ("POST", "/oauth2/revoke"): self._revoke,
        }
        self._control = {key: self._answer_with(route) for key, route in self.control.routes().items()}

    @classmethod
    def from_env(cls, host: str = "127.0.0.1", port: int = 0, environ=None) -> StandIn:
        """As `make local` runs it: STANDIN_ACCESS_TTL (default 120 s, so refreshes are visible)
        and STANDIN_LATENCY_MS (default 0); every account starts with 3 contacts to list."""
        env = os.environ if environ is None else environ
        provider = FakeInsightly(access_ttl=int(env.get("STANDIN_ACCESS_TTL", "120")), seed_contacts=3)
        return cls(host, port, provider, latency_ms=float(env.get("STANDIN_LATENCY_MS", "0")))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> StandIn:
        if self._server.running or self._stopping.is_set():
            raise RuntimeError("already started (a stand-in runs once)")
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection, keep-alive or mid-request."""
        self._stopping.set()  # wakes handlers held by latency or a timeout fault
        self._server.stop()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- plumbing ------------------------------------------------------------------------------

    def _dispatch(self, handler: _Handler, method: str) -> None:
        path, _, query = handler.path.partition("?")
        try:
            length = int(handler.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_BODY:
                return self._json(handler, 413, {"error": "request_too_large"})
            body = handler.rfile.read(length) if length else b""
            provider_path = path.removeprefix(API_PREFIX) if path.startswith(API_PREFIX + "/") else None
            if provider_path is not None and API_PATH.fullmatch(provider_path):
                return self._api(handler, method, None, provider_path, query, body)
            if pod_api := POD_API.fullmatch(path):
                return self._api(handler, method, pod_api["pod"], pod_api["path"], query, body)
            route = self._routes.get((method, provider_path)) or self._control.get((method, path))
            if route is None:
                known = {p for _, p in self._routes} | {p for _, p in self._control}
                status = 405 if provider_path in known or path in known else 404
                return self._json(handler, status, {"error": "method_not_allowed" if status == 405 else "not_found"})
            return route(handler, query, body)
        except BadRequest as exc:
            return self._json(handler, 400, {"error": "invalid_request", "message": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the caller gave up (its own timeout fired)
        except Exception:
            log.exception("stand-in failed on %s %s", method, path)
            self._json(handler, 500, {"error": "server_error"})

    def _send(self, handler: _Handler, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)),
                            "Cache-Control": "no-store", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _json(self, handler: _Handler, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        self._send(handler, status, json.dumps(body).encode(), "application/json", headers)

    def _html(self, handler: _Handler, status: int, page: str) -> None:
        self._send(handler, status, page.encode(), "text/html; charset=utf-8", {
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff"})

    def _answer_with(self, route):
        """A control route (body in, status and JSON out) as a stand-in route."""
        return lambda handler, _query, body: self._json(handler, *route(body))

    def _delay(self) -> None:
        if self.latency_ms > 0:
            self._stopping.wait(self.latency_ms / 1000)

    @staticmethod
    def _form(body: bytes) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    # -- consent page --------------------------------------------------------------------------

    @staticmethod
    def _authorize_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
        params = dict(pairs)
        if len(params) != len(pairs):
            raise ValueError("a parameter is repeated")
        return params

    def _consent_page(self, handler: _Handler, query: str, _body: bytes) -> None:
        try:
            params = self._authorize_params(parse_qsl(query, keep_blank_values=True))
        except ValueError as exc:
            return self._html(handler, 400, _error_page(str(exc)))
        error = self.provider.authorize_error(params)
        if error:  # RFC 6749 4.1.2.1: never redirect to an unverified client
            return self._html(handler, 400, _error_page(error))
        return self._html(handler, 200, _consent_page(params, self.base_url + "/oauth2/authorize/decision"))

    def _decision(self, handler: _Handler, _query: str, body: bytes) -> None:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        decision = [value for key, value in pairs if key == "decision"]
        try:
            params = self._authorize_params([(k, v) for k, v in pairs if k != "decision"])
            if decision not in (["approve"], ["deny"]):
                raise ValueError("choose approve or deny")
            location = (self.provider.approve_params if decision == ["approve"] else self.provider.deny_params)(params)
        except ValueError as exc:
            return self._html(handler, 400, _error_page(str(exc)))
        return self._send(handler, 302, b"", "text/plain", {"Location": location})

    # -- provider endpoints --------------------------------------------------------------------

    def _token(self, handler: _Handler, _query: str, body: bytes) -> None:
        self._delay()
        try:
            status, headers, answer = self.provider.token_endpoint(self._form(body),
                                                                   CaseInsensitiveDict(handler.headers.items()))
        except requests.ReadTimeout:
            self._stopping.wait(self.timeout_seconds)
            return self._json(handler, 504, {"error": "gateway_timeout"})
        return self._json(handler, status, answer, headers)

    def _revoke(self, handler: _Handler, _query: str, body: bytes) -> None:
        self._delay()
        status, headers, answer = self.provider.revoke_endpoint(self._form(body),
                                                                CaseInsensitiveDict(handler.headers.items()))
        return self._json(handler, status, answer, headers)

    def _api(self, handler: _Handler, method: str, pod: str | None, path: str, query: str, body: bytes) -> None:
        self._delay()
        try:
            status, headers, answer = self.provider.api(method, pod, path, query,
                                                        CaseInsensitiveDict(handler.headers.items()), body)
        except requests.ReadTimeout:
            self._stopping.wait(self.timeout_seconds)
            return self._json(handler, 504, {"error": "gateway_timeout"})
        self._send(handler, status, json.dumps(answer).encode(), "application/json", headers)


# -- pages -------------------------------------------------------------------------------------

STYLE = """body{font-family:system-ui,sans-serif;background:#f4f6f8;color:#1f2933;margin:0}
main{max-width:28rem;margin:4rem auto;background:#fff;border-radius:8px;padding:2rem;
box-shadow:0 1px 4px rgba(0,0,0,.1)}h1{font-size:1.3rem;margin-top:0}code{background:#eef1f4;padding:0 .3em}
ul{padding-left:1.2rem}.buttons{display:flex;gap:.75rem;margin-top:1.5rem}
button{font-size:1rem;padding:.6rem 1.2rem;border-radius:6px;border:1px solid #c5ccd3;background:#fff;cursor:pointer}
#approve{background:#f26522;border-color:#f26522;color:#fff}.error{color:#b42318}"""


def _page(title: str, content: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
            f"<body><main>{content}</main></body></html>")


def _consent_page(params: dict[str, str], action: str) -> str:
    e = html.escape
    scopes = params.get("scope", "").split()
    scope_list = "".join(f"<li><code>{e(s)}</code></li>" for s in scopes) or "<li>the default access</li>"
    hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in params.items())
    return _page("Authorize access - Insightly (local stand-in)", f"""
<h1>Insightly (local stand-in)</h1>
<p>The application <code id="client-id">{e(params["client_id"])}</code> asks for access to your
Insightly account:</p>
<ul id="scopes">{scope_list}</ul>
<p>You will be sent back to <code>{e(urlsplit(params["redirect_uri"]).netloc)}</code>.</p>
<form method="post" action="{e(action)}">{hidden}
<div class="buttons"><button id="approve" type="submit" name="decision" value="approve">Approve</button>
<button id="deny" type="submit" name="decision" value="deny">Deny</button></div></form>""")


def _error_page(reason: str) -> str:
    return _page("Invalid authorization request", f"""
<h1 class="error">Invalid authorization request</h1><p id="error">{html.escape(reason)}</p>""")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The local Insightly stand-in (FakeInsightly over HTTP)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    standin = StandIn.from_env(args.host, args.port).start()
    print(f"Insightly stand-in at {standin.base_url} (client_id {standin.provider.client_id})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
