"""Billing exports from the ledger: Stripe meter events (per tenant and window, through an
outbox) and OpenMeter CloudEvents (per request). Never on the request path: run by
`tallygate billing export` (a job, or `--loop`). The rules are in docs/billing.md."""
