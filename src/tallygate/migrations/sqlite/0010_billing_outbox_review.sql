-- 0010: when an outbox event was first offered to Stripe, and when it was set aside for an
-- operator. Stripe drops a repeated meter event identifier only within a rolling 24 hours,
-- so an event first offered longer ago than that is never sent again on its own
-- (docs/billing.md, "Resending after Stripe's dedupe window").
ALTER TABLE billing_export_outbox ADD COLUMN first_attempt_at text;
ALTER TABLE billing_export_outbox ADD COLUMN needs_review_at text;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (10, 'billing_outbox_review')
    ON CONFLICT (version) DO NOTHING;
