"""Calling Insightly for the SaaS: path, header and body rules, and one proxied call."""
