"""Connecting an account: connect sessions and OAuth states in the flow table, the OAuth flow,
the key page and API-key connect."""
