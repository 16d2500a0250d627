import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../../db/embedded.js';
import { imageLockKey, withImageLock } from '../../db/image-locks.js';
import { createPool, type Pool } from '../../db/pool.js';
import { ImageBusyError } from '../../storage/driver.js';
import { freePort } from '../../harness/ports.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The cross-process image lock on a real PostgreSQL: two pools stand for two volsnap processes (an API and a
 * worker) on one database.
 */
describe('withImageLock', () => {
  let dataDir: string;
  let db: EmbeddedDatabase;
  let a: Pool;
  let b: Pool;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'volsnap-locks-'));
    chmodSync(dataDir, 0o755);
    db = await startEmbeddedPostgres(join(dataDir, 'pg'), await freePort());
    a = createPool(db.url, 4);
    b = createPool(db.url, 4);
  });
  afterAll(async () => {
    await a?.end();
    await b?.end();
    await db?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('derives a stable signed 64-bit key per volume', () => {
    const id = randomUUID();
    expect(imageLockKey(id)).toBe(imageLockKey(id.toUpperCase()));
    expect(imageLockKey(id)).not.toBe(imageLockKey(randomUUID()));
    const n = BigInt(imageLockKey(id));
    expect(n >= -(2n ** 63n) && n < 2n ** 63n).toBe(true);
  });

  it('serialises two processes on the same volume; another volume does not wait', async () => {
    const vol = randomUUID();
    const other = randomUUID();
    const log: string[] = [];
    const first = withImageLock(a, vol, async () => {
      log.push('a:start');
      await sleep(600);
      log.push('a:end');
    });
    await sleep(100);
    const started = Date.now();
    const second = withImageLock(b, vol, async () => {
      log.push('b:start');
      log.push('b:end');
    });
    // Meanwhile a different volume's lock is free at once.
    let otherWait = -1;
    await withImageLock(b, other, async () => {
      otherWait = Date.now() - started;
    });
    expect(otherWait).toBeLessThan(300);
    await Promise.all([first, second]);
    expect(log).toEqual(['a:start', 'a:end', 'b:start', 'b:end']);
    // Every lock was given back with its client.
    const held = await a.query(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'`);
    expect(held.rows[0].n).toBe(0);
    expect(a.totalCount - a.idleCount).toBe(0);
  });

  it('gives up after its bound with ImageBusyError and does not run fn; the holder is unaffected', async () => {
    const vol = randomUUID();
    let release!: () => void;
    const holding = withImageLock(a, vol, () => new Promise<void>((r) => (release = r)));
    await sleep(100);
    let ran = false;
    const started = Date.now();
    const err = await withImageLock(b, vol, async () => void (ran = true), { timeoutMs: 400 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageBusyError);
    expect((err as Error).message).toMatch(/busy/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
    expect(ran).toBe(false);
    release();
    await holding;
    // Free again: taken at once.
    await withImageLock(b, vol, async () => void (ran = true), { timeoutMs: 400 });
    expect(ran).toBe(true);
  });

  it('releases the lock when fn throws', async () => {
    const vol = randomUUID();
    await expect(withImageLock(a, vol, async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await withImageLock(b, vol, async () => undefined, { timeoutMs: 200 });
  });

  it('inside a transaction it locks on that client until the transaction ends; an aborted one releases it', async () => {
    const vol = randomUUID();
    const tx = await a.connect();
    try {
      await tx.query('BEGIN');
      await withImageLock(tx, vol, async () => undefined);
      // Still held after fn returned: it goes with COMMIT or ROLLBACK.
      await expect(withImageLock(b, vol, async () => undefined, { timeoutMs: 200 })).rejects.toBeInstanceOf(ImageBusyError);
      await tx.query('SELECT 1/0').catch(() => undefined); // an error aborts the transaction: nothing stays behind
      await withImageLock(b, vol, async () => undefined, { timeoutMs: 200 });
      await tx.query('ROLLBACK');
    } finally {
      tx.release();
    }
  });
});
