import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import {
  accountNameTaken,
  findAccountByKeyHash,
  findFirstAdmin,
  getAccount,
  hasLiveApiKey,
  insertAccount,
  insertApiKey,
  listAccounts,
  listApiKeys,
  lockAccount,
  lockAdminBootstrap,
  restoreOrInsertApiKey,
  revokeApiKey,
  revokeNamedApiKeys,
  setAccountDisabled,
  type AccountRecord,
  type ApiKeyRecord,
  type Role,
} from '../db/accounts.js';
import { recordEvent } from '../db/events.js';
import { withTransaction, type Pool, type Queryable } from '../db/pool.js';
import { ConflictError, NotFoundError } from '../domain/errors.js';

/** The name of the admin key set from ADMIN_API_KEY: setting another value revokes the previous one. */
export const ENV_ADMIN_KEY_NAME = 'ADMIN_API_KEY';

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
        // Re-keyed: the key from ADMIN_API_KEY is added (or un-revoked), the one the variable held before is
        // revoked. It is the break-glass key: the account is enabled again if another admin disabled it.
        if (!(await hasLiveApiKey(tx, existing.id, hash)) && !(await restoreOrInsertApiKey(tx, existing.id, ENV_ADMIN_KEY_NAME, hash))) {
          throw new Error('ADMIN_API_KEY is an API key of another account; choose another value');
        }
        await revokeNamedApiKeys(tx, existing.id, ENV_ADMIN_KEY_NAME, hash);
        if (existing.disabled) await setAccountDisabled(tx, existing.id, false);
        return existing;
      }
      const created = await insertAccount(tx, 'admin', 'admin', hash, ENV_ADMIN_KEY_NAME);
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

/** A new API key as its owner sees it this once: the record and the key itself. */
export type IssuedApiKey = ApiKeyRecord & { apiKey: string };

/** Accounts and their API keys. */
export function createAccountService(deps: { pool: Pool }) {
  const { pool } = deps;

  async function mustGet(id: string, db: Queryable = pool): Promise<AccountRecord> {
    const account = await getAccount(db, id);
    if (!account) throw new NotFoundError('account', id);
    return account;
  }

  return {
    /** The enabled account an unrevoked API key belongs to, with the key's id; undefined otherwise. */
    authenticate(apiKey: string): Promise<(AccountRecord & { keyId: string }) | undefined> {
      return findAccountByKeyHash(pool, hashApiKey(apiKey));
    },

    get: mustGet,

    /** An account's keys, oldest first, revoked ones included; never a key or its hash. */
    async listKeys(accountId: string): Promise<ApiKeyRecord[]> {
      await mustGet(accountId);
      return listApiKeys(pool, accountId);
    },

    /** Adds a key to an account (rotation: create the new key, switch clients, revoke the old one). */
    async createKey(accountId: string, name: string | undefined): Promise<IssuedApiKey> {
      const apiKey = generateApiKey();
      return withTransaction(pool, async (tx) => {
        const account = await mustGet(accountId, tx);
        const key = await insertApiKey(tx, account.id, name ?? `key-${new Date().toISOString().slice(0, 19)}`, hashApiKey(apiKey));
        await recordEvent(tx, {
          type: 'ACCOUNT.KEY.CREATE',
          accountId: account.id,
          resourceType: 'Account',
          resourceId: account.id,
          description: `API key ${key.name} added to account ${account.name}`,
          details: { accountId: account.id, keyId: key.id },
        });
        return { ...key, apiKey };
      });
    },

    /**
     * Revokes a key at once. The account's last live key cannot be revoked (409), nor the key the request is made
     * with (`usingKeyId`): nobody locks themselves out.
     */
    async revokeKey(accountId: string, keyId: string, usingKeyId?: string): Promise<ApiKeyRecord> {
      return withTransaction(pool, async (tx) => {
        // Locked: two revocations of one account's keys cannot both pass the last-key check.
        const account = await lockAccount(tx, accountId);
        if (!account) throw new NotFoundError('account', accountId);
        const live = await listApiKeys(tx, account.id, { liveOnly: true });
        const target = live.find((k) => k.id === keyId);
        if (target && live.length === 1) {
          throw new ConflictError('LAST_API_KEY', 'this is the account\'s last live API key; create another before revoking it', { keyId });
        }
        // Rotation revokes the old key with the new one: a request cannot saw off the branch it sits on.
        if (target && keyId === usingKeyId) throw new ConflictError('API_KEY_IN_USE', 'this request is made with the key it would revoke; revoke it with another key', { keyId });
        const revoked = await revokeApiKey(tx, account.id, keyId);
        if (!revoked) throw new NotFoundError('API key', keyId);
        if (target) {
          await recordEvent(tx, {
            type: 'ACCOUNT.KEY.REVOKE',
            accountId: account.id,
            resourceType: 'Account',
            resourceId: account.id,
            description: `API key ${revoked.name} of account ${account.name} revoked`,
            details: { accountId: account.id, keyId },
          });
        }
        return revoked;
      });
    },

    /** Disables or enables an account (admin): while disabled, its keys and CloudStack signatures get 401. */
    async setDisabled(accountId: string, disabled: boolean, by: string): Promise<AccountRecord> {
      if (disabled && accountId === by) throw new ConflictError('INVALID_STATE', 'an admin cannot disable its own account', { accountId });
      return withTransaction(pool, async (tx) => {
        const before = await getAccount(tx, accountId);
        const account = await setAccountDisabled(tx, accountId, disabled);
        if (!before || !account) throw new NotFoundError('account', accountId);
        if (before.disabled !== account.disabled) {
          await recordEvent(tx, {
            type: disabled ? 'ACCOUNT.DISABLE' : 'ACCOUNT.ENABLE',
            accountId: account.id,
            resourceType: 'Account',
            resourceId: account.id,
            description: `account ${account.name} ${disabled ? 'disabled' : 'enabled'}`,
            details: { accountId: account.id, by },
          });
        }
        return account;
      });
    },

    /** Creates an account with a fresh key; the key is returned this once and never stored in clear. */
    async create(input: { name: string; role: Role }): Promise<AccountRecord & { apiKey: string; apiKeyId: string }> {
      const apiKey = generateApiKey();
      return withTransaction(pool, async (tx) => {
        if (await accountNameTaken(tx, input.name)) throw new ConflictError('ACCOUNT_EXISTS', `an account named ${input.name} already exists`, { name: input.name });
        const { keyId, ...account } = await insertAccount(tx, input.name, input.role, hashApiKey(apiKey));
        await recordEvent(tx, {
          type: 'ACCOUNT.CREATE',
          accountId: account.id,
          resourceType: 'Account',
          resourceId: account.id,
          description: `account ${account.name} (${account.role}) created`,
          details: { accountId: account.id, role: account.role },
        });
        return { ...account, apiKey, apiKeyId: keyId };
      });
    },

    list: () => listAccounts(pool),
  };
}

export type AccountService = ReturnType<typeof createAccountService>;
