-- 0007: the tenant that created each response, conversation and file id the gateway saw
-- created: only that tenant may read, cancel or delete it.
CREATE TABLE IF NOT EXISTS tallygate_object_owners (
    object_id   text PRIMARY KEY,
    kind        text NOT NULL,
    tenant_id   text NOT NULL,
    created_at  text NOT NULL
);
CREATE INDEX IF NOT EXISTS tallygate_object_owners_tenant ON tallygate_object_owners (tenant_id, kind);

INSERT INTO tallygate_schema_migrations (version, name) VALUES (7, 'object_owners')
    ON CONFLICT (version) DO NOTHING;
