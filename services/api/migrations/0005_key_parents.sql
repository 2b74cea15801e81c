-- A key created with another key is its child: revoking a key revokes all its descendants
-- (services/api/src/auth.rs), so a stolen key cannot outlive its revocation through keys it
-- created. Keys from before this migration, and those created from the command line, are roots.
ALTER TABLE api_keys ADD COLUMN parent_key_id uuid REFERENCES api_keys (id) ON DELETE CASCADE;
CREATE INDEX api_keys_parent_idx ON api_keys (parent_key_id) WHERE parent_key_id IS NOT NULL;
