"""Reconciliation: the ledger of one UTC day against what the provider reports for it.

`tallygate reconcile openai|anthropic --day YYYY-MM-DD` reads the provider's usage and
cost reports through its admin API (admin_api.py: retries, pages), the ledger's rows of
the same day that reached the provider (ledger.py), maps both onto upstream keys and
their tenants (keymap.py), and compares them (compare.py). docs/reconciliation.md says
what legitimately differs.
"""
