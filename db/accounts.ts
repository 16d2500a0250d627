import { randomUUID } from 'node:crypto';
import type { PoolClient, Queryable } from './pool.js';

export type Role = 'admin' | 'user';

/** An `accounts` row. */
export interface AccountRecord {
  id: string;
  name: string;
  role: Role;
  /** Whether an admin disabled it: its keys and CloudStack signatures are refused. */
  disabled: boolean;
  createdAt: string;
}

/** Maps an `accounts` row. */
export function toAccountRecord(r: Record<string, any>): AccountRecord {
  return { id: r.id, name: r.name, role: r.role, disabled: r.disabled != null, createdAt: new Date(r.created).toISOString() };
}

/** One of an account's API keys, without its hash. */
export interface ApiKeyRecord {
  id: string;
  accountId: string;
  name: string;
  createdAt: string;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

const iso = (v: unknown) => (v == null ? null : new Date(v as string).toISOString());

function toApiKeyRecord(r: Record<string, any>): ApiKeyRecord {
  return { id: r.id, accountId: r.account_id, name: r.name, createdAt: iso(r.created)!, lastUsedAt: iso(r.last_used), revokedAt: iso(r.revoked) };
}

/**
 * The live, enabled account whose unrevoked API key hashes to `hash`, with that key's id; touches the key's
 * `last_used` when it is more than a minute old (one write a minute per key, not one per request).
 */
export async function findAccountByKeyHash(db: Queryable, hash: string): Promise<(AccountRecord & { keyId: string }) | undefined> {
  const { rows } = await db.query(
    `WITH k AS (
       SELECT k.id AS key_id, k.last_used, a.* FROM api_keys k JOIN accounts a ON a.id = k.account_id
        WHERE k.key_hash = $1 AND k.revoked IS NULL AND a.removed IS NULL AND a.disabled IS NULL
     ), touched AS (
       UPDATE api_keys SET last_used = now() WHERE id = (SELECT key_id FROM k WHERE last_used IS NULL OR last_used < now() - interval '1 minute')
     )
     SELECT * FROM k`,
    [hash],
  );
  return rows[0] ? { ...toAccountRecord(rows[0]), keyId: rows[0].key_id } : undefined;
}

/** The live account with this id. */
export async function findAccount(db: Queryable, id: string): Promise<AccountRecord | undefined> {
  const { rows } = await db.query('SELECT * FROM accounts WHERE id = $1 AND removed IS NULL', [id]);
  return rows[0] ? toAccountRecord(rows[0]) : undefined;
}

/** Every live account, oldest first. */
export async function listAccounts(db: Queryable): Promise<AccountRecord[]> {
  const { rows } = await db.query('SELECT * FROM accounts WHERE removed IS NULL ORDER BY created, name');
  return rows.map(toAccountRecord);
}

/** A live account by id. */
export async function getAccount(db: Queryable, id: string): Promise<AccountRecord | undefined> {
  const { rows } = await db.query('SELECT * FROM accounts WHERE id = $1 AND removed IS NULL', [id]);
  return rows[0] ? toAccountRecord(rows[0]) : undefined;
}

/** Locks a live account's row for the rest of the transaction (serialises changes to its keys). */
export async function lockAccount(tx: PoolClient, id: string): Promise<AccountRecord | undefined> {
  const { rows } = await tx.query('SELECT * FROM accounts WHERE id = $1 AND removed IS NULL FOR UPDATE', [id]);
  return rows[0] ? toAccountRecord(rows[0]) : undefined;
}

/** Disables (or enables again) an account; returns it, or undefined when there is no such live account. */
export async function setAccountDisabled(db: Queryable, id: string, disabled: boolean): Promise<AccountRecord | undefined> {
  const { rows } = await db.query(
    `UPDATE accounts SET disabled = CASE WHEN $2 THEN coalesce(disabled, now()) ELSE NULL END WHERE id = $1 AND removed IS NULL RETURNING *`,
    [id, disabled],
  );
  return rows[0] ? toAccountRecord(rows[0]) : undefined;
}

/** Adds an API key (by its hash) to an account. */
export async function insertApiKey(db: Queryable, accountId: string, name: string, keyHash: string): Promise<ApiKeyRecord> {
  const { rows } = await db.query('INSERT INTO api_keys (id, account_id, name, key_hash) VALUES ($1, $2, $3, $4) RETURNING *', [randomUUID(), accountId, name, keyHash]);
  return toApiKeyRecord(rows[0]);
}

/** An account's keys, oldest first; revoked ones too unless `liveOnly`. */
export async function listApiKeys(db: Queryable, accountId: string, opts: { liveOnly?: boolean } = {}): Promise<ApiKeyRecord[]> {
  const { rows } = await db.query(
    'SELECT * FROM api_keys WHERE account_id = $1 AND ($2::boolean IS NOT TRUE OR revoked IS NULL) ORDER BY created, id',
    [accountId, opts.liveOnly ?? false],
  );
  return rows.map(toApiKeyRecord);
}

/** Revokes one of an account's keys (no change when it already is); undefined when the account has no such key. */
export async function revokeApiKey(db: Queryable, accountId: string, keyId: string): Promise<ApiKeyRecord | undefined> {
  const { rows } = await db.query(
    'UPDATE api_keys SET revoked = coalesce(revoked, now()) WHERE id = $1 AND account_id = $2 RETURNING *',
    [keyId, accountId],
  );
  return rows[0] ? toApiKeyRecord(rows[0]) : undefined;
}

/**
 * Makes `keyHash` a live key of `accountId` named `name`: inserted, or un-revoked when it was this account's
 * before. False when the hash is another account's key.
 */
export async function restoreOrInsertApiKey(db: Queryable, accountId: string, name: string, keyHash: string): Promise<boolean> {
  const { rows } = await db.query(
    `INSERT INTO api_keys (id, account_id, name, key_hash) VALUES ($1, $2, $3, $4)
     ON CONFLICT (key_hash) DO UPDATE SET revoked = NULL, name = EXCLUDED.name WHERE api_keys.account_id = EXCLUDED.account_id
     RETURNING id`,
    [randomUUID(), accountId, name, keyHash],
  );
  return rows.length > 0;
}

/** Revokes an account's unrevoked keys named `name` except the one hashing to `keepHash`; returns how many. */
export async function revokeNamedApiKeys(db: Queryable, accountId: string, name: string, keepHash: string): Promise<number> {
  const { rowCount } = await db.query(
    'UPDATE api_keys SET revoked = now() WHERE account_id = $1 AND name = $2 AND key_hash <> $3 AND revoked IS NULL',
    [accountId, name, keepHash],
  );
  return rowCount ?? 0;
}

/** Whether `hash` is an unrevoked key of `accountId`. */
export async function hasLiveApiKey(db: Queryable, accountId: string, hash: string): Promise<boolean> {
  const { rows } = await db.query('SELECT 1 FROM api_keys WHERE account_id = $1 AND key_hash = $2 AND revoked IS NULL', [accountId, hash]);
  return rows.length > 0;
}

// Serialises concurrent start-ups (several API replicas) deciding whether to create the admin.
const ADMIN_BOOTSTRAP_LOCK = 0x766f6c73; // "vols"

/** Takes the admin bootstrap lock for the rest of the transaction `tx`. */
export async function lockAdminBootstrap(tx: PoolClient): Promise<void> {
  await tx.query('SELECT pg_advisory_xact_lock($1)', [ADMIN_BOOTSTRAP_LOCK]);
}

/** The oldest live admin account, if any. */
export async function findFirstAdmin(db: Queryable): Promise<AccountRecord | undefined> {
  const { rows } = await db.query(`SELECT * FROM accounts WHERE role = 'admin' AND removed IS NULL ORDER BY created, name LIMIT 1`);
  return rows[0] ? toAccountRecord(rows[0]) : undefined;
}

/** Whether an account (live or removed) is named `name`. */
export async function accountNameTaken(db: Queryable, name: string): Promise<boolean> {
  const { rows } = await db.query('SELECT 1 FROM accounts WHERE name = $1', [name]);
  return rows.length > 0;
}

/** Inserts an account with a new id and its first API key (by hash, named `keyName`). */
export async function insertAccount(db: Queryable, name: string, role: Role, apiKeyHash: string, keyName = 'initial'): Promise<AccountRecord & { keyId: string }> {
  const { rows } = await db.query('INSERT INTO accounts (id, name, role) VALUES ($1, $2, $3) RETURNING *', [randomUUID(), name, role]);
  const account = toAccountRecord(rows[0]);
  const key = await insertApiKey(db, account.id, keyName, apiKeyHash);
  return { ...account, keyId: key.id };
}
