import { recordEvent, type EventLevel } from '../db/events.js';
import type { PoolClient } from '../db/pool.js';
import { toSnapshotRecord, type SnapshotRecord } from '../db/snapshots.js';
import { IllegalSnapshotTransitionError, canTransition, type SnapshotState } from '../domain/snapshot-states.js';

/**
 * Moves a snapshot whose row the caller holds locked through the state machine, with its event, inside the
 * caller's transaction (db/snapshots.ts transitionSnapshot opens its own, which API operations cannot use).
 */
export async function transitionLockedSnapshot(
  tx: PoolClient,
  snapshot: SnapshotRecord,
  to: SnapshotState,
  event: { type: string; description: string; level?: EventLevel; details?: Record<string, unknown> },
  set: Partial<Record<'last_error' | 'removed', unknown>> = {},
): Promise<SnapshotRecord> {
  if (!canTransition(snapshot.status, to)) throw new IllegalSnapshotTransitionError(snapshot.id, snapshot.status, to);
  const cols = Object.keys(set);
  const { rows } = await tx.query(
    `UPDATE snapshots SET status = $2, ${cols.map((c, i) => `${c} = $${i + 3}, `).join('')}updated = now() WHERE id = $1 RETURNING *`,
    [snapshot.id, to, ...cols.map((c) => set[c as keyof typeof set])],
  );
  await recordEvent(tx, {
    ...event,
    accountId: snapshot.accountId,
    resourceType: 'Snapshot',
    resourceId: snapshot.id,
    details: { ...event.details, snapshotId: snapshot.id, volumeId: snapshot.volumeId, from: snapshot.status, to },
  });
  return toSnapshotRecord(rows[0]);
}
