"""`make smoke` (`python -m tests.smoke`): a few read-only checks of a running broker.

    make smoke                                   starts the local stack on free ports, checks it
    API_URL=https://abc.execute-api.eu-west-1.amazonaws.com AWS_REGION=eu-west-1 make smoke
                                                 checks a deployed stack with your AWS credentials

Against a deployed stack the backend calls are signed (SigV4, service execute-api) with
botocore's default credential chain (AWS_PROFILE, environment, SSO, instance role...).
Optional: RETURN_TO (a URL on the stack's AllowedReturnOrigins; default
https://app.example.com/smoke, the template's default origin), AUTH_MODE (oauth2 or
api_key: the kind of connect session to create; default oauth2), PROVIDER_AUTHORIZE_URL
(the authorize redirect must start with it), OPENAPI (the contract to validate against;
default docs/openapi.yaml, which must exist).

The checks: an unsigned backend call is 403; a signed POST /connect-sessions creates a
session; its connect_url answers the provider redirect (oauth2: 302 to the authorize URL)
or the key page (api_key: 200 HTML), without following the redirect off the API; an
unknown connection is 404; every answer above matches the OpenAPI document. The only thing
written is that one connect session (and, for oauth2, the OAuth state its connect_url
starts): both expire after 600 s. One line per check; exit status 1 when one fails,
2 when the smoke test cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from tests.support.openapi import DOCUMENT, Contract, load_document

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RETURN_TO = "https://app.example.com/smoke"
TIMEOUT = 15


@dataclass
class Exchange:
    """One request the smoke test made and what it got, for the OpenAPI check."""

    method: str
    path: str  # as requested, e.g. /connections/smoke-unknown-1a2b
    status: int
    headers: dict
    body: bytes


@dataclass
class Target:
    url: str
    region: str
    credentials: object  # botocore Credentials
    return_to: str = DEFAULT_RETURN_TO
    auth_mode: str = "oauth2"
    authorize_url: str | None = None
    openapi: Path = DOCUMENT
    exchanges: list[Exchange] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # what one check hands the next (the session)

    def request(self, method: str, path: str, *, body: dict | None = None, signed: bool = True,
                url: str | None = None) -> requests.Response:
        url = url or self.url.rstrip("/") + path
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if signed:
            signing = AWSRequest(method=method, url=url, data=data, headers=headers)
            SigV4Auth(self.credentials, "execute-api", self.region).add_auth(signing)
            headers = dict(signing.headers)
        # Never follow a redirect: the provider's page is off the API, and not ours to call.
        answer = requests.request(method, url, data=data, headers=headers, timeout=TIMEOUT, allow_redirects=False)
        # The path as the API sees it: without the base path of API_URL (a stage, a mapping).
        api_path = urlsplit(url).path[len(urlsplit(self.url).path.rstrip("/")):] or "/"
        self.exchanges.append(Exchange(method, api_path, answer.status_code, dict(answer.headers),
                                       answer.content))
        return answer


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def described(answer: requests.Response) -> str:
    text = answer.text[:200].replace("\n", " ")
    return f"HTTP {answer.status_code} {text}"


# -- the checks ----------------------------------------------------------------------------------

def unsigned_call_is_403(target: Target) -> str:
    answer = target.request("GET", "/connections/smoke-unsigned", signed=False)
    expect(answer.status_code == 403, f"an unsigned backend call answered {described(answer)}, not 403")
    return "GET /connections/{id} without a signature: 403"


def connect_session_is_created(target: Target) -> str:
    connection_id = f"smoke-{secrets.token_hex(6)}"
    answer = target.request("POST", "/connect-sessions",
                            body={"connection_id": connection_id, "return_to": target.return_to,
                                  "auth_mode": target.auth_mode})
    hint = ""
    if answer.status_code == 400 and "return_to" in answer.text:
        hint = " (set RETURN_TO to a URL on the stack's AllowedReturnOrigins)"
    expect(answer.status_code == 201, f"POST /connect-sessions answered {described(answer)}{hint}")
    session = answer.json()
    expect(bool(session.get("connect_url")) and bool(session.get("session_id")),
           f"the session has no connect_url or session_id: {sorted(session)}")
    target.state["session"] = session
    return f"POST /connect-sessions: 201, {target.auth_mode} session for {connection_id}"


def connect_url_answers(target: Target) -> str:
    session = target.state.get("session")
    expect(session is not None, "no connect session (the check before failed)")
    url = session["connect_url"]
    answer = target.request("GET", url, signed=False, url=url)
    if target.auth_mode == "api_key":
        expect(answer.status_code == 200 and answer.headers.get("Content-Type", "").startswith("text/html"),
               f"the key page answered {described(answer)}, not 200 HTML")
        return "connect_url: 200, the API-key page"
    expect(answer.status_code == 302, f"connect_url answered {described(answer)}, not a 302 to the provider")
    location = answer.headers.get("Location", "")
    query = parse_qs(urlsplit(location).query)
    expect(urlsplit(location).scheme in ("https", "http") and urlsplit(location).netloc != "",
           f"the redirect is not to an absolute URL: {location[:100]!r}")
    if target.authorize_url:
        expect(location.startswith(target.authorize_url),
               f"the redirect goes to {location.split('?')[0]}, not {target.authorize_url}")
    missing = [name for name in ("response_type", "client_id", "redirect_uri", "state") if not query.get(name)]
    expect(not missing, f"the authorize redirect lacks {', '.join(missing)}")
    expect(query["redirect_uri"][0].endswith("/oauth/callback"),
           "the authorize redirect's redirect_uri is not this API's /oauth/callback")
    return f"connect_url: 302 to {location.split('?')[0]}"


def unknown_connection_is_404(target: Target) -> str:
    connection_id = f"smoke-unknown-{secrets.token_hex(6)}"
    answer = target.request("GET", f"/connections/{quote(connection_id)}")
    expect(answer.status_code == 404, f"an unknown connection answered {described(answer)}, not 404")
    return "GET /connections/{unknown}: 404"


def answers_match_openapi(target: Target) -> str:
    contract = Contract(load_document(target.openapi))
    problems = [problem for x in target.exchanges
                for problem in contract.problems(x.method, x.path, x.status, x.headers, x.body)]
    expect(not problems, "; ".join(problems))
    return f"{len(target.exchanges)} answers match {_relative(target.openapi)}"


CHECKS: list[tuple[str, Callable[[Target], str]]] = [
    ("unsigned backend call is 403", unsigned_call_is_403),
    ("signed connect session is created", connect_session_is_created),
    ("connect_url answers", connect_url_answers),
    ("unknown connection is 404", unknown_connection_is_404),
    ("answers match the OpenAPI document", answers_match_openapi),
]


def run_checks(target: Target, out=print) -> bool:
    """Every check, one line each; True when none failed."""
    ok = True
    for name, check in CHECKS:
        try:
            detail = check(target)
            verdict = "SKIP" if detail.startswith("SKIP: ") else "PASS"
            detail = detail.removeprefix("SKIP: ")
        except CheckFailed as failure:
            verdict, detail, ok = "FAIL", str(failure), False
        except requests.RequestException as error:
            verdict, detail, ok = "FAIL", f"no answer: {type(error).__name__}: {error}", False
        out(f"{verdict}  {name}: {detail}")
    return ok


def find_openapi(environ) -> Path:
    return Path(environ["OPENAPI"]) if environ.get("OPENAPI") else DOCUMENT


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# -- make smoke ------------------------------------------------------------------------------------

def region_of(api_url: str) -> str | None:
    match = re.search(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com", urlsplit(api_url).netloc)
    return match.group(1) if match else None


def say(line: str) -> None:
    print(line, file=sys.__stdout__, flush=True)


def main(environ=os.environ, out=say) -> int:
    auth_mode = environ.get("AUTH_MODE", "oauth2")
    if auth_mode not in ("oauth2", "api_key"):
        out("AUTH_MODE must be oauth2 or api_key")
        return 2
    options = {"return_to": environ.get("RETURN_TO") or DEFAULT_RETURN_TO, "auth_mode": auth_mode,
               "authorize_url": environ.get("PROVIDER_AUTHORIZE_URL") or None, "openapi": find_openapi(environ)}
    api_url = environ.get("API_URL")
    if api_url:
        import botocore.session

        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or region_of(api_url)
        credentials = botocore.session.get_session().get_credentials()
        if not region or credentials is None:
            out("make smoke with API_URL needs AWS_REGION and AWS credentials (botocore's default chain)")
            return 2
        out(f"smoke test of {api_url} ({region})")
        return 0 if run_checks(Target(api_url, region, credentials, **options), out) else 1

    out("smoke test of a local stack (set API_URL=... AWS_REGION=... for a deployed one)")
    # The in-process functions log to stdout; their lines go to stderr, so stdout is the checks.
    warnings.filterwarnings("ignore", "No application metrics to publish")
    with contextlib.redirect_stdout(sys.stderr):
        return _check_local_stack(options, out)


def _check_local_stack(options: dict, out) -> int:
    from botocore.credentials import Credentials

    from local import start_local_stack

    local = start_local_stack(demo=False, schedule=False,
                              AllowedReturnOrigins=f"{urlsplit(options['return_to']).scheme}://"
                                                   f"{urlsplit(options['return_to']).netloc}")
    try:
        options["authorize_url"] = options["authorize_url"] or local.stack.parameters["ProviderAuthorizeUrl"]
        target = Target(local.gateway_url, local.region, Credentials(local.access_key, local.secret_key), **options)
        return 0 if run_checks(target, out) else 1
    finally:
        local.stop()


if __name__ == "__main__":
    sys.exit(main())
