import type { Queryable } from './pool.js';

/** An account's CloudStack key pair (the CloudStack API dialect signs requests with it). */
export interface CloudStackKeyRecord {
  accountId: string;
  apiKey: string;
  secretKey: string;
  createdAt: string;
}

function toRecord(r: Record<string, any>): CloudStackKeyRecord {
  return { accountId: r.account_id, apiKey: r.api_key, secretKey: r.secret_key, createdAt: new Date(r.created).toISOString() };
}

/** The key pair of a live account whose API key is `apiKey`, with the account's role. */
export async function findCloudStackKey(db: Queryable, apiKey: string): Promise<(CloudStackKeyRecord & { role: 'admin' | 'user'; accountName: string }) | undefined> {
  const { rows } = await db.query(
    `SELECT k.*, a.role, a.name AS account_name FROM cloudstack_keys k JOIN accounts a ON a.id = k.account_id
      WHERE k.api_key = $1 AND a.removed IS NULL AND a.disabled IS NULL`,
    [apiKey],
  );
  return rows[0] ? { ...toRecord(rows[0]), role: rows[0].role, accountName: rows[0].account_name } : undefined;
}

export async function getCloudStackKey(db: Queryable, accountId: string): Promise<CloudStackKeyRecord | undefined> {
  const { rows } = await db.query('SELECT * FROM cloudstack_keys WHERE account_id = $1', [accountId]);
  return rows[0] ? toRecord(rows[0]) : undefined;
}

/** Sets (or replaces) an account's key pair. */
export async function putCloudStackKey(db: Queryable, accountId: string, apiKey: string, secretKey: string): Promise<CloudStackKeyRecord> {
  const { rows } = await db.query(
    `INSERT INTO cloudstack_keys (account_id, api_key, secret_key) VALUES ($1, $2, $3)
     ON CONFLICT (account_id) DO UPDATE SET api_key = EXCLUDED.api_key, secret_key = EXCLUDED.secret_key, created = now()
     RETURNING *`,
    [accountId, apiKey, secretKey],
  );
  return toRecord(rows[0]);
}

/** Removes an account's key pair (revoked: its signatures are refused); the pair it was, if any. */
export async function deleteCloudStackKey(db: Queryable, accountId: string): Promise<CloudStackKeyRecord | undefined> {
  const { rows } = await db.query('DELETE FROM cloudstack_keys WHERE account_id = $1 RETURNING *', [accountId]);
  return rows[0] ? toRecord(rows[0]) : undefined;
}

/** The first live admin account's id (the one ADMIN_API_KEY keys), if any. */
export async function firstAdminAccountId(db: Queryable): Promise<string | undefined> {
  const { rows } = await db.query(`SELECT id FROM accounts WHERE role = 'admin' AND removed IS NULL ORDER BY created, name LIMIT 1`);
  return rows[0]?.id;
}

/** Account names by id (CloudStack responses name the owning account). */
export async function accountNames(db: Queryable): Promise<Map<string, string>> {
  const { rows } = await db.query('SELECT id, name FROM accounts');
  return new Map(rows.map((r) => [r.id as string, r.name as string]));
}
