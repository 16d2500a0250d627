-- Up Migration
-- Issue 17: several API keys per account (listed, revoked), accounts an admin can disable, and Idempotency-Keys
-- that remember what they were used for and expire.

-- Every bearer key of an account; only its sha256 is stored. `last_used` is touched at most once a minute.
CREATE TABLE api_keys (
  id uuid PRIMARY KEY,
  account_id uuid NOT NULL REFERENCES accounts(id),
  name text NOT NULL,
  key_hash text NOT NULL UNIQUE,
  created timestamptz NOT NULL DEFAULT now(),
  last_used timestamptz,
  revoked timestamptz
);
CREATE INDEX api_keys_account_idx ON api_keys(account_id, created);

-- The one key each account had moves here; accounts.api_key_hash is no longer read or written.
INSERT INTO api_keys (id, account_id, name, key_hash, created)
  SELECT gen_random_uuid(), id, 'initial', api_key_hash, created FROM accounts WHERE api_key_hash IS NOT NULL;
ALTER TABLE accounts ALTER COLUMN api_key_hash DROP NOT NULL;
UPDATE accounts SET api_key_hash = NULL;

-- A disabled account's bearer keys and CloudStack signatures are refused (401) until it is enabled again.
ALTER TABLE accounts ADD COLUMN disabled timestamptz;

-- What an Idempotency-Key was used for (sha256 of volume id, name and asyncBackup) and until when it holds.
ALTER TABLE snapshots ADD COLUMN idempotency_fingerprint text;
ALTER TABLE snapshots ADD COLUMN idempotency_expires timestamptz;

-- Down Migration
ALTER TABLE snapshots DROP COLUMN idempotency_expires;
ALTER TABLE snapshots DROP COLUMN idempotency_fingerprint;
ALTER TABLE accounts DROP COLUMN disabled;
UPDATE accounts a SET api_key_hash = (SELECT k.key_hash FROM api_keys k WHERE k.account_id = a.id AND k.revoked IS NULL ORDER BY k.created LIMIT 1);
DROP TABLE api_keys;
