"""Demo SaaS: a small web app integrated with Insightly Connect through the Python client,
`insightly_connect` (clients/python: `pip install ./clients/python`). Start from the client
and its README; this app shows where the calls go in a web app.

A SaaS backend needs five calls to the broker, each signed with SigV4 (the broker's
backend routes use IAM auth), here each a method of `insightly_connect.Broker`:

    POST   /connect-sessions            -> {"auth_mode": "oauth2"} (Insightly's consent page)
                                           or "api_key" (the broker's key page); keep
                                           session_id in the user's own server-side
                                           session, send the browser to connect_url
    POST   /connect-sessions/{session_id}/complete
                                        -> on return, if session_id is the one in this
                                           user's session: link the connection
    GET    /connections/{id}            -> status, the Insightly user, the kind and the
                                           observed daily quota (never a credential)
    ANY    /connections/{id}/proxy/{path}
                                        -> Insightly's own answer to {path} (Users/Me,
                                           Contacts?top=5, ...): the broker adds the
                                           credential, follows the pod, recovers from a 401
                                           and guards the daily quota, whichever the kind
    DELETE /connections/{id}            -> revoke and forget

In that order: `create_connect_session`, `complete_connect_session`, `status`,
`proxy(id).get(path)` and `delete`; each refusal of the broker raises a BrokerError subclass
(NotFoundError, NeedsReauthError, QuotaReservedError, ...) with its status and code.

(GET /connections/{id}/token hands out api_base_url and the Authorization header instead,
for a backend that must call Insightly itself; this app does not need it.)

With `"display": "popup"` the buttons open the flow in a popup (clients/browser/connect.js,
served here at /connect.js): the broker's last page posts the same outcome to this page,
which completes it with the backend exactly as below (POST /complete).

Webhooks: with WebhookUrl set (`make local` points it at this app's POST /webhooks by
default), every lifecycle event arrives signed per Standard Webhooks. This app verifies each
one with the off-the-shelf `standardwebhooks` library and the stack's secret (whsec_...) and
lists the last ones on its page, marked verified or not; a receiver would drop what fails.

The broker sends the browser back to `return_to` with
`?status=pending&session_id=<id>&completion_code=<code>` (SessionBinding=confirm, the
default), `?status=connected` (SessionBinding=none) or `?status=error&error=<code>`.
`return_to` must be on the broker's AllowedReturnOrigins. The session check is what makes a
connect link useless to anyone but the user who started it: a link someone else opened
comes back to a browser whose session does not hold that session_id, and is not completed.

    app = DemoApp(broker_url="http://127.0.0.1:3000").start()
    print(app.url)
    app.stop()
"""

from __future__ import annotations

import argparse
import hmac
import json
import secrets
import threading
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import botocore.session
import requests

from insightly_connect import Broker, BrokerError, Connection, NotFoundError, QuotaReservedError
from insightly_connect.errors import error_for
from insightly_connect.models import Priority
from local import demo_pages as pages
from local.demo_webhooks import WebhookInbox
from local.server import ThreadedServer

STANDIN_TIMEOUT = (3.05, 10)


# -- the integration: what a SaaS backend does ---------------------------------------------------

def aws_session(access_key: str | None = None, secret_key: str | None = None,
                session_token: str | None = None) -> botocore.session.Session:
    """The credentials the calls are signed with: the given key (the local stack's), else the
    default chain (environment, shared files, a deployed backend's role)."""
    session = botocore.session.Session()
    if access_key and secret_key:
        session.set_credentials(access_key, secret_key, session_token)
    return session


def code_of(refused: BrokerError) -> str:
    """The broker's error code, or the status for an answer without one (API Gateway's)."""
    return refused.code or str(refused.status)


# -- the web app ---------------------------------------------------------------------------------

FLASH = {
    "connected": "Insightly connected",
    "disconnected": "Insightly disconnected",
    "unknown": "The connect window closed before it finished.",
}
DECLINED = "You declined access to Insightly. Nothing was connected."
TOO_MANY_ATTEMPTS = "Insightly refused the API key too many times. Nothing was connected; start again."
QUOTA_USED_UP = "Insightly's daily API limit for this account is used up; try again later."
NOT_YOURS = "This connection was not started from your session. Nothing was connected."
UNREACHABLE = "The connection broker is unreachable."
SESSION_COOKIE = "demo_session"
CONNECT_JS = Path(__file__).resolve().parents[1] / "clients" / "browser" / "connect.js"
CONTACTS_SHOWN = 5
TEST_KEY_POD = "na1"
MAX_WEBHOOK_BYTES = 64 * 1024


