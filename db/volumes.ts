import type { BusyVolume } from '../domain/policy.js';
import type { Queryable } from './pool.js';
import type { Hypervisor } from './vms.js';

export type VolumeType = 'ROOT' | 'DATADISK';
export type VolumeState = 'Allocated' | 'Creating' | 'Ready' | 'Migrating' | 'Resizing' | 'Reverting' | 'Error' | 'Destroyed';

/**
 * States a volume holds while long storage work runs outside any transaction (domain/policy.ts treats the
 * volume as busy). `volumes.pending` says what the work does, so a reconciler can finish or undo it.
 */
export const TRANSITIONAL_VOLUME_STATES = ['Creating', 'Migrating', 'Resizing', 'Reverting'] as const;
export type TransitionalVolumeState = (typeof TRANSITIONAL_VOLUME_STATES)[number];

export function isTransitionalVolumeState(state: string): state is TransitionalVolumeState {
  return (TRANSITIONAL_VOLUME_STATES as readonly string[]).includes(state);
}

/** What a volume in a transitional state is doing; `token` tells this run apart from any other. */
export type PendingVolumeOperation =
  | { op: 'migrate'; token: string; fromPoolId: string; toPoolId: string; fromPath: string; toPath: string }
  | { op: 'resize'; token: string; fromBytes: number; toBytes: number }
  | { op: 'create-from-snapshot'; token: string; snapshotId: string; poolId: string; poolPath: string }
  /** A revert whose primary snapshot is gone: the volume's active layer is rewritten from the backup chain. */
  | { op: 'revert-from-backup'; token: string; snapshotId: string; storePath: string; installPath: string; toBytes: number | null };

/**
 * The image of a volume already Destroyed in the database, still to be deleted from primary storage: the
 * delete's intent, committed with the Destroyed state, so that a crash before the image is gone leaves a
 * record start-up and storage GC finish (services/volume-image-delete.ts). Kept in `volumes.pending`.
 */
export interface PendingImageDelete {
  op: 'delete-image';
  token: string;
  path: string;
}

/** A `volumes` row. */
export interface VolumeRecord {
  id: string;
  accountId: string;
  vmId: string | null;
  name: string;
  type: VolumeType;
  hypervisor: Hypervisor;
  sizeBytes: number;
  poolId: string;
  path: string;
  format: 'qcow2' | 'vhd';
  state: VolumeState;
  deviceId: number | null;
  createdAt: string;
  updatedAt: string;
  removedAt: string | null;
}

/** Maps a `volumes` row. */
export function toVolumeRecord(r: Record<string, any>): VolumeRecord {
  return {
    id: r.id,
    accountId: r.account_id,
    vmId: r.vm_id,
    name: r.name,
    type: r.type,
    hypervisor: r.hypervisor,
    sizeBytes: Number(r.size_bytes),
    poolId: r.pool_id,
    path: r.path,
    format: r.format,
    state: r.state,
    deviceId: r.device_id,
    createdAt: new Date(r.created).toISOString(),
    updatedAt: new Date(r.updated).toISOString(),
    removedAt: r.removed == null ? null : new Date(r.removed).toISOString(),
  };
}

/** One volume visible to `ownerId` (null: any account), removed ones included (they show as Destroyed). */
export async function findVolume(db: Queryable, id: string, ownerId: string | null): Promise<VolumeRecord | undefined> {
  const { rows } = await db.query('SELECT * FROM volumes WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)', [id, ownerId]);
  return rows[0] ? toVolumeRecord(rows[0]) : undefined;
}

/** Where a volume's image is: what a snapshot activity needs of its volume. */
export interface VolumeLocation {
  path: string;
  hypervisor: Hypervisor;
  poolId: string;
  sizeBytes: number;
}

/** The location of a volume (removed ones included), or undefined. */
export async function findVolumeLocation(db: Queryable, id: string): Promise<VolumeLocation | undefined> {
  const { rows } = await db.query<Omit<VolumeLocation, 'sizeBytes'> & { sizeBytes: string }>(
    'SELECT path, hypervisor, pool_id AS "poolId", size_bytes AS "sizeBytes" FROM volumes WHERE id = $1',
    [id],
  );
  return rows[0] && { ...rows[0], sizeBytes: Number(rows[0].sizeBytes) };
}

