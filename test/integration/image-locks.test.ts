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

/** A promise to wait on and the function that settles it: an ordering barrier, not a timer. */
function barrier(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

/** Waits until some session waits for an advisory lock it has not been granted (the server's lock table says so). */
async function someoneWaits(db: Pool): Promise<void> {
  for (;;) {
    const { rows } = await db.query(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`);
    if (rows[0].n > 0) return;
    await sleep(10);
  }
}

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
    const aHolds = barrier();
    const aMayEnd = barrier();
    const first = withImageLock(a, vol, async () => {
      log.push('a:start');
      aHolds.open();
      await aMayEnd.wait;
      log.push('a:end');
    });
    await aHolds.wait;
    const second = withImageLock(b, vol, async () => {
      log.push('b:start');
      log.push('b:end');
    });
    // B queues in the server behind A (the lock table shows it waiting)...
    await someoneWaits(a);
    // ...while a different volume's lock is free at once: taken with A still holding its own.
    await withImageLock(b, other, async () => void log.push('other'));
    aMayEnd.open();
    await Promise.all([first, second]);
    expect(log).toEqual(['a:start', 'other', 'a:end', 'b:start', 'b:end']);
    // Every lock was given back with its client.
    const held = await a.query(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'`);
    expect(held.rows[0].n).toBe(0);
    expect(a.totalCount - a.idleCount).toBe(0);
  });

  it('gives up after its bound with ImageBusyError and does not run fn; the holder is unaffected', async () => {
    const vol = randomUUID();
    let release!: () => void;
    const holds = barrier();
    const holding = withImageLock(a, vol, () => new Promise<void>((r) => ((release = r), holds.open())));
    await holds.wait;
    let ran = false;
    const started = Date.now();
    const err = await withImageLock(b, vol, async () => void (ran = true), { timeoutMs: 400 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageBusyError);
    expect((err as Error).message).toMatch(/busy/);
    // A lower bound only (the server's lock_timeout): it did not give up before its bound.
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
