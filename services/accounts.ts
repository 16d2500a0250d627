import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import {
  accountNameTaken,
  findAccount,
  findAccountByKeyHash,
  findFirstAdmin,
  insertAccount,
  listAccounts,
  lockAdminBootstrap,
  setAccountKeyHash,
  type AccountRecord,
  type Role,
} from '../db/accounts.js';
import { recordEvent } from '../db/events.js';
import { withTransaction, type Pool } from '../db/pool.js';
import { ConflictError, NotFoundError } from '../domain/errors.js';

/** A new random API key: `vs_` + 32 random bytes, base64url. */
export function generateApiKey(): string {
  return `vs_${randomBytes(32).toString('base64url')}`;
}

/** The only form in which a key is stored: its sha256, hex. */
export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/**
 * Makes sure an admin account exists at start-up. With `adminApiKey` (ADMIN_API_KEY) the first admin account is
 * created or re-keyed to it; without, an admin is created on first start with a generated key, written once to
 * `keyFile` (mode 0600) and shown on an interactive terminal. No key ever reaches the log: log lines are shipped
 * and kept (logs/management-server.log), so only the file's path is logged.
 */
export async function ensureAdminAccount(
  pool: Pool,
  adminApiKey: string | undefined,
  logger: Logger,
  keyFile: string,
): Promise<AccountRecord> {
  return withTransaction(pool, async (tx) => {
    await lockAdminBootstrap(tx);
    const existing = await findFirstAdmin(tx);
    if (adminApiKey) {
      const hash = hashApiKey(adminApiKey);
      if (existing) {
        await setAccountKeyHash(tx, existing.id, hash);
        return existing;
      }
      const created = await insertAccount(tx, 'admin', 'admin', hash);
      logger.info({ accountId: created.id }, 'admin account created with the key from ADMIN_API_KEY');
      return created;
    }
    if (existing) {
      logger.info({ accountId: existing.id, keyFile }, 'admin account exists; its generated key was written to the key file at first start (set ADMIN_API_KEY to replace it)');
      return existing;
    }
    const key = generateApiKey();
    const created = await insertAccount(tx, 'admin', 'admin', hashApiKey(key));
    // Only its hash is stored; the file is the one copy (written before COMMIT: no admin without its key).
    await mkdir(dirname(keyFile), { recursive: true });
    await writeFile(keyFile, `${key}\n`, { mode: 0o600 });
    await chmod(keyFile, 0o600);
    logger.warn({ accountId: created.id, keyFile }, 'admin account created; its API key is in the key file (readable by this user only); set ADMIN_API_KEY to choose the key instead');
    if (process.stdout.isTTY) process.stdout.write(`\nadmin API key (also in ${keyFile}): ${key}\n\n`);
    return created;
  });
}

/** Accounts and their API keys. */
export function createAccountService(deps: { pool: Pool }) {
  const { pool } = deps;
  return {
    /** The account an API key belongs to, if any. */
    authenticate(apiKey: string): Promise<AccountRecord | undefined> {
      return findAccountByKeyHash(pool, hashApiKey(apiKey));
    },

    /** Creates an account with a fresh key; the key is returned this once and never stored in clear. */
    async create(input: { name: string; role: Role }): Promise<AccountRecord & { apiKey: string }> {
      const apiKey = generateApiKey();
      return withTransaction(pool, async (tx) => {
        if (await accountNameTaken(tx, input.name)) throw new ConflictError('ACCOUNT_EXISTS', `an account named ${input.name} already exists`, { name: input.name });
        const account = await insertAccount(tx, input.name, input.role, hashApiKey(apiKey));
        await recordEvent(tx, {
          type: 'ACCOUNT.CREATE',
          accountId: account.id,
          resourceType: 'Account',
          resourceId: account.id,
          description: `account ${account.name} (${account.role}) created`,
          details: { accountId: account.id, role: account.role },
        });
        return { ...account, apiKey };
      });
    },

    list: () => listAccounts(pool),

    /** The caller's own account (who is signed in). */
    async get(id: string): Promise<AccountRecord> {
      const account = await findAccount(pool, id);
      if (!account) throw new NotFoundError('account', id);
      return account;
    },
  };
}

export type AccountService = ReturnType<typeof createAccountService>;