/**
 * Volumes visible to `ownerId`; Destroyed ones only when asked for by state. Keyset-paged by `after` (an id)
 * and `limit`, in (created, device, id) order: a VM's volumes share their creation time.
 */
export async function listVolumes(
  db: Queryable,
  ownerId: string | null,
  filter: { vmId?: string; type?: VolumeType; state?: VolumeState; after?: string; limit?: number } = {},
): Promise<VolumeRecord[]> {
  const { rows } = await db.query(
    `SELECT * FROM volumes
      WHERE ($1::uuid IS NULL OR account_id = $1)
        AND ($2::uuid IS NULL OR vm_id = $2)
        AND ($3::text IS NULL OR type = $3)
        AND (CASE WHEN $4::text IS NULL THEN state <> 'Destroyed' ELSE state = $4 END)
        AND ($5::uuid IS NULL OR (created, coalesce(device_id, 2147483647), id) >
             (SELECT created, coalesce(device_id, 2147483647), id FROM volumes WHERE id = $5))
      ORDER BY created, coalesce(device_id, 2147483647), id
      LIMIT $6`,
    [ownerId, filter.vmId ?? null, filter.type ?? null, filter.state ?? null, filter.after ?? null, filter.limit ?? null],
  );
  return rows.map(toVolumeRecord);
}

/** Volumes `ids` visible to `ownerId` (Destroyed ones left out, as in listVolumes). */
export async function findVolumesByIds(db: Queryable, ids: string[], ownerId: string | null): Promise<VolumeRecord[]> {
  if (!ids.length) return [];
  const { rows } = await db.query(
    `SELECT * FROM volumes WHERE id = ANY($1::uuid[]) AND ($2::uuid IS NULL OR account_id = $2) AND state <> 'Destroyed'`,
    [ids, ownerId],
  );
  return rows.map(toVolumeRecord);
}

/** The volumes attached to VMs `vmIds`, by VM and device order. */
export async function volumesOfVms(db: Queryable, vmIds: string[]): Promise<VolumeRecord[]> {
  if (!vmIds.length) return [];
  const { rows } = await db.query(
    `SELECT * FROM volumes WHERE vm_id = ANY($1::uuid[]) AND state <> 'Destroyed' ORDER BY vm_id, device_id NULLS LAST, created`,
    [vmIds],
  );
  return rows.map(toVolumeRecord);
}

/** A volume to insert: the record's own fields; state and times are the database's. */
export type NewVolume = Omit<VolumeRecord, 'state' | 'createdAt' | 'updatedAt' | 'removedAt'>;

/** Inserts a Ready volume, or one still being created (`pending` then says how). */
export async function insertVolume(db: Queryable, v: NewVolume, pending?: PendingVolumeOperation): Promise<VolumeRecord> {
  const { rows } = await db.query(
    `INSERT INTO volumes (id, account_id, vm_id, name, type, hypervisor, size_bytes, pool_id, path, format, state, device_id, pending, pending_heartbeat)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, CASE WHEN $13::jsonb IS NULL THEN NULL ELSE now() END) RETURNING *`,
    [v.id, v.accountId, v.vmId, v.name, v.type, v.hypervisor, v.sizeBytes, v.poolId, v.path, v.format, pending ? 'Creating' : 'Ready', v.deviceId, pending ? JSON.stringify(pending) : null],
  );
  return toVolumeRecord(rows[0]);
}

/** Moves a Ready volume (whose row the caller has locked) into a transitional state for `pending`. */
export async function beginVolumeOperation(db: Queryable, id: string, state: TransitionalVolumeState, pending: PendingVolumeOperation): Promise<VolumeRecord> {
  const { rows } = await db.query(
    `UPDATE volumes SET state = $2, pending = $3, pending_heartbeat = now(), updated = now() WHERE id = $1 AND state = 'Ready' RETURNING *`,
    [id, state, JSON.stringify(pending)],
  );
  if (!rows[0]) throw new Error(`volume ${id} is not Ready`);
  return toVolumeRecord(rows[0]);
}

