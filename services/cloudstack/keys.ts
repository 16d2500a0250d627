import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { deleteCloudStackKey, findCloudStackKey, firstAdminAccountId, getCloudStackKey, putCloudStackKey } from '../../db/cloudstack-keys.js';
import type { Pool, Queryable } from '../../db/pool.js';

/** A CloudStack key pair, as registerUserKeys shows it. */
export interface CloudStackKeys {
  apiKey: string;
  secretKey: string;
}

/** 64 random bytes, base64url: 86 characters, as CloudStack's own keys. */
const newKey = () => randomBytes(64).toString('base64url');

/** Issues (or renews) an account's key pair; the secret is returned to be shown once, never logged. */
export async function issueCloudStackKeys(db: Queryable, accountId: string): Promise<CloudStackKeys & { createdAt: string }> {
  const k = await putCloudStackKey(db, accountId, newKey(), newKey());
  return { apiKey: k.apiKey, secretKey: k.secretKey, createdAt: k.createdAt };
}

/** An account's key pair as its listing shows it: the API key and when it was issued, never the secret. */
export async function cloudStackKeyInfo(db: Queryable, accountId: string): Promise<{ apiKey: string; createdAt: string } | undefined> {
  const k = await getCloudStackKey(db, accountId);
  return k && { apiKey: k.apiKey, createdAt: k.createdAt };
}

/** Revokes an account's key pair: its signatures get 401 from now on (a new pair can be issued later). */
export async function revokeCloudStackKeys(db: Queryable, accountId: string): Promise<{ apiKey: string; createdAt: string } | undefined> {
  const k = await deleteCloudStackKey(db, accountId);
  return k && { apiKey: k.apiKey, createdAt: k.createdAt };
}

export async function cloudStackKeysOf(db: Queryable, accountId: string): Promise<CloudStackKeys | undefined> {
  const k = await getCloudStackKey(db, accountId);
  return k && { apiKey: k.apiKey, secretKey: k.secretKey };
}

/** The account behind an API key, with its secret to verify the signature. */
export const findByApiKey = (db: Queryable, apiKey: string) => findCloudStackKey(db, apiKey);

/** The file a generated admin key pair is written to (readable by its owner only). */
export const ADMIN_KEYS_FILE = 'cloudstack-admin-keys.json';

/**
 * At start-up (next to the admin's bearer key): with ADMIN_CLOUDSTACK_API_KEY and ADMIN_CLOUDSTACK_SECRET_KEY
 * the admin's pair is set to them (never logged); without, an admin with no pair gets a generated one,
 * written to `<data dir>/cloudstack-admin-keys.json` (mode 0600), whose path is logged.
 */
export async function ensureAdminCloudStackKeys(
  pool: Pool,
  env: { ADMIN_CLOUDSTACK_API_KEY?: string | undefined; ADMIN_CLOUDSTACK_SECRET_KEY?: string | undefined; dataDir: string },
  logger: Logger,
): Promise<void> {
  const { ADMIN_CLOUDSTACK_API_KEY: apiKey, ADMIN_CLOUDSTACK_SECRET_KEY: secretKey } = env;
  if (Boolean(apiKey) !== Boolean(secretKey)) throw new Error('ADMIN_CLOUDSTACK_API_KEY and ADMIN_CLOUDSTACK_SECRET_KEY go together: set both or neither');
  const adminId = await firstAdminAccountId(pool);
  if (!adminId) return;
  if (apiKey && secretKey) {
    const current = await getCloudStackKey(pool, adminId);
    if (current?.apiKey !== apiKey || current.secretKey !== secretKey) await putCloudStackKey(pool, adminId, apiKey, secretKey);
    return;
  }
  if (await getCloudStackKey(pool, adminId)) return;
  const keys = await issueCloudStackKeys(pool, adminId);
  const file = join(env.dataDir, ADMIN_KEYS_FILE);
  try {
    writeFileSync(file, `${JSON.stringify({ apiKey: keys.apiKey, secretKey: keys.secretKey }, null, 2)}\n`, { mode: 0o600 });
    logger.warn({ accountId: adminId, file }, 'admin CloudStack key pair generated; it is in this file (set ADMIN_CLOUDSTACK_API_KEY and ADMIN_CLOUDSTACK_SECRET_KEY to choose it)');
  } catch (err) {
    logger.warn({ err, accountId: adminId }, 'admin CloudStack key pair generated but could not be written to the data dir; renew it with registerUserKeys or set ADMIN_CLOUDSTACK_API_KEY/ADMIN_CLOUDSTACK_SECRET_KEY');
  }
}
