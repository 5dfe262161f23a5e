"""TokenVault: credentials in and out of KMS, bound to one connection by encryption context.

Envelope encryption: each seal asks KMS for a fresh AES-256 data key (GenerateDataKey, under
the connection's encryption context) and encrypts the token set locally with AES-256-GCM, so
a token set of any size fits (KMS Encrypt stops at 4,096 bytes). The blob keeps the wrapped
data key beside the ciphertext:

    0xE1 | len(wrapped key), 2 bytes big-endian | wrapped key | nonce (12) | ciphertext + tag (16)

The GCM associated data is that header plus the encryption context, so neither the wrapped key
nor the connection can be swapped. A seal may also bind attributes the item stores in plaintext
(an API key's pod, which decides where the key is sent): they join the associated data, the
blob starts with 0xE2 instead, and it opens only with the same values. Blobs written before
(KMS Encrypt output, which starts with another byte) are still opened with a direct KMS
Decrypt. One KMS call per seal, and one per open unless the container's DataKeyCache
(broker.credentials.data_key_cache) still holds the opened data key of that wrapped key and context.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.credentials.data_key_cache import DataKeyCache
from broker.platform.errors import CredentialsUnreadable, VaultUnavailable

PURPOSE = "oauth2-token-set"  # the default: an OAuth token set
API_KEY_PURPOSE = "insightly-api-key"
ENVELOPE_V1 = 0xE1  # never the first byte of a KMS ciphertext blob (those start with 0x01)
ENVELOPE_BOUND = 0xE2  # as ENVELOPE_V1, with bound attributes in the associated data
NONCE_BYTES = 12
TAG_BYTES = 16
# KMS says the context does not match (or the blob is not one of its own): not this connection's.
NOT_THIS_CONNECTION = ("InvalidCiphertextException", "IncorrectKeyException")


def _unreadable() -> CredentialsUnreadable:
    return CredentialsUnreadable("the stored credentials do not belong to this connection; reconnect it")


class TokenVault:
    def __init__(self, kms, key_id: str, *, cache: DataKeyCache | None = None):
        self._kms = kms
        self._key_id = key_id
        self._cache = cache

    @staticmethod
    def _context(connection_id: str, purpose: str) -> dict[str, str]:
        # The context is logged by CloudTrail: it names the connection and the credential kind,
        # never a secret. A ciphertext of one kind does not open as the other.
        return {"connection_id": connection_id, "purpose": purpose}

    @classmethod
    def _associated_data(cls, header: bytes, connection_id: str, purpose: str,
                         bound: Mapping[str, Any] | None = None) -> bytes:
        context: dict[str, Any] = cls._context(connection_id, purpose)
        if header[0] == ENVELOPE_BOUND:
            context["bound"] = dict(bound or {})
        return header + json.dumps(context, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def binds(ciphertext: bytes | None) -> bool:
        """Whether a blob was sealed with bound attributes (older ones were not)."""
        return bool(ciphertext) and bytes(ciphertext)[0] == ENVELOPE_BOUND

    def seal(self, connection_id: str, token_set: dict[str, Any], *, purpose: str = PURPOSE,
             bound: Mapping[str, str] | None = None) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # lazily: most routes never seal

        plaintext = json.dumps(token_set, separators=(",", ":")).encode()
        try:
            data_key = self._kms.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=self._context(connection_id, purpose))
        except (ClientError, BotoCoreError) as exc:
            raise VaultUnavailable("the token key could not encrypt; nothing was changed") from exc
        wrapped = data_key["CiphertextBlob"]
        version = ENVELOPE_BOUND if bound else ENVELOPE_V1
        header = bytes([version]) + len(wrapped).to_bytes(2, "big") + wrapped
        nonce = os.urandom(NONCE_BYTES)  # a fresh key per seal: a random nonce never repeats under it
        sealed = AESGCM(data_key["Plaintext"]).encrypt(nonce, plaintext,
                                                      self._associated_data(header, connection_id, purpose, bound))
        return header + nonce + sealed

    def open(self, connection_id: str, ciphertext: bytes, *, purpose: str = PURPOSE,
             bound: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The sealed token set; `bound`: the values the seal bound, as the item holds them now
        (a blob that binds none ignores them)."""
        try:
            return self._open(connection_id, bytes(ciphertext), purpose, bound)
        except Exception:
            if self._cache is not None:  # see broker.credentials.data_key_cache: a failed open starts it over
                self._cache.wipe()
            raise

    def _open(self, connection_id: str, blob: bytes, purpose: str, bound: Mapping[str, Any] | None) -> dict[str, Any]:
        # lazily: routes that neither seal nor open (authorize, connect sessions, the scheduler)
        # skip the import
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not blob or blob[0] not in (ENVELOPE_V1, ENVELOPE_BOUND):
            return json.loads(self._decrypt(connection_id, blob, purpose))  # sealed by KMS Encrypt, before envelopes
        wrapped_end = 3 + int.from_bytes(blob[1:3], "big")
        if len(blob) < wrapped_end + NONCE_BYTES + TAG_BYTES:
            raise _unreadable()
        header, nonce = blob[:wrapped_end], blob[wrapped_end:wrapped_end + NONCE_BYTES]
        sealed = blob[wrapped_end + NONCE_BYTES:]
        wrapped, context = header[3:], self._context(connection_id, purpose)
        data_key = self._cache.get(wrapped, context) if self._cache is not None else None
        opened_by_kms = data_key is None
        if opened_by_kms:
            data_key = self._decrypt(connection_id, wrapped, purpose)
        try:
            plaintext = AESGCM(data_key).decrypt(nonce, sealed,
                                                 self._associated_data(header, connection_id, purpose, bound))
        except (InvalidTag, ValueError) as exc:
            raise _unreadable() from exc
        opened = json.loads(plaintext)
        if opened_by_kms and self._cache is not None:  # only a key that opened this blob
            self._cache.put(wrapped, context, data_key)
        return opened

    def _decrypt(self, connection_id: str, blob: bytes, purpose: str) -> bytes:
        if not blob:
            raise _unreadable()
        try:
            answer = self._kms.decrypt(CiphertextBlob=blob, EncryptionContext=self._context(connection_id, purpose),
                                       KeyId=self._key_id)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in NOT_THIS_CONNECTION:
                raise _unreadable() from exc
            raise VaultUnavailable("the token key could not decrypt; try again") from exc
        except BotoCoreError as exc:
            raise VaultUnavailable("the token key could not decrypt; try again") from exc
        return answer["Plaintext"]
