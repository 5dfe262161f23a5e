"""What a credential is and how it stays valid: the token service, the kinds (OAuth 2.0, API key),
the vault, the client secret, the OAuth provider and the Insightly API."""