class DemoApp:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, broker_url: str = "http://127.0.0.1:3000",
                 region: str = "us-east-1", *, connection_id: str = "demo-user", access_key: str | None = None,
                 secret_key: str | None = None, session_token: str | None = None):
        self._aws = aws_session(access_key, secret_key, session_token)
        self.broker = Broker(broker_url, region, self._aws)
        self.connection_id = connection_id
        # The SaaS's own server-side sessions (cookie value -> data); a real app has its own store.
        self.sessions: dict[str, dict] = {}
        self._sessions_guard = threading.Lock()
        # Signed lifecycle events from the broker; its secret set means webhooks are on.
        self.inbox = WebhookInbox()
        # The Insightly stand-in's URL when one runs (`make local`): "Issue a test key" asks it.
        self.standin_url: str | None = None
        # Binds now, so the URL (and the return origin) is known before the broker exists.
        self._server = ThreadedServer(host, port, _Handler, name="demo-app", app=self)
        self.url = self._server.url

    @property
    def webhook_secret(self) -> str | None:
        """The Standard Webhooks secret (whsec_...) the broker signs with; None: no webhooks."""
        return self.inbox.secret

    @webhook_secret.setter
    def webhook_secret(self, secret: str | None) -> None:
        self.inbox.secret = secret

    def point_at(self, broker_url: str) -> DemoApp:
        """Use this broker: for an app built before the broker's URL was known. (Insightly is
        called through the broker's proxy, so its URL is all the app needs.)"""
        self.broker = Broker(broker_url, self.broker.region, self._aws)
        return self

    def start(self) -> DemoApp:
        if self._server.running:
            raise RuntimeError("already started")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> DemoApp:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- routes: each returns (status, headers, html) ---------------------------------------------

    def session(self, cookie: str | None) -> tuple[str, dict]:
        """This browser's server-side session: (cookie value, its data), created if need be."""
        with self._sessions_guard:
            if cookie not in self.sessions:
                cookie = secrets.token_urlsafe(32)
                self.sessions[cookie] = {}
            return cookie, self.sessions[cookie]

    def home(self, query: dict[str, str], session: dict | None = None) -> tuple[int, dict, str]:
        status, error = query.get("status"), query.get("error", "")
        if status == "pending":
            return self.complete(query, session if session is not None else {})
        if status == "error":
            message = {"access_denied": DECLINED, "too_many_attempts": TOO_MANY_ATTEMPTS}.get(
                error, f"Connecting Insightly failed ({error[:100]})")
        else:
            message = FLASH.get(status or "", "")
        return 200, {}, self.page(message)

    def connect(self, session: dict | None = None, auth_mode: str = "oauth2",
                display: str = "redirect") -> tuple[int, dict, str]:
        """Both kinds start alike: a session, the browser sent to connect_url (Insightly's
        consent page, or the broker's key page), and the same completion on return. For a
        popup, connect.js gets connect_url as JSON and opens it in the popup it opened."""
        try:
            started = self.broker.create_connect_session(self.connection_id, return_to=self.url + "/",
                                                         auth_mode=auth_mode,
                                                         display=None if display == "redirect" else display)
        except requests.RequestException:
            return 502, {}, self.page(UNREACHABLE)
        except BrokerError as refused:
            return 502, {}, self.page(f"Could not start connecting Insightly ({code_of(refused)})")
        if session is not None:  # server side only: the browser never sees session_id on the way out
            session["connect_session_id"] = started.session_id
        if display == "popup":
            return 201, {"Content-Type": "application/json"}, json.dumps({"connect_url": started.connect_url})
        return 303, {"Location": started.connect_url}, ""

    def complete(self, query: dict[str, str], session: dict) -> tuple[int, dict, str]:
        """Back from the broker with a pending connection: link it only if this browser's own
        session started it."""
        expected = session.get("connect_session_id")
        if not expected or not hmac.compare_digest(expected.encode(), query.get("session_id", "").encode()):
            return 403, {}, self.page(NOT_YOURS)
        session.pop("connect_session_id")
        try:
            self.broker.complete_connect_session(expected, query.get("completion_code", ""))
        except requests.RequestException:
            return 502, {}, self.page(UNREACHABLE)
        except BrokerError as refused:
            return 502, {}, self.page(f"Connecting Insightly failed ({code_of(refused)[:100]})")
        # A clean URL: the completion code is spent and has no business in the history.
        return 303, {"Location": f"/?status=connected&connection_id={quote(self.connection_id)}"}, ""

    def insightly_get(self, path: str, params: dict[str, str] | None = None,
                      priority: Priority = "interactive") -> requests.Response:
        """Insightly's own answer to GET `path`, through the broker's proxy, which adds the
        credential (Bearer for OAuth, Basic on the account's pod for a key): the app never holds
        one. The broker's own refusals raise BrokerError (they carry X-Broker-Error), and so
        does a 5xx without Insightly's X-RateLimit-Limit (which every Insightly answer carries):
        that is the broker's platform failing (API Gateway's `{"message": "Internal Server
        Error"}` when a function fails), not Insightly."""
        answer = self.broker.proxy(self.connection_id, priority=priority).get(path, params=params)
        if answer.status_code >= 500 and "X-RateLimit-Limit" not in answer.headers:
            raise error_for(answer.status_code, answer.content, answer.headers, response=answer)
        return answer

    def call_insightly(self) -> tuple[int, dict, str]:
        """Users/Me through the broker's proxy: one code path for both kinds."""
        try:
            me = self.insightly_get("Users/Me")
        except (requests.RequestException, BrokerError) as failed:
            return self.proxy_refusal(failed)
        if me.status_code != 200:
            return self.proxy_refusal(me)
        user = me.json()
        name = " ".join(str(user[k]) for k in ("FIRST_NAME", "LAST_NAME") if user.get(k))
        return 200, {}, self.page("", call_result=f"Insightly says you are {name} ({user.get('EMAIL_ADDRESS', '')})")

    def list_contacts(self) -> tuple[int, dict, str]:
        """The first contacts and how many there are (Insightly's X-Total-Count), through the proxy."""
        try:
            answer = self.insightly_get("Contacts", {"top": str(CONTACTS_SHOWN), "count_total": "true"})
        except (requests.RequestException, BrokerError) as failed:
            return self.proxy_refusal(failed)
        if answer.status_code != 200:
            return self.proxy_refusal(answer)
        contacts = answer.json()
        if not isinstance(contacts, list):
            return 502, {}, self.page("Insightly answered something that is not a list of contacts.")
        return 200, {}, self.page("", contacts=(contacts[:CONTACTS_SHOWN], answer.headers.get("X-Total-Count")))

    def background_sync(self, most: int = 1000) -> tuple[int, dict, str]:
        """A sync's calls (one contact a call), background priority: it runs until the broker
        refuses it at the reserve (429 quota_reserved), which "Call Insightly" may still spend."""
        made = 0
        while made < most:
            try:
                answer = self.insightly_get("Contacts", {"top": "1"}, priority="background")
            except QuotaReservedError as reserved:
                left = reserved.response.headers.get("X-RateLimit-Remaining", "?")
                return 200, {}, self.page("", call_result=f"Background sync: {made} calls, then stopped at the "
                                              f"reserve ({left} left for interactive calls)")
            except (requests.RequestException, BrokerError) as failed:
                return self.proxy_refusal(failed)
            if answer.status_code != 200:
                return self.proxy_refusal(answer)
            made += 1
        return 200, {}, self.page("", call_result=f"Background sync: {made} calls")

    def proxy_refusal(self, refusal: BrokerError | requests.RequestException | requests.Response,
                      ) -> tuple[int, dict, str]:
        """What a person reads when a proxied call did not succeed, saying truly who answered:
        a BrokerError is the broker's own answer (see insightly_get), a Response Insightly's,
        passed on as it came."""
        if isinstance(refusal, requests.RequestException):
            return 502, {}, self.page(UNREACHABLE)
        by_broker = isinstance(refusal, BrokerError)
        status = refusal.status if by_broker else refusal.status_code
        code = refusal.code if by_broker else None
        if code == "connection_not_found":
            return 409, {}, self.page("Connect Insightly first.")
        if code == "needs_reauth":
            return 409, {}, self.page("Insightly needs to be connected again.")
        if status == 429:  # Insightly's 429, or the broker's while the quota is gone
            return 502, {}, self.page(QUOTA_USED_UP)
        if code == "provider_unauthorized" or (not by_broker and status in (401, 403)):
            return 502, {}, self.page(f"Insightly refused the credentials ({status}).")
        if by_broker:
            return 502, {}, self.page(f"The broker answered {status} ({(code or refusal.message)[:100]}).")
        return 502, {}, self.page(f"Insightly answered {status}.")

    def issue_test_key(self) -> tuple[int, dict, str]:
        """Locally only: a new account at the Insightly stand-in, with a live API key, to paste
        into the key page (a real account's key is under User Settings → API in Insightly)."""
        if not self.standin_url:
            return 404, {}, self.page("There is no Insightly stand-in to issue a test key.")
        try:
            answer = requests.post(f"{self.standin_url}/_control/api-keys", json={"pod": TEST_KEY_POD},
                                   timeout=STANDIN_TIMEOUT)
            answer.raise_for_status()
            issued = answer.json()
        except (requests.RequestException, ValueError):
            return 502, {}, self.page("The Insightly stand-in did not issue a key.")
        return 200, {}, self.page("", test_key=(issued["api_key"], issued["api_url"]))

    def disconnect(self) -> tuple[int, dict, str]:
        try:
            self.broker.delete(self.connection_id)
        except NotFoundError:
            pass  # already gone: disconnected all the same
        except requests.RequestException:
            return 502, {}, self.page(UNREACHABLE)
        except BrokerError as refused:
            return 502, {}, self.page(f"Disconnecting failed ({code_of(refused)})")
        return 303, {"Location": "/?status=disconnected"}, ""

    # -- the page --------------------------------------------------------------------------------

    def connection_status(self) -> tuple[str, Connection | None]:
        """A line for people, and the connection's status (None when there is none)."""
        try:
            connection = self.broker.status(self.connection_id)
        except NotFoundError:
            return "Not connected", None
        except requests.RequestException:
            return "Unknown: the connection broker is unreachable", None
        except BrokerError as refused:
            return f"Unknown ({code_of(refused)})", None
        user = connection.provider_user or {}
        who = " ".join(filter(None, [user.get("name"), f"({user['email']})" if user.get("email") else None]))
        if connection.status == "active":
            return (f"Connected as {who}" if who else "Connected"), connection
        if connection.status == "needs_reauth":
            return (f"Needs to be connected again ({who})" if who else "Needs to be connected again"), connection
        return str(connection.status), connection

    def page(self, message: str, call_result: str = "", contacts: tuple[list, str | None] | None = None,
             test_key: tuple[str, str] | None = None) -> str:
        status, connection = self.connection_status()
        return pages.page(message, status, connection, call_result=call_result, contacts=contacts,
                          test_key=test_key, offer_test_key=bool(self.standin_url),
                          webhooks=list(self.inbox.received) if self.inbox.secret else None)


