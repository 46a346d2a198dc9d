-- 0008: on Postgres, rollup deltas and a latency histogram. SQLite keeps upserting its
-- hourly rollups in the writer's transaction (one writer: no rollup row is shared between
-- instances), and its p95 latency reads the rows (reports.latency_and_errors).
INSERT INTO tallygate_schema_migrations (version, name) VALUES (8, 'rollup_deltas')
    ON CONFLICT (version) DO NOTHING;
