import { decide, type InFlightSnapshot, type Operation } from '../domain/policy.js';
import { IN_PROGRESS_STATES } from '../domain/snapshot-states.js';
import { OperationNotAllowedError } from '../domain/errors.js';
import type { Queryable } from '../db/pool.js';

/**
 * Snapshots still in flight on the given VM's volumes or the given volumes. Call it inside the transaction
 * that holds the VM/volume row locks, so no backup can start between the check and the action.
 */
export async function inFlightSnapshots(
  db: Queryable,
  scope: { vmId?: string | null; volumeIds?: string[]; snapshotIds?: string[] },
): Promise<InFlightSnapshot[]> {
  const { rows } = await db.query(
    `SELECT s.id, s.volume_id, v.type, v.vm_id
       FROM snapshots s JOIN volumes v ON v.id = s.volume_id
      WHERE s.status = ANY($1::text[])
        AND (v.vm_id = $2 OR s.volume_id = ANY($3::uuid[]) OR s.id = ANY($4::uuid[]))`,
    [IN_PROGRESS_STATES, scope.vmId ?? null, scope.volumeIds ?? [], scope.snapshotIds ?? []],
  );
  return rows.map((r) => ({ snapshotId: r.id, volumeId: r.volume_id, volumeType: r.type, vmId: r.vm_id }));
}

/** Throws OperationNotAllowedError when the policy table refuses `op`. */
export function assertAllowed(op: Operation, inFlight: readonly InFlightSnapshot[]): void {
  const d = decide(op, inFlight);
  if (!d.allowed) throw new OperationNotAllowedError(d.reason, d.snapshotId, d.volumeId);
}
