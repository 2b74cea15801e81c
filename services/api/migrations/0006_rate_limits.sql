-- Rate limits (services/api/src/accounts/rate_limits.rs): a key's own limits and a user's.
-- NULL: none of its own (a key is then bounded by its user's limits; a user by the
-- PR_USER_* defaults). Enforced per minute across every replica (through Redis).
ALTER TABLE api_keys
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0),
    ADD COLUMN tokens_per_minute bigint CHECK (tokens_per_minute > 0),
    ADD COLUMN max_concurrent integer CHECK (max_concurrent > 0);
ALTER TABLE users
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0),
    ADD COLUMN tokens_per_minute bigint CHECK (tokens_per_minute > 0),
    ADD COLUMN max_concurrent integer CHECK (max_concurrent > 0);
