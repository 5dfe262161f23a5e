"""Insightly Connect: the shared broker package (flow logic, store, vault, provider client).

Handlers in functions/<name>/app.py stay thin; everything they do is built from here.
"""
