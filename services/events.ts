import { listEventsAfter, type EventRow } from '../db/events.js';
import type { Pool } from '../db/pool.js';
import { backupKindsOf, listBackupProgress, type BackupProgressRecord } from '../db/snapshots.js';
import { publicErrorMessage } from '../domain/errors.js';
import { ownerScope, type Caller } from './caller.js';

/**
 * Backup progress of one in-flight snapshot, as the event stream pushes it: the stored record, with `lastError`
 * (why the last attempt failed) in public wording, and once the attempt has chosen (docs/design.md §14) whether
 * it is a full copy or a delta on `parentSnapshotId`'s backup.
 */
export type SnapshotProgress = BackupProgressRecord & { kind?: 'full' | 'incremental'; parentSnapshotId?: string | null };

/** Whether `caller` may see `event`: its own account's; an admin sees all (global ones too). */
export function canSee(caller: Caller, event: Pick<EventRow, 'accountId'>): boolean {
  return caller.role === 'admin' || event.accountId === caller.accountId;
}

/** The audit/notification event log, read per account. */
export function createEventService(deps: { pool: Pool }) {
  const { pool } = deps;
  return {
    /** Events after id `since` (exclusive), oldest first, at most `limit`. */
    list(caller: Caller, opts: { since?: number; limit?: number } = {}): Promise<EventRow[]> {
      return listEventsAfter(pool, opts.since ?? 0, ownerScope(caller), opts.limit ?? 100);
    },

    /** Backup progress of the caller's snapshots in flight. */
    async progress(caller: Caller): Promise<SnapshotProgress[]> {
      const rows = await listBackupProgress(pool, ownerScope(caller));
      const kinds = await backupKindsOf(pool, rows.filter((r) => r.state === 'BackingUp').map((r) => r.snapshotId));
      return rows.map((r) => {
        const kind = kinds.get(r.snapshotId);
        return {
          ...r,
          ...(kind ? { kind: kind.kind, parentSnapshotId: kind.parentSnapshotId } : {}),
          // Admins see host paths whole, as in events; other accounts shortened (api/redact.ts).
          lastError: r.lastError === null || caller.role === 'admin' ? r.lastError : publicErrorMessage(r.lastError),
        };
      });
    },
  };
}

export type EventService = ReturnType<typeof createEventService>;
export type { EventRow } from '../db/events.js';
