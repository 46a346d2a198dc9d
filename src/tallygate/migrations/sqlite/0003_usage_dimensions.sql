-- 0003: the parts of usage priced apart (cache writes, audio and image tokens, fee-carrying
-- tool calls), the service tier and the price data version of each row.
ALTER TABLE litellm_usage ADD COLUMN cache_write_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN cache_write_1h_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN audio_input_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN audio_output_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN image_input_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN image_output_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN web_search_calls integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN file_search_calls integer NOT NULL DEFAULT 0;
ALTER TABLE litellm_usage ADD COLUMN service_tier text;
ALTER TABLE litellm_usage ADD COLUMN price_version text;

INSERT INTO tallygate_schema_migrations (version, name) VALUES (3, 'usage_dimensions')
    ON CONFLICT (version) DO NOTHING;
