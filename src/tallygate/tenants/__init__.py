"""Tenant keys and tenant limits: stored in the ledger database, served from memory.

model.py holds what a key and a tenant's limits are and how admin input is checked,
store.py their SQL, cache.py the in-memory view every request is checked against.
"""
