"""TokenVault: credentials in and out of KMS, bound to one connection by encryption context."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .errors import CredentialsUnreadable, VaultUnavailable

PURPOSE = "oauth2-token-set"


class TokenVault:
    def __init__(self, kms, key_id: str):
        self._kms = kms
        self._key_id = key_id

    @staticmethod
    def _context(connection_id: str) -> dict[str, str]:
        # The context is logged by CloudTrail: it names the connection, never a secret.
        return {"connection_id": connection_id, "purpose": PURPOSE}

    def seal(self, connection_id: str, token_set: dict[str, Any]) -> bytes:
        plaintext = json.dumps(token_set, separators=(",", ":")).encode()
        try:
            answer = self._kms.encrypt(
                KeyId=self._key_id,
                Plaintext=plaintext,
                EncryptionContext=self._context(connection_id),
            )
        except (ClientError, BotoCoreError) as exc:
            raise VaultUnavailable("the token key could not encrypt; nothing was changed") from exc
        return answer["CiphertextBlob"]

    def open(self, connection_id: str, ciphertext: bytes) -> dict[str, Any]:
        try:
            answer = self._kms.decrypt(
                CiphertextBlob=bytes(ciphertext),
                EncryptionContext=self._context(connection_id),
                KeyId=self._key_id,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise CredentialsUnreadable(
                    "the stored credentials do not belong to this connection; reconnect it"
                ) from exc
            raise VaultUnavailable("the token key could not decrypt; try again") from exc
        except BotoCoreError as exc:
            raise VaultUnavailable("the token key could not decrypt; try again") from exc
        return json.loads(answer["Plaintext"])
