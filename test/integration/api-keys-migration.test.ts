import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runner } from 'node-pg-migrate';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../../db/embedded.js';
import { migrate } from '../../db/migrate.js';
import { createPool, type Pool } from '../../db/pool.js';
import { freePort } from '../../harness/ports.js';
import { createAccountService, generateApiKey, hashApiKey } from '../../services/accounts.js';

const MIGRATIONS = resolve(import.meta.dirname, '../../db/migrations');
const KEYS_MIGRATION = '1764470000000_api-keys-and-idempotency';

/** Issue 17: a database from before api_keys keeps its accounts' keys working after the migration. */
describe('the api_keys migration', () => {
  let dataDir: string;
  let db: EmbeddedDatabase;
  let pool: Pool;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'volsnap-keys-migration-'));
    chmodSync(dataDir, 0o755);
    db = await startEmbeddedPostgres(join(dataDir, 'pg'), await freePort());
    pool = createPool(db.url, 4);
  });
  afterAll(async () => {
    await pool?.end();
    await db?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('moves each account\'s key hash into api_keys, where it keeps authenticating', async () => {
    const before = readdirSync(MIGRATIONS).filter((f) => f.endsWith('.sql')).sort().findIndex((f) => f.startsWith(KEYS_MIGRATION));
    expect(before).toBeGreaterThan(0);
    await runner({ databaseUrl: db.url, dir: MIGRATIONS, direction: 'up', migrationsTable: 'pgmigrations', count: before, log: () => {} });
    const keys = [generateApiKey(), generateApiKey()];
    const ids = [randomUUID(), randomUUID()];
    await pool.query(`INSERT INTO accounts (id, name, role, api_key_hash) VALUES ($1, 'old-admin', 'admin', $2), ($3, 'old-user', 'user', $4)`, [
      ids[0],
      hashApiKey(keys[0]!),
      ids[1],
      hashApiKey(keys[1]!),
    ]);

    await migrate(db.url);
    const { rows } = await pool.query('SELECT account_id, name, key_hash, revoked FROM api_keys ORDER BY key_hash');
    expect(rows).toHaveLength(2);
    expect(rows.every((r) => r.name === 'initial' && r.revoked === null)).toBe(true);
    expect((await pool.query('SELECT count(*)::int AS n FROM accounts WHERE api_key_hash IS NOT NULL')).rows[0].n).toBe(0);

    const accounts = createAccountService({ pool });
    expect((await accounts.authenticate(keys[0]!))?.id).toBe(ids[0]);
    expect((await accounts.authenticate(keys[1]!))?.id).toBe(ids[1]);
    expect(await accounts.authenticate(generateApiKey())).toBeUndefined();
  });
});
