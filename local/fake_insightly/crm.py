"""The CRM records one account answers with: Users/Me and a small Contacts surface. Each
operation takes the account, the query string, the body and the clock, and answers
(status, extra headers, JSON body)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from local.fake_insightly.accounts import Account

MAX_TOP = 500  # Insightly's largest page
# The API's paths under a base URL, as (method, pattern) -> route name (the `calls` key).
API_ROUTES = (("GET", re.compile(r"/Users/Me"), "users_me"),
              ("GET", re.compile(r"/Contacts"), "list_contacts"),
              ("POST", re.compile(r"/Contacts"), "create_contact"),
              ("GET", re.compile(r"/Contacts/(?P<id>[0-9]{1,18})"), "get_contact"))

Answer = tuple[int, dict, object]


def users_me(account: Account, _query: str, _body, _clock: Callable[[], float]) -> Answer:
    return 200, {}, dict(account.user)


def list_contacts(account: Account, query: str, _body, _clock: Callable[[], float]) -> Answer:
    params = dict(parse_qsl(query, keep_blank_values=True))
    try:
        top, skip = int(params.get("top", "100")), int(params.get("skip", "0"))
    except ValueError:
        return 400, {}, {"Message": "top and skip must be integers"}
    if not 0 <= top <= MAX_TOP or skip < 0:
        return 400, {}, {"Message": f"top must be 0-{MAX_TOP} and skip 0 or more"}
    contacts = [account.contacts[i] for i in sorted(account.contacts)]
    extra = {"X-Total-Count": str(len(contacts))} if params.get("count_total", "").lower() == "true" else {}
    return 200, extra, contacts[skip:skip + top]


def create_contact(account: Account, _query: str, body, clock: Callable[[], float]) -> Answer:
    try:
        data = json.loads(body or b"")
    except ValueError:
        return 400, {}, {"Message": "The body is not JSON"}
    if not isinstance(data, dict):
        return 400, {}, {"Message": "The body must be a contact object"}
    contact_id = max(account.contacts, default=0) + 1
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(clock()))
    account.contacts[contact_id] = contact = {**data, "CONTACT_ID": contact_id, "DATE_CREATED_UTC": created}
    return 200, {}, dict(contact)


def get_contact(account: Account, _query: str, _body, _clock: Callable[[], float], id: str) -> Answer:  # noqa: A002 - the path's name
    contact = account.contacts.get(int(id))
    return (200, {}, dict(contact)) if contact else (404, {}, {"Message": "Contact not found"})


RECORDS: dict[str, Callable[..., Answer]] = {"users_me": users_me, "list_contacts": list_contacts,
                                             "create_contact": create_contact, "get_contact": get_contact}


def route(method: str, path: str) -> tuple[str, re.Match] | None:
    """The route name and its path match, or None."""
    return next(((name, found) for m, pattern, name in API_ROUTES
                 if m == method and (found := pattern.fullmatch(path))), None)


def known_path(path: str) -> bool:
    """Whether some method has a route at `path` (405 rather than 404)."""
    return any(pattern.fullmatch(path) for _, pattern, _ in API_ROUTES)
