"""Prepaid credits: a per-tenant balance kept as an append-only credit ledger.

model.py holds what an entry and an account are and how admin input is checked,
store.py their SQL. A tenant becomes prepaid with its first top-up; from then its
balance is the sum of its credit entries minus the usage ledger's cost since
then, and the limits (limits/guard.py) refuse a request the balance cannot cover.
"""
