import { randomUUID } from 'node:crypto';
import type { PoolClient, Queryable } from './pool.js';

export type Role = 'admin' | 'user';

/** An `accounts` row, without its key hash. */
export interface AccountRecord {
  id: string;
  name: string;
  role: Role;
  createdAt: string;
}

/** Maps an `accounts` row. */
export function toAccountRecord(r: Record<string, any>): AccountRecord {
  return { id: r.id, name: r.name, role: r.role, createdAt: new Date(r.created).toISOString() };
}

/** The live account whose API key hashes to `hash`. */
export async function findAccountByKeyHash(db: Queryable, hash: string): Promise<AccountRecord | undefined> {
  const { rows } = await db.query('SELECT * FROM accounts WHERE api_key_hash = $1 AND removed IS NULL', [hash]);
  return rows[0] ? toAccountRecord(rows[0]) : undefined;
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

/** Inserts an account with a new id and the hash of its API key. */
export async function insertAccount(db: Queryable, name: string, role: Role, apiKeyHash: string): Promise<AccountRecord> {
  const { rows } = await db.query('INSERT INTO accounts (id, name, role, api_key_hash) VALUES ($1, $2, $3, $4) RETURNING *', [randomUUID(), name, role, apiKeyHash]);
  return toAccountRecord(rows[0]);
}

/** Replaces an account's key hash (no write when it is already that one). */
export async function setAccountKeyHash(db: Queryable, id: string, apiKeyHash: string): Promise<void> {
  await db.query('UPDATE accounts SET api_key_hash = $2 WHERE id = $1 AND api_key_hash <> $2', [id, apiKeyHash]);
}
