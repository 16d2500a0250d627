import type { Logger } from 'pino';
import { withTransaction, type Pool, type PoolClient } from '../db/pool.js';

/** Registers a compensating storage action, run only if the transaction does not commit. */
export type OnRollback = (undo: () => Promise<unknown>) => void;

/**
 * A transaction for operations with storage effects: the caller locks rows, does the file operation while
 * holding the locks and writes the database in the same transaction. If anything fails (including COMMIT),
 * the database rolls back and the registered undo actions revert the files, newest first, so a failure
 * changes nothing. Irreversible file operations (deletes) go last, right before COMMIT.
 */
export async function withStorageTransaction<T>(
  pool: Pool,
  logger: Logger,
  fn: (tx: PoolClient, onRollback: OnRollback) => Promise<T>,
): Promise<T> {
  const undos: Array<() => Promise<unknown>> = [];
  try {
    return await withTransaction(pool, (tx) => fn(tx, (undo) => undos.push(undo)));
  } catch (err) {
    for (const undo of undos.reverse()) {
      await undo().catch((undoErr: unknown) => logger.error({ err: undoErr, cause: err }, 'undoing a storage change failed; storage GC must reconcile'));
    }
    throw err;
  }
}