/** Shows that the process running `token` is alive; false when the operation is no longer ours (reconciled). */
export async function heartbeatVolumeOperation(db: Queryable, id: string, token: string): Promise<boolean> {
  const { rowCount } = await db.query(`UPDATE volumes SET pending_heartbeat = now() WHERE id = $1 AND pending->>'token' = $2`, [id, token]);
  return (rowCount ?? 0) > 0;
}

/**
 * Ends operation `token` on a volume whose row the caller has locked: sets `set` (state included) and clears
 * `pending`. Undefined when the operation is no longer ours (a reconciler finished or undid it meanwhile).
 */
export async function endVolumeOperation(
  db: Queryable,
  id: string,
  token: string,
  set: Partial<Record<'size_bytes' | 'pool_id' | 'path' | 'state' | 'removed', unknown>>,
): Promise<VolumeRecord | undefined> {
  const cols = Object.keys(set);
  const { rows } = await db.query(
    `UPDATE volumes SET ${cols.map((c, i) => `${c} = $${i + 3}, `).join('')}pending = NULL, pending_heartbeat = NULL, updated = now()
      WHERE id = $1 AND pending->>'token' = $2 RETURNING *`,
    [id, token, ...cols.map((c) => set[c as keyof typeof set])],
  );
  return rows[0] ? toVolumeRecord(rows[0]) : undefined;
}

/** Whether operation `token` is still the one running on the volume (not settled by a reconciler meanwhile). */
export async function volumeOperationIsCurrent(db: Queryable, id: string, token: string): Promise<boolean> {
  const { rowCount } = await db.query(`SELECT 1 FROM volumes WHERE id = $1 AND pending->>'token' = $2`, [id, token]);
  return (rowCount ?? 0) > 0;
}

/**
 * Ends an operation that has no token (a row from before tokens, or edited by hand) on a volume still in
 * `state`: back to Ready. False when the row has moved on meanwhile.
 */
export async function endUntokenedVolumeOperation(db: Queryable, id: string, state: VolumeState): Promise<boolean> {
  const { rows } = await db.query(
    `UPDATE volumes SET state = 'Ready', updated = now() WHERE id = $1 AND state = $2 AND pending IS NULL RETURNING id`,
    [id, state],
  );
  return rows.length > 0;
}

/** A volume in a transitional state with what it is doing, as the reconciler reads it. */
export interface StuckVolume {
  volume: VolumeRecord;
  pending: PendingVolumeOperation | null;
}

/** Volumes in a transitional state whose process has not shown a heartbeat for `staleSeconds`. */
export async function findStuckVolumes(db: Queryable, staleSeconds: number): Promise<StuckVolume[]> {
  const { rows } = await db.query(
    `SELECT * FROM volumes
      WHERE state = ANY($1::text[]) AND coalesce(pending_heartbeat, updated) <= now() - make_interval(secs => $2)
      ORDER BY updated`,
    [[...TRANSITIONAL_VOLUME_STATES], staleSeconds],
  );
  return rows.map((r) => ({ volume: toVolumeRecord(r), pending: (r.pending as PendingVolumeOperation | null) ?? null }));
}

/** Sets columns of a volume (and its `updated` time); returns the new row. */
export async function updateVolume(
  db: Queryable,
  id: string,
  set: Partial<Record<'vm_id' | 'device_id' | 'size_bytes' | 'pool_id' | 'path' | 'state' | 'removed', unknown>>,
): Promise<VolumeRecord> {
  const cols = Object.keys(set);
  const { rows } = await db.query(
    `UPDATE volumes SET ${cols.map((c, i) => `${c} = $${i + 2}, `).join('')}updated = now() WHERE id = $1 RETURNING *`,
    [id, ...cols.map((c) => set[c as keyof typeof set])],
  );
  return toVolumeRecord(rows[0]);
}

/**
 * Marks a volume Destroyed and removed. With `imageDelete`, the deletion of its image still to come is recorded
 * with it (in the same statement), for the caller to carry out after COMMIT and for start-up and storage GC to
 * finish after a crash.
 */
