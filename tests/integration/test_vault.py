"""TokenVault: envelope encryption under KMS (moto), bound to one connection (finding 6 of issue 7)."""

from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from broker.credentials.data_key_cache import DataKeyCache
from broker.credentials.vault import PURPOSE, TokenVault
from broker.platform.errors import CredentialsUnreadable, VaultUnavailable
from tests.integration.test_tokens import make_due, stored_token_set

# A token set past KMS Encrypt's 4,096-byte plaintext limit: JWT access tokens with many
# claims, or a provider that packs the user's grants into the token, get there.
LARGE_TOKEN_SET = {"access_token": "at-" + "a" * 20_000, "refresh_token": "rt-" + "r" * 600,
                   "token_type": "Bearer", "scope": "contacts leads"}


@pytest.fixture
def kms_calls(stack):
    """The KMS operations the vault makes, by name (counted on the client it is given)."""
    kms, calls = boto3.client("kms"), []
    kms.meta.events.register("before-call.kms.*", lambda model, **_: calls.append(model.name))
    return kms, calls


@pytest.fixture
def vault(stack, kms_calls):
    kms, _ = kms_calls
    return TokenVault(kms, stack.refs["TokenKey"])


@pytest.fixture
def cached_vault(stack, kms_calls):
    kms, _ = kms_calls
    return TokenVault(kms, stack.refs["TokenKey"], cache=DataKeyCache())


def test_a_token_set_larger_than_4_kb_seals_and_opens(vault):
    sealed = vault.seal("user-1", LARGE_TOKEN_SET)

    assert vault.open("user-1", sealed) == LARGE_TOKEN_SET
    assert LARGE_TOKEN_SET["access_token"].encode() not in sealed


def test_seal_and_open_make_one_kms_call_each_and_never_send_the_token_set_to_kms(vault, kms_calls, stack):
    _, calls = kms_calls
    sent = []
    vault._kms.meta.events.register("before-call.kms.*", lambda params, **_: sent.append(repr(params)))

    sealed = vault.seal("user-1", LARGE_TOKEN_SET)
    assert calls == ["GenerateDataKey"]
    vault.open("user-1", sealed)
    assert calls == ["GenerateDataKey", "Decrypt"]
    assert not any("a" * 100 in request for request in sent)


def test_a_ciphertext_copied_to_another_connection_does_not_open(vault):
    sealed = vault.seal("user-1", LARGE_TOKEN_SET)

    with pytest.raises(CredentialsUnreadable):
        vault.open("user-2", sealed)


@pytest.mark.parametrize("where", ["format byte", "wrapped key", "nonce", "ciphertext", "tag", "truncated", "empty"])
def test_a_tampered_ciphertext_does_not_open(vault, where):
    sealed = bytearray(vault.seal("user-1", {"access_token": "at-1", "refresh_token": "rt-1"}))
    wrapped_end = 3 + int.from_bytes(sealed[1:3], "big")
    flip = {"format byte": 0, "wrapped key": wrapped_end - 1, "nonce": wrapped_end + 1, "ciphertext": wrapped_end + 13,
            "tag": len(sealed) - 1}
    if where == "truncated":
        sealed = sealed[:wrapped_end + 20]
    elif where == "empty":
        sealed = bytearray()
    else:
        sealed[flip[where]] ^= 0x01

    with pytest.raises(CredentialsUnreadable):
        vault.open("user-1", bytes(sealed))


def test_token_sets_sealed_directly_by_kms_before_envelope_encryption_still_open(vault, stack):
    legacy = boto3.client("kms").encrypt(
        KeyId=stack.refs["TokenKey"], Plaintext=b'{"access_token":"at-old","refresh_token":"rt-old"}',
        EncryptionContext={"connection_id": "user-1", "purpose": PURPOSE})["CiphertextBlob"]

    assert vault.open("user-1", legacy) == {"access_token": "at-old", "refresh_token": "rt-old"}
    with pytest.raises(CredentialsUnreadable):
        vault.open("user-2", legacy)


@pytest.mark.parametrize("fault", ["DisabledException", "KMSInternalException", "ThrottlingException",
                                   "no connection"])