class _Handler(BaseHTTPRequestHandler):
    server_version = "DemoSaaS/1.0"
    disable_nagle_algorithm = True

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/webhooks.json":
            return self._send(*self.server.app.inbox.as_json())
        if path == "/connect.js":
            return self._send(200, {"Content-Type": "text/javascript; charset=utf-8"}, CONNECT_JS.read_text())
        if path != "/":
            return self._send(404, {}, "Not found")
        self._send(*self.server.app.home(dict(parse_qsl(query)), self._session()))

    def do_POST(self):
        if urlsplit(self.path).path == "/webhooks":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_WEBHOOK_BYTES:
                return self._send(413, {}, "Too large")
            headers = {name.lower(): value for name, value in self.headers.items()}
            return self._send(*self.server.app.inbox.receive(headers, self.rfile.read(length)))
        # Only /complete carries fields (the popup's outcome); the forms carry nothing.
        form = dict(parse_qsl(self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 4096)).decode()))
        app = self.server.app
        route = {"/connect": lambda: app.connect(self._session()),
                 "/connect-api-key": lambda: app.connect(self._session(), auth_mode="api_key"),
                 "/connect-popup": lambda: app.connect(self._session(), display="popup"),
                 "/connect-api-key-popup": lambda: app.connect(self._session(), auth_mode="api_key", display="popup"),
                 "/complete": lambda: app.complete(form, self._session()),
                 "/test-key": app.issue_test_key,
                 "/call": app.call_insightly, "/contacts": app.list_contacts, "/disconnect": app.disconnect,
                 "/sync": app.background_sync}
        action = route.get(urlsplit(self.path).path)
        if action is None:
            return self._send(404, {}, "Not found")
        self._send(*action())

    def _session(self) -> dict:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie") or "")
        except Exception:  # noqa: BLE001 - a garbled cookie is no session
            jar = SimpleCookie()
        cookie = jar[SESSION_COOKIE].value if SESSION_COOKIE in jar else None
        self._session_cookie, data = self.server.app.session(cookie)
        return data

    def _send(self, status: int, headers: dict, body: str) -> None:
        raw = body.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(raw)),
                            "Cache-Control": "no-store", **headers}.items():
            self.send_header(name, value)
        session_cookie = getattr(self, "_session_cookie", None)
        if session_cookie:
            self.send_header("Set-Cookie", f"{SESSION_COOKIE}={session_cookie}; Path=/; HttpOnly; SameSite=Lax")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format, *args):  # quiet: the query carries nothing secret, but stay tidy
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The demo SaaS app for Insightly Connect")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--broker-url", default="http://127.0.0.1:3000")
    args = parser.parse_args(argv)
    app = DemoApp(args.host, args.port, args.broker_url).start()
    print(f"Demo SaaS at {app.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()


if __name__ == "__main__":
    main()
