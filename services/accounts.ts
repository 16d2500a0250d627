import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import {
  accountNameTaken,
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
import { ConflictError } from '../domain/errors.js';

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
 * created or re-keyed to it; without, an admin is created on first start with a generated key, logged once at
 * warn level. A key that came from the environment is never logged.
 */
export async function ensureAdminAccount(pool: Pool, adminApiKey: string | undefined, logger: Logger): Promise<AccountRecord> {
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
      logger.info({ accountId: existing.id }, 'admin account exists; its key was shown at first start (set ADMIN_API_KEY to replace it)');
      return existing;
    }
    const key = generateApiKey();
    const created = await insertAccount(tx, 'admin', 'admin', hashApiKey(key));
    // Shown once: only its hash is stored. Set ADMIN_API_KEY to choose the key instead.
    logger.warn({ accountId: created.id }, `admin API key: ${key}`);
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
  };
}

export type AccountService = ReturnType<typeof createAccountService>;
