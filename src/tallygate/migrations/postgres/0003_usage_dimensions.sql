-- 0003: the parts of usage priced apart (cache writes, audio and image tokens, fee-carrying
-- tool calls), the service tier and the price data version of each row.
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS cache_write_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS cache_write_1h_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS audio_input_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS audio_output_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS image_input_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS image_output_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS web_search_calls integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS file_search_calls integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS service_tier text;
ALTER TABLE litellm_usage ADD COLUMN IF NOT EXISTS price_version text;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (3, 'usage_dimensions')
    ON CONFLICT (version) DO NOTHING;
