-- Exact prepaid billing (docs/billing.md). Each API replica leases a slice of a user's balance
-- (one row per user and replica) and admits calls against it in memory; `held_usd` is the sum of
-- a user's leases, kept in the same statement as every lease change, so that
-- available credit = balance_usd - held_usd can never be promised twice.
ALTER TABLE user_balances ADD COLUMN held_usd numeric(24, 12) NOT NULL DEFAULT 0 CHECK (held_usd >= 0);

CREATE TABLE credit_leases (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- A random id per API process; a restarted process adopts its predecessor's journal and
    -- releases its leases, any replica releases a lease once it has expired.
    replica_id  uuid NOT NULL,
    amount_usd  numeric(24, 12) NOT NULL CHECK (amount_usd >= 0),
    expires_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, replica_id)
);
CREATE INDEX credit_leases_replica_idx ON credit_leases (replica_id);
CREATE INDEX credit_leases_expiry_idx ON credit_leases (expires_at);

-- Why a usage row is not plain: `over_cap` (the upstream reported more output tokens than the
-- cap it was sent), `clamped` (an absurd token count was clamped), `estimated` is its own column.
ALTER TABLE credit_transactions ADD COLUMN usage_flags text[] NOT NULL DEFAULT '{}';

-- Usage that can never be written (its user was deleted, a value the ledger refuses): kept here
-- with the reason, never dropped. No foreign key: the user may be gone.
CREATE TABLE billing_dead_letters (
    id          bigserial PRIMARY KEY,
    call_id     uuid NOT NULL UNIQUE,
    user_id     uuid NOT NULL,
    payload     jsonb NOT NULL,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
