import { resolve } from 'node:path';
import { runner } from 'node-pg-migrate';
import type { Logger } from 'pino';

const MIGRATIONS_DIR = resolve(import.meta.dirname, 'migrations');

/**
 * Applies pending migrations. node-pg-migrate holds an advisory lock (waiting for it), so however many
 * processes start together, migrations run once.
 */
export async function migrate(databaseUrl: string, logger?: Logger): Promise<string[]> {
  const applied = await runner({
    databaseUrl,
    dir: MIGRATIONS_DIR,
    direction: 'up',
    migrationsTable: 'pgmigrations',
    checkOrder: true,
    advisoryLockMode: 'wait',
    log: (msg: string) => logger?.debug({ migration: msg }, 'migration'),
  });
  return applied.map((m) => m.name);
}
