import { decide, decideBusy, type BusyVolume, type InFlightSnapshot, type Operation } from '../domain/policy.js';
import { IN_PROGRESS_STATES } from '../domain/snapshot-states.js';
import { OperationNotAllowedError, VolumeBusyError } from '../domain/errors.js';
import { TRANSITIONAL_VOLUME_STATES } from '../db/volumes.js';
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

/**
 * Volumes whose storage work is in progress (Migrating, Resizing, Creating) on the given VM, among the given
 * volumes, or being created from the given snapshots. Call it under the same row locks as inFlightSnapshots:
 * a volume enters such a state only under its VM's and its own row lock.
 */
export async function busyVolumes(
  db: Queryable,
  scope: { vmId?: string | null; volumeIds?: string[]; snapshotIds?: string[] },
): Promise<BusyVolume[]> {
  const { rows } = await db.query(
    `SELECT id, state, type, vm_id, pending->>'snapshotId' AS source_snapshot_id
       FROM volumes
      WHERE state = ANY($1::text[])
        AND (vm_id = $2 OR id = ANY($3::uuid[]) OR pending->>'snapshotId' = ANY($4::text[]))`,
    [[...TRANSITIONAL_VOLUME_STATES], scope.vmId ?? null, scope.volumeIds ?? [], scope.snapshotIds ?? []],
  );
  return rows.map((r) => ({ volumeId: r.id, state: r.state, volumeType: r.type, vmId: r.vm_id, sourceSnapshotId: r.source_snapshot_id }));
}

/** Throws VolumeBusyError (409 VOLUME_BUSY) when a busy volume conflicts with `op`. */
export function assertNotBusy(op: Operation, busy: readonly BusyVolume[], snapshotVolumeId?: string): void {
  const d = decideBusy(op, busy, snapshotVolumeId);
  if (!d.allowed) throw new VolumeBusyError(d.reason, d.volumeId, d.state);
}
