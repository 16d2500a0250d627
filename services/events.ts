import { toEventRow, type EventRow } from '../db/events.js';
import { backupKindsOf } from '../db/snapshots.js';
import type { Pool } from '../db/pool.js';
import { IN_PROGRESS_STATES, type SnapshotState } from '../domain/snapshot-states.js';
import { publicErrorMessage } from '../domain/errors.js';
import { ownerScope, type Caller } from './caller.js';

/** Backup progress of one in-flight snapshot, as the event stream pushes it. */
export interface SnapshotProgress {
  snapshotId: string;
  volumeId: string;
  state: SnapshotState;
  attempts: number;
  maxAttempts: number;
  bytesDone: number;
  bytesTotal: number;
  /** When the next attempt starts, while the workflow waits out the retry interval. */
  nextAttemptAt: string | null;
  /** Why the last attempt failed, in public wording. */
  lastError: string | null;
  /** Once the attempt has chosen (docs/design.md §14): a full copy, or a delta on `parentSnapshotId`'s backup. */
  kind?: 'full' | 'incremental';
  parentSnapshotId?: string | null;
}

/** Whether `caller` may see `event`: its own account's; an admin sees all (global ones too). */
export function canSee(caller: Caller, event: Pick<EventRow, 'accountId'>): boolean {
  return caller.role === 'admin' || event.accountId === caller.accountId;
}

/** The audit/notification event log, read per account. */
export function createEventService(deps: { pool: Pool }) {
  const { pool } = deps;
  return {
    /** Events after id `since` (exclusive), oldest first, at most `limit`. */
    async list(caller: Caller, opts: { since?: number; limit?: number } = {}): Promise<EventRow[]> {
      const { rows } = await pool.query(
        `SELECT * FROM events WHERE id > $1 AND ($2::uuid IS NULL OR account_id = $2) ORDER BY id LIMIT $3`,
        [opts.since ?? 0, ownerScope(caller), opts.limit ?? 100],
      );
      return rows.map(toEventRow);
    },

    /** Backup progress of the caller's snapshots in flight. */
    async progress(caller: Caller): Promise<SnapshotProgress[]> {
      const { rows } = await pool.query(
        `SELECT id, volume_id, status, backup_attempts, backup_max_attempts, backup_bytes_done, backup_bytes_total,
                next_attempt_at, last_error FROM snapshots
          WHERE status = ANY($1::text[]) AND ($2::uuid IS NULL OR account_id = $2) ORDER BY created`,
        [IN_PROGRESS_STATES, ownerScope(caller)],
      );
      const kinds = await backupKindsOf(pool, rows.filter((r) => r.status === 'BackingUp').map((r) => r.id));
      return rows.map((r) => ({
        ...(kinds.has(r.id) ? { kind: kinds.get(r.id)!.kind, parentSnapshotId: kinds.get(r.id)!.parentSnapshotId } : {}),
        snapshotId: r.id,
        volumeId: r.volume_id,
        state: r.status,
        attempts: r.backup_attempts,
        maxAttempts: r.backup_max_attempts,
        bytesDone: Number(r.backup_bytes_done),
        bytesTotal: Number(r.backup_bytes_total),
        nextAttemptAt: r.next_attempt_at ? new Date(r.next_attempt_at).toISOString() : null,
        lastError: r.last_error === null ? null : publicErrorMessage(r.last_error),
      }));
    },
  };
}

export type EventService = ReturnType<typeof createEventService>;
export type { EventRow } from '../db/events.js';
