import { NotFoundError } from '../domain/errors.js';
import type { PoolClient } from './pool.js';
import { toSnapshotRecord, type SnapshotRecord } from './snapshots.js';
import { toVmRecord, type VmRecord } from './vms.js';
import { toVolumeRecord, type VolumeRecord } from './volumes.js';

/*
 * Row locks for policy-checked changes, taken inside the caller's transaction. One lock order everywhere:
 * VM, then its volumes (by id), then snapshots. Checking the policy and acting happen under these locks, so two
 * requests cannot both slip through.
 */

/** Locks a VM visible to `ownerId` (null: any account). */
export async function lockVm(tx: PoolClient, vmId: string, ownerId: string | null): Promise<VmRecord> {
  const { rows } = await tx.query(
    'SELECT * FROM virtual_machines WHERE id = $1 AND removed IS NULL AND ($2::uuid IS NULL OR account_id = $2) FOR UPDATE',
    [vmId, ownerId],
  );
  if (!rows[0]) throw new NotFoundError('VM', vmId);
  return toVmRecord(rows[0]);
}

/** Locks the live volumes attached to a VM whose row the caller already holds, in id order. */
export async function lockVmVolumes(tx: PoolClient, vmId: string): Promise<VolumeRecord[]> {
  const { rows } = await tx.query(
    `SELECT * FROM volumes WHERE vm_id = $1 AND removed IS NULL ORDER BY id FOR UPDATE`,
    [vmId],
  );
  return rows.map(toVolumeRecord).sort((a, b) => (a.deviceId ?? 99) - (b.deviceId ?? 99));
}

/**
 * Locks a volume visible to `ownerId` and, first, the VM it is attached to. With `includeRemoved`, a removed
 * volume is locked too (snapshot operations outlive their volume).
 */
export async function lockVolumeWithVm(
  tx: PoolClient,
  volumeId: string,
  ownerId: string | null,
  opts: { includeRemoved?: boolean } = {},
): Promise<{ volume: VolumeRecord; vm: VmRecord | null }> {
  const removedClause = opts.includeRemoved ? '' : 'AND removed IS NULL';
  const peek = await tx.query(`SELECT vm_id FROM volumes WHERE id = $1 ${removedClause} AND ($2::uuid IS NULL OR account_id = $2)`, [volumeId, ownerId]);
  if (!peek.rows[0]) throw new NotFoundError('volume', volumeId);
  let vmId: string | null = peek.rows[0].vm_id;
  for (;;) {
    const vm = vmId ? await tx.query('SELECT * FROM virtual_machines WHERE id = $1 FOR UPDATE', [vmId]) : null;
    const { rows } = await tx.query(`SELECT * FROM volumes WHERE id = $1 ${removedClause} FOR UPDATE`, [volumeId]);
    if (!rows[0]) throw new NotFoundError('volume', volumeId);
    const volume = toVolumeRecord(rows[0]);
    // Attached or detached while we waited: the VM lock we hold is the wrong one. Locks stay until the end of
    // the transaction, so retrying with the new VM keeps the order VM-then-volume for the rows that matter.
    if (volume.vmId === vmId) return { volume, vm: vm?.rows[0] ? toVmRecord(vm.rows[0]) : null };
    vmId = volume.vmId;
  }
}

/** Locks a snapshot visible to `ownerId`, after its volume and that volume's VM. */
export async function lockSnapshotWithVolume(
  tx: PoolClient,
  snapshotId: string,
  ownerId: string | null,
): Promise<{ snapshot: SnapshotRecord; volume: VolumeRecord; vm: VmRecord | null }> {
  const peek = await tx.query('SELECT volume_id FROM snapshots WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)', [snapshotId, ownerId]);
  if (!peek.rows[0]) throw new NotFoundError('snapshot', snapshotId);
  const { volume, vm } = await lockVolumeWithVm(tx, peek.rows[0].volume_id, null, { includeRemoved: true });
  const { rows } = await tx.query('SELECT * FROM snapshots WHERE id = $1 FOR UPDATE', [snapshotId]);
  return { snapshot: toSnapshotRecord(rows[0]), volume, vm };
}
