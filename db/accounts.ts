import type { Queryable } from './pool.js';

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

/** Every live account, oldest first. */
export async function listAccounts(db: Queryable): Promise<AccountRecord[]> {
  const { rows } = await db.query('SELECT * FROM accounts WHERE removed IS NULL ORDER BY created, name');
  return rows.map(toAccountRecord);
}
