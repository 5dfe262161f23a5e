"""FakeInsightly's API, in-process through `responses`: the per-pod API-key side, the same
Contacts surface for Bearer tokens, the daily quota and the faults. The broker's own client
(broker.credentials.insightly) is the caller where it can be, so the fake is checked against what the
broker will really send."""

from __future__ import annotations

import pytest
import requests
import responses

from broker.credentials.insightly import ApiKeyAuth, ApiKeyRejected, BearerAuth, InsightlyApi, QuotaExhausted
from broker.platform.errors import ProviderUnavailable
from broker.platform.outbound import MAX_RETRY_AFTER
from local.fake_insightly import DAY, FakeInsightly


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fake(clock):
    provider = FakeInsightly(clock=clock)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        provider.install(mock)
        yield provider


def bearer_token(fake: FakeInsightly) -> str:
    return fake._issue()["access_token"]


def call(method: str, url: str, auth, **kw) -> requests.Response:
    return requests.request(method, url, auth=auth, timeout=5, **kw)


# -- Users/Me with an API key -------------------------------------------------------------------

def test_a_key_answers_users_me_on_its_pod_with_the_quota(fake):
    issued = fake.issue_api_key("eu1", user={"USER_ID": 9, "EMAIL_ADDRESS": "k@example.com", "FIRST_NAME": "K"})
    assert issued["api_url"] == "https://api.eu1.insightly.com/v3.1"
    user, rate = InsightlyApi().users_me(issued["api_url"], ApiKeyAuth(issued["api_key"]))
    assert user == {"id": "9", "email": "k@example.com", "name": "K"}
    assert (rate.limit, rate.remaining) == (1000, 999)
    assert fake.calls["users_me"] == 1


def test_a_key_is_refused_on_another_pod_and_at_the_bearer_url(fake):
    key = fake.issue_api_key("na1")["api_key"]
    for url in ("https://api.eu1.insightly.com/v3.1", fake.base_url):
        with pytest.raises(ApiKeyRejected):
            InsightlyApi().users_me(url, ApiKeyAuth(key))


@pytest.mark.parametrize("auth_for", [lambda key: ApiKeyAuth("key-unknown-0000"), lambda key: (key, "not-empty"),
                                      lambda key: None, lambda key: BearerAuth(key)],
                         ids=["unknown key", "password", "no auth", "key as bearer"])
def test_anything_but_a_live_key_with_an_empty_password_is_401_without_quota(fake, auth_for):
    issued = fake.issue_api_key("na1")
    answer = call("GET", issued["api_url"] + "/Users/Me", auth_for(issued["api_key"]))
    assert answer.status_code == 401 and "X-RateLimit-Remaining" not in answer.headers
    assert fake.accounts[issued["account"]].used == 0


def test_a_regenerated_key_revokes_the_old_one(fake):
    issued = fake.issue_api_key("na1")
    new_key = fake.regenerate_api_key(issued["account"])
    with pytest.raises(ApiKeyRejected):
        InsightlyApi().users_me(issued["api_url"], ApiKeyAuth(issued["api_key"]))
    assert InsightlyApi().users_me(issued["api_url"], ApiKeyAuth(new_key))[0]["id"]
    assert fake.snapshot()["revoked_api_keys"] == 1 and fake.snapshot()["live_api_keys"] == 1


def test_issue_refuses_a_bad_pod():
    with pytest.raises(ValueError):
        FakeInsightly().issue_api_key("evil.example")


# -- the daily quota -----------------------------------------------------------------------------

def test_every_call_spends_one_and_past_the_limit_is_429_until_the_window_moves(fake, clock):
    issued = fake.issue_api_key("na1", daily_limit=2)
    api, auth = InsightlyApi(), ApiKeyAuth(issued["api_key"])
    assert [api.users_me(issued["api_url"], auth)[1].remaining for _ in range(2)] == [1, 0]
    clock.now += 3600
    with pytest.raises(QuotaExhausted) as caught:
        api.users_me(issued["api_url"], auth)
    # The fake asks for the rest of the window (23 h); the broker believes at most an hour of it.
    assert caught.value.retry_after == MAX_RETRY_AFTER and caught.value.rate_limit.remaining == 0
    clock.now += DAY - 3600
    assert api.users_me(issued["api_url"], auth)[1].remaining == 1


def test_set_quota_sets_what_is_left(fake):
    issued = fake.issue_api_key("na1")
    assert fake.set_quota(issued["account"], remaining=1, limit=50) == {"limit": 50, "remaining": 1}
    rate = InsightlyApi().users_me(issued["api_url"], ApiKeyAuth(issued["api_key"]))[1]
    assert (rate.limit, rate.remaining, rate.is_exhausted()) == (50, 0, True)


def test_set_quota_refuses_nonsense(fake):
    with pytest.raises(ValueError):
        fake.set_quota("acct-404", remaining=1)
    with pytest.raises(ValueError):
        fake.set_quota(fake.issue_api_key()["account"], remaining=-1)