export async function markVolumeDestroyed(db: Queryable, id: string, imageDelete?: PendingImageDelete): Promise<VolumeRecord> {
  if (!imageDelete) return updateVolume(db, id, { state: 'Destroyed', removed: new Date(), vm_id: null, device_id: null });
  const { rows } = await db.query(
    `UPDATE volumes SET state = 'Destroyed', removed = now(), vm_id = NULL, device_id = NULL, pending = $2, pending_heartbeat = NULL, updated = now()
      WHERE id = $1 RETURNING *`,
    [id, JSON.stringify(imageDelete)],
  );
  return toVolumeRecord(rows[0]);
}

/** A Destroyed volume whose image is still to be deleted, with the recorded intent. */
export interface VolumeAwaitingImageDelete {
  volume: VolumeRecord;
  pending: PendingImageDelete;
}

/** Destroyed volumes whose image deletion was recorded but not yet done (a crash in between), oldest first. */
export async function volumesAwaitingImageDelete(db: Queryable): Promise<VolumeAwaitingImageDelete[]> {
  const { rows } = await db.query(`SELECT * FROM volumes WHERE state = 'Destroyed' AND pending->>'op' = 'delete-image' ORDER BY updated`);
  return rows.map((r) => ({ volume: toVolumeRecord(r), pending: r.pending as PendingImageDelete }));
}

/** Clears the recorded image deletion `token` of a Destroyed volume once its image is gone; false if not current. */
export async function endImageDelete(db: Queryable, id: string, token: string): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE volumes SET pending = NULL, updated = now() WHERE id = $1 AND state = 'Destroyed' AND pending->>'op' = 'delete-image' AND pending->>'token' = $2`,
    [id, token],
  );
  return (rowCount ?? 0) > 0;
}

/** The primary snapshots on a volume's image are gone with it (deleted or replaced): their store refs say so. */
export async function destroyPrimaryRefsOfVolume(db: Queryable, volumeId: string): Promise<void> {
  await db.query(
    `UPDATE snapshot_store_ref r SET state = 'Destroyed', last_updated = now()
       FROM snapshots s
      WHERE s.id = r.snapshot_id AND s.volume_id = $1 AND r.store_role = 'Primary' AND r.state <> 'Destroyed'`,
    [volumeId],
  );
}

/** The primary store refs of a volume's internal snapshots follow its image to another pool. */
export async function movePrimaryRefs(db: Queryable, volumeId: string, poolId: string, volumePath: string): Promise<void> {
  await db.query(
    `UPDATE snapshot_store_ref r SET store_id = $2, install_path = $3 || '@' || r.snapshot_id, last_updated = now()
       FROM snapshots s WHERE s.id = r.snapshot_id AND s.volume_id = $1 AND r.store_role = 'Primary' AND r.state <> 'Destroyed'`,
    [volumeId, poolId, volumePath],
  );
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

/** The KVM VM a live volume's image belongs to, with its state and host URI (the live-image resolver). */
export async function vmOfImage(db: Queryable, path: string): Promise<{ vmId: string; state: string; hostName: string; hostUri: string | null } | undefined> {
  const { rows } = await db.query(
    `SELECT vm.id AS vm_id, vm.state, h.name AS host_name, h.uri AS host_uri
       FROM volumes v JOIN virtual_machines vm ON vm.id = v.vm_id JOIN hosts h ON h.id = vm.host_id
      WHERE v.path = $1 AND v.removed IS NULL AND vm.removed IS NULL AND vm.hypervisor = 'KVM'`,
    [path],
  );
  const r = rows[0];
  return r ? { vmId: r.vm_id, state: r.state, hostName: r.host_name, hostUri: r.host_uri ?? null } : undefined;
}

/** The live volume whose image is `path`, if any. */
export async function liveVolumeByPath(db: Queryable, path: string): Promise<VolumeRecord | undefined> {
  const { rows } = await db.query(`SELECT * FROM volumes WHERE path = $1 AND removed IS NULL AND state <> 'Destroyed'`, [path]);
  return rows[0] ? toVolumeRecord(rows[0]) : undefined;
}
