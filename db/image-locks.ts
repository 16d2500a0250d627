/**
 * One lock per volume image across every volsnap process on the database: a PostgreSQL session advisory lock
 * keyed by the volume id. qemu-img's own image lock only makes a second writer fail ("Failed to get "write"
 * lock"); this one makes volsnap's writers (primary snapshots, snapshot delete/revert, GC, resize, migrate)
 * wait their turn instead. Hold it only around short mutations, never around long reads or copies.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { ImageBusyError } from '../storage/common.js';
import type { Pool, PoolClient } from './pool.js';

/** Default bound on the wait for another holder (ms); then ImageBusyError. */
export const IMAGE_LOCK_TIMEOUT_MS = 30_000;

export interface ImageLockOptions {
  /** How long to wait for another holder before failing with ImageBusyError (ms); default 30 s. */
  timeoutMs?: number;
  logger?: Pick<Logger, 'warn' | 'debug'>;
}

/**
 * The advisory lock key of a volume: the first 8 bytes of sha256("volsnap:image:<uuid>") as a signed 64-bit
 * integer (decimal string, for `$1::bigint`). Stable across processes and releases; the prefix keeps it apart
 * from the other advisory locks on the database (migrations, admin seeding).
 */
export function imageLockKey(volumeId: string): string {
  const digest = createHash('sha256').update(`volsnap:image:${volumeId.toLowerCase()}`).digest();
  return digest.readBigInt64BE(0).toString();
}

const LOCK_NOT_AVAILABLE = '55P03';

/**
 * Runs `fn` while holding volume `volumeId`'s image lock.
 * - Given the pool: takes a dedicated client, holds a session lock around `fn` only, unlocks in `finally`
 *   and releases the client (if unlocking fails the connection is discarded, which releases the lock too).
 * - Given a client inside an open transaction (one that already holds row locks): takes a transaction lock on
 *   it, released at COMMIT or ROLLBACK (or as soon as an error aborts the transaction), so a request never
 *   needs two connections and a failure can never leave the lock behind on a pooled connection.
 * Waits at most `timeoutMs` for another holder, then throws ImageBusyError without running `fn` (inside a
 * transaction, the timeout aborts it: the caller rolls back). Not re-entrant across clients: never nest it
 * for the same volume on two connections.
 */
export async function withImageLock<T>(
  db: Pool | PoolClient,
  volumeId: string,
  fn: () => Promise<T>,
  opts: ImageLockOptions = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? IMAGE_LOCK_TIMEOUT_MS;
  const key = imageLockKey(volumeId);
  const timeout = `${Math.max(1, Math.ceil(timeoutMs))}ms`;
  const busy = (err: unknown): never => {
    if ((err as { code?: unknown }).code === LOCK_NOT_AVAILABLE) {
      opts.logger?.warn({ volumeId, timeoutMs }, 'image lock still held by another operation; giving up');
      throw new ImageBusyError(`volume ${volumeId} is busy: another operation held its image for more than ${Math.round(timeoutMs / 1000)} s; try again later`);
    }
    throw err;
  };

  if (isClient(db)) {
    // lock_timeout bounds the wait inside the server: a waiter queues fairly and wakes the moment it is free.
    await db.query(`SELECT set_config('lock_timeout', $1, true)`, [timeout]);
    await db.query('SELECT pg_advisory_xact_lock($1::bigint)', [key]).catch(busy);
    await db.query(`SELECT set_config('lock_timeout', '0', true)`);
    return fn();
  }

  const client = await db.connect();
  let broken: Error | undefined;
  // The connection may die while the lock is held (a PostgreSQL restart): a checked-out client then emits
  // 'error' with nobody listening, which would end the process. The lock went with the connection; `fn` goes on
  // and the connection is discarded at release.
  const onConnectionError = (e: Error) => {
    broken = e;
    opts.logger?.warn({ err: e, volumeId }, 'the connection holding the image lock was lost; the lock went with it');
  };
  client.on('error', onConnectionError);
  try {
    // Usually free: one round trip (the time-to-created path takes it). Held: a bounded, fair wait.
    const { rows } = await client.query<{ taken: boolean }>('SELECT pg_try_advisory_lock($1::bigint) AS taken', [key]);
    if (!rows[0]?.taken) {
      try {
        await client.query(`SELECT set_config('lock_timeout', $1, false)`, [timeout]);
        await client.query('SELECT pg_advisory_lock($1::bigint)', [key]).catch(busy);
      } finally {
        await client.query(`SELECT set_config('lock_timeout', '0', false)`).catch((e: Error) => (broken = e));
      }
    }
    opts.logger?.debug({ volumeId }, 'image lock taken');
    try {
      return await fn();
    } finally {
      await client.query('SELECT pg_advisory_unlock($1::bigint)', [key]).catch((e: Error) => {
        broken = e;
        opts.logger?.warn({ err: e, volumeId }, 'releasing the image lock failed; dropping the connection releases it');
      });
    }
  } finally {
    client.off('error', onConnectionError);
    client.release(broken);
  }
}

function isClient(db: Pool | PoolClient): db is PoolClient {
  return typeof (db as Partial<PoolClient>).release === 'function';
}

/** A lock runner for storage drivers (StorageDriver ImageLockRunner) bound to one volume. */
export function imageLockRunner(db: Pool | PoolClient, volumeId: string, opts: ImageLockOptions = {}) {
  return <T>(fn: () => Promise<T>): Promise<T> => withImageLock(db, volumeId, fn, opts);
}
