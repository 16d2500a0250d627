-- Up Migration
-- The CloudStack API dialect (api/cloudstack): every account's key pair, and CloudStack's async jobs.

-- HMAC-SHA1 signatures are verified with the secret itself, so it is stored as issued (as CloudStack does);
-- it is shown to its owner once (account creation, registerUserKeys, getUserKeys) and never logged.
CREATE TABLE cloudstack_keys (
  account_id uuid PRIMARY KEY REFERENCES accounts(id),
  api_key text NOT NULL UNIQUE,
  secret_key text NOT NULL,
  created timestamptz NOT NULL DEFAULT now()
);

-- A CloudStack async job: run in-process by the API replica that accepted it (owner), which touches
-- `heartbeat` while it runs; a pending job whose heartbeat went stale is claimed by another replica (or the
-- restarted one) and re-driven or failed.
CREATE TABLE async_jobs (
  id uuid PRIMARY KEY,
  account_id uuid NOT NULL REFERENCES accounts(id),
  -- The API command (createSnapshot) and CloudStack's class name for it (the `cmd` field).
  command text NOT NULL,
  cmd text NOT NULL,
  params jsonb NOT NULL DEFAULT '{}'::jsonb,
  status smallint NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),
  result_code integer NOT NULL DEFAULT 0,
  result_type text NOT NULL DEFAULT 'object',
  result jsonb,
  instance_type text,
  instance_id uuid,
  owner text NOT NULL,
  heartbeat timestamptz NOT NULL DEFAULT now(),
  drives integer NOT NULL DEFAULT 1,
  created timestamptz NOT NULL DEFAULT now(),
  completed timestamptz
);
CREATE INDEX async_jobs_account_idx ON async_jobs(account_id, created);
CREATE INDEX async_jobs_pending_idx ON async_jobs(heartbeat) WHERE status = 0;

-- Down Migration
DROP TABLE async_jobs;
DROP TABLE cloudstack_keys;
