-- API keys: only a SHA-256 of the key is stored; `prefix` (first characters) identifies a key
-- in listings without revealing it.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC);

-- The credit ledger. Amounts are exact decimals in USD (12 fractional digits: token prices
-- are fractions of a micro-dollar). Credits are positive, usage is negative.
CREATE TABLE credit_transactions (
    id               bigserial PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('topup', 'usage', 'admin_adjust', 'refund')),
    amount_usd       numeric(24, 12) NOT NULL,
    reason           text NOT NULL DEFAULT '',
    -- Admin credits: the client's Idempotency-Key, so a retried call is applied once.
    idempotency_key  text,
    -- Usage: one row per completed LLM call, keyed by the call's id, so it is never billed twice.
    call_id          uuid UNIQUE,
    model            text,
    input_tokens     bigint,
    output_tokens    bigint,
    usage_estimated  boolean NOT NULL DEFAULT false,
    request_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'usage') = (call_id IS NOT NULL))
);
CREATE UNIQUE INDEX credit_transactions_idempotency_idx
    ON credit_transactions (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX credit_transactions_user_idx ON credit_transactions (user_id, id DESC);

-- The running balance, updated in the same transaction as every ledger row, so that
-- balance = sum(amount_usd) of the user's transactions at all times.
CREATE TABLE user_balances (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance_usd  numeric(24, 12) NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title       text NOT NULL DEFAULT '',
    model       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_idx ON conversations (user_id, created_at DESC, id DESC);

CREATE TABLE messages (
    id               bigserial PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role             text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, id);
