from broker.connect.oauth_flow import pkce_challenge, pkce_verifier
from broker.credentials.provider import TokenSet
from broker.credentials.refresh_failures import cooldown
from broker.credentials.tokens import backoff, expiry_and_due, sealed_fields
from broker.http.requests_in import RANDOM_TOKEN

NO_JITTER = {"jitter": lambda low, high: 0}


def test_refresh_is_due_the_lead_time_before_expiry():
    assert expiry_and_due(3600, True, now=1000, lead=300, **NO_JITTER) == (4600, 4300)


def test_due_times_are_spread_so_connections_made_together_do_not_refresh_together():
    dues = {expiry_and_due(3600, True, now=1000, lead=300)[1] for _ in range(200)}
    assert len(dues) > 50 and min(dues) >= 4600 - 300 - 300 and max(dues) <= 4300


def test_short_lived_tokens_are_not_refreshed_before_half_their_life():
    assert expiry_and_due(120, True, now=1000, lead=300) == (1120, 1060)


def test_a_token_without_a_refresh_token_is_never_due():
    assert expiry_and_due(3600, False, now=1000, lead=300) == (4600, None)


def test_a_token_without_expiry_gets_a_keep_alive_refresh():
    assert expiry_and_due(None, True, now=1000, lead=300, keep_alive=86400) == (None, 87400)
    assert expiry_and_due(None, True, now=1000, lead=300, keep_alive=0) == (None, None)


def test_a_long_lived_token_is_refreshed_at_least_every_keep_alive_interval():
    assert expiry_and_due(90 * 86400, True, now=0, lead=300, keep_alive=7 * 86400, **NO_JITTER)[1] == 7 * 86400


def test_backoff_is_capped_exponential_with_full_jitter():
    top = {attempt: backoff(attempt, jitter=lambda low, high: high) for attempt in range(1, 8)}
    assert top == {1: 1.0, 2: 2.0, 3: 4.0, 4: 4.0, 5: 4.0, 6: 4.0, 7: 4.0}
    assert backoff(3, jitter=lambda low, high: low) == 0


def test_a_failing_connection_cools_down_longer_each_time_up_to_an_hour():
    assert [cooldown(n, jitter=lambda low, high: 1.0) for n in (1, 2, 3, 7, 20)] == [60, 120, 240, 3600, 3600]


def test_a_refresh_without_a_new_refresh_token_keeps_the_old_one():
    sealed = sealed_fields(TokenSet(access_token="new-at"), {"refresh_token": "old-rt", "scope": "all"})
    assert sealed == {"access_token": "new-at", "refresh_token": "old-rt", "token_type": "Bearer", "scope": "all"}


def test_a_rotated_refresh_token_replaces_the_old_one():
    sealed = sealed_fields(TokenSet(access_token="new-at", refresh_token="new-rt"), {"refresh_token": "old-rt"})
    assert sealed["refresh_token"] == "new-rt"


def test_pkce_verifier_is_valid_rfc7636_and_bound_to_cookie_and_state():
    state, cookie = "s" * 43, "c" * 43
    verifier = pkce_verifier(cookie, state)
    assert 43 <= len(verifier) <= 128 and RANDOM_TOKEN.fullmatch(verifier)
    assert verifier == pkce_verifier(cookie, state)
    assert verifier != pkce_verifier("d" * 43, state) != pkce_verifier(cookie, "t" * 43)
    # RFC 7636 appendix B example
    rfc_verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    rfc_challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce_challenge(rfc_verifier) == rfc_challenge