def test_bearer_calls_count_against_the_oauth_account(fake):
    token = bearer_token(fake)
    fake.set_quota("oauth", remaining=0)
    answer = call("GET", f"{fake.base_url}/Users/Me", BearerAuth(token))
    assert answer.status_code == 429 and answer.headers["X-RateLimit-Remaining"] == "0"


def test_reset_refills_the_quota_and_tokens_true_forgets_keys(fake):
    issued = fake.issue_api_key("na1")
    fake.set_quota(issued["account"], remaining=0)
    fake.reset()
    assert fake.snapshot()["accounts"][issued["account"]]["remaining"] == 1000
    fake.reset(tokens=True)
    assert fake.snapshot()["live_api_keys"] == 0 and set(fake.snapshot()["accounts"]) == {"oauth"}


def test_the_snapshot_never_holds_a_key(fake):
    issued = fake.issue_api_key("na1")
    fake.regenerate_api_key(issued["account"])
    assert not any(key in str(fake.snapshot()) for key in fake.issued)


# -- Contacts, for both kinds ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["api_key", "bearer"])
def test_contacts_create_get_and_page_with_a_total(fake, kind):
    if kind == "api_key":
        issued = fake.issue_api_key("au1")
        base, auth = issued["api_url"], ApiKeyAuth(issued["api_key"])
    else:
        base, auth = fake.base_url, BearerAuth(bearer_token(fake))
    created = [call("POST", f"{base}/Contacts", auth, json={"FIRST_NAME": f"C{i}"}).json() for i in range(5)]
    assert [c["CONTACT_ID"] for c in created] == [1, 2, 3, 4, 5]
    one = call("GET", f"{base}/Contacts/3", auth)
    assert one.status_code == 200 and one.json()["FIRST_NAME"] == "C2"
    page = call("GET", f"{base}/Contacts", auth, params={"top": 2, "skip": 1, "count_total": "true"})
    assert [c["CONTACT_ID"] for c in page.json()] == [2, 3] and page.headers["X-Total-Count"] == "5"
    assert "X-Total-Count" not in call("GET", f"{base}/Contacts", auth).headers
    assert call("GET", f"{base}/Contacts/99", auth).status_code == 404
    assert int(page.headers["X-RateLimit-Remaining"]) < int(page.headers["X-RateLimit-Limit"])


def test_contacts_are_per_account(fake):
    first, second = fake.issue_api_key("na1"), fake.issue_api_key("na1")
    call("POST", f"{first['api_url']}/Contacts", ApiKeyAuth(first["api_key"]), json={"FIRST_NAME": "A"})
    assert call("GET", f"{second['api_url']}/Contacts", ApiKeyAuth(second["api_key"])).json() == []


@pytest.mark.parametrize(("method", "path", "kw", "status"), [
    ("GET", "/Contacts?top=501", {}, 400), ("GET", "/Contacts?top=x", {}, 400), ("GET", "/Contacts?skip=-1", {}, 400),
    ("POST", "/Contacts", {"data": "not json"}, 400), ("POST", "/Contacts", {"json": [1]}, 400),
    ("GET", "/Contacts/abc", {}, 404), ("POST", "/Users/Me", {}, 405),
])
def test_bad_contact_requests_are_4xx(fake, method, path, kw, status):
    issued = fake.issue_api_key("na1")
    assert call(method, issued["api_url"] + path, ApiKeyAuth(issued["api_key"]), **kw).status_code == status


# -- faults ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "error"), [("429", ProviderUnavailable), ("500", ProviderUnavailable),
                                              ("timeout", ProviderUnavailable)])
def test_api_faults_reach_the_api_key_routes_once_each(fake, fault, error):
    issued = fake.issue_api_key("na1")
    fake.fail_next(fault, on="api")
    with pytest.raises(error) as caught:
        InsightlyApi().users_me(issued["api_url"], ApiKeyAuth(issued["api_key"]))
    if fault == "429":
        assert caught.value.retry_after == fake.retry_after
    assert InsightlyApi().users_me(issued["api_url"], ApiKeyAuth(issued["api_key"]))[0]


def test_api_faults_reach_bearer_calls_but_leave_the_token_endpoint_alone(fake):
    token = bearer_token(fake)
    fake.fail_next("500", on="api")
    assert call("GET", f"{fake.base_url}/Users/Me", BearerAuth(token)).status_code == 500
    assert fake.faults == type(fake.faults)()  # the token endpoint's queue is untouched


def test_token_faults_do_not_reach_the_api(fake):
    issued = fake.issue_api_key("na1")
    fake.fail_next("500")
    assert call("GET", issued["api_url"] + "/Users/Me", ApiKeyAuth(issued["api_key"])).status_code == 200
    assert list(fake.faults) == ["500"]


@pytest.mark.parametrize(("fault", "on"), [("invalid_grant", "api"), ("teapot", "token"), ("500", "elsewhere")])
def test_unknown_faults_are_refused(fault, on):
    with pytest.raises(ValueError):
        FakeInsightly().fail_next(fault, on=on)
