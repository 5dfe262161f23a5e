"""Connecting an account: connect sessions and OAuth states, the OAuth flow, the key page and API-
key connect."""