def test_a_kms_fault_is_a_vault_fault_not_a_broken_connection(vault, fault):
    sealed = vault.seal("user-1", LARGE_TOKEN_SET)

    def failing(**_):  # KMS answers with an error (a before-call answer is used as the response)
        if fault == "no connection":
            raise EndpointConnectionError(endpoint_url="https://kms.us-east-1.amazonaws.com")
        return SimpleNamespace(status_code=400), {"Error": {"Code": fault, "Message": "no"}, "ResponseMetadata": {}}

    vault._kms.meta.events.register_first("before-call.kms.*", failing)

    with pytest.raises(VaultUnavailable):
        vault.seal("user-1", LARGE_TOKEN_SET)
    with pytest.raises(VaultUnavailable):
        vault.open("user-1", sealed)


def test_a_provider_issuing_token_sets_over_4_kb_connects_and_keeps_its_rotated_refresh_token(
        broker, provider, dynamodb, stack, monkeypatch):
    # Given a provider whose access tokens are 20 KB (a JWT with many claims)
    issue = provider._issue

    def large_tokens(keep_refresh=None):
        body = issue(keep_refresh)
        large = body["access_token"] + "." + "c" * 20_000
        provider.access_tokens[large] = provider.access_tokens[body["access_token"]]
        body["access_token"] = large
        return body

    monkeypatch.setattr(provider, "_issue", large_tokens)

    # When a browser connects, and later the token is due and refreshed
    broker.connect("user-1")
    first = broker.call("GET", "/connections/user-1/token")
    make_due(dynamodb, stack)
    refreshed = broker.call("GET", "/connections/user-1/token")

    # Then both answers carry the large token, and the rotated refresh token is stored
    assert first.status == 200 and len(first.json["access_token"]) > 20_000
    assert refreshed.status == 200 and refreshed.json["access_token"] != first.json["access_token"]
    _, sealed = stored_token_set(stack)
    assert sealed["access_token"] == refreshed.json["access_token"]
    assert [sealed["refresh_token"]] == provider.current_refresh_tokens


# -- the data-key cache (issue 16): a warm open makes no KMS call -----------------------------

def test_a_warm_open_of_the_same_blob_makes_no_kms_call(cached_vault, kms_calls):
    _, calls = kms_calls
    sealed = cached_vault.seal("user-1", LARGE_TOKEN_SET)

    opened = [cached_vault.open("user-1", sealed) for _ in range(3)]

    assert opened == [LARGE_TOKEN_SET] * 3
    assert calls == ["GenerateDataKey", "Decrypt"]


def test_a_resealed_credential_is_opened_by_kms_again(cached_vault, kms_calls):
    _, calls = kms_calls
    cached_vault.open("user-1", cached_vault.seal("user-1", {"access_token": "at-1"}))

    rekeyed = cached_vault.seal("user-1", {"access_token": "at-2"})  # a refresh or a reconnect

    assert cached_vault.open("user-1", rekeyed) == {"access_token": "at-2"}
    assert calls.count("Decrypt") == 2


def test_a_cached_key_does_not_open_the_blob_as_another_connection(cached_vault, kms_calls):
    sealed = cached_vault.seal("user-1", LARGE_TOKEN_SET)
    cached_vault.open("user-1", sealed)

    with pytest.raises(CredentialsUnreadable):
        cached_vault.open("user-2", sealed)  # KMS is asked under user-2's context, and refuses


@pytest.mark.parametrize("where", ["ciphertext", "kms refuses"])
def test_a_failed_open_wipes_the_cache(cached_vault, kms_calls, where):
    _, calls = kms_calls
    other = cached_vault.seal("user-2", {"access_token": "at-2"})
    cached_vault.open("user-2", other)
    sealed = bytearray(cached_vault.seal("user-1", {"access_token": "at-1"}))
    if where == "ciphertext":
        cached_vault.open("user-1", bytes(sealed))  # its key is cached: the tampered blob fails on the tag
        sealed[-1] ^= 0x01
    else:  # a blob whose wrapped key KMS does not open
        sealed[3 + int.from_bytes(sealed[1:3], "big") - 1] ^= 0x01
    decrypts = calls.count("Decrypt")

    with pytest.raises(CredentialsUnreadable):
        cached_vault.open("user-1", bytes(sealed))

    assert len(cached_vault._cache) == 0
    cached_vault.open("user-2", other)
    assert calls.count("Decrypt") == decrypts + (1 if where == "ciphertext" else 2)
