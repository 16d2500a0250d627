import { randomUUID } from 'node:crypto';
import { findStoragePool } from '../db/catalog-queries.js';
import { recordEvent } from '../db/events.js';
import type { PoolClient } from '../db/pool.js';
import type { Hypervisor } from '../db/vms.js';
import {
  destroyPrimaryRefsOfVolume,
  findVolume,
  insertVolume,
  listVolumes,
  markVolumeDestroyed,
  updateVolume,
  type VolumeRecord,
  type VolumeState,
  type VolumeType,
} from '../db/volumes.js';
import { ConflictError, NotFoundError, ValidationError } from '../domain/errors.js';
import type { VolumeAction } from '../domain/policy.js';
import { ownerScope, type Caller } from './caller.js';
import { defaultStoragePool, driverFor, type ServiceDeps } from './deps.js';
import { lockVolumeWithVm } from './locks.js';
import { assertAllowed, inFlightSnapshots } from './policy-guard.js';
import { withStorageTransaction, type OnRollback } from './storage-transaction.js';
import { volumeView, type VolumeView } from './views.js';

export interface CreateVolumeInput {
  name: string;
  sizeBytes: number;
  hypervisor?: Hypervisor;
  /** Default: the hypervisor's first storage pool. */
  poolId?: string;
}

/** Volumes: standalone data disks and the operations on any volume, under the parallel-operation policy. */
export function createVolumeService(deps: ServiceDeps) {
  const { pool, logger } = deps;

  /**
   * Locks the volume (VM first), checks the policy for `action` and that it is Ready, then runs `fn` in the
   * same transaction.
   */
  function withLockedVolume<T>(
    caller: Caller,
    id: string,
    action: VolumeAction,
    fn: (tx: PoolClient, volume: VolumeRecord, onRollback: OnRollback) => Promise<T>,
  ): Promise<T> {
    return withStorageTransaction(pool, logger, async (tx, onRollback) => {
      const { volume } = await lockVolumeWithVm(tx, id, ownerScope(caller));
      assertAllowed({ kind: 'volume', action, volumeId: volume.id }, await inFlightSnapshots(tx, { volumeIds: [volume.id] }));
      if (volume.state !== 'Ready') throw new ConflictError('INVALID_STATE', `volume ${volume.id} is ${volume.state}, not Ready`, { volumeId: volume.id, state: volume.state });
      return fn(tx, volume, onRollback);
    });
  }

  const event = (tx: PoolClient, v: VolumeRecord, type: string, description: string, details: Record<string, unknown> = {}) =>
    recordEvent(tx, { type, accountId: v.accountId, resourceType: 'Volume', resourceId: v.id, description, details: { volumeId: v.id, ...details } });

  return {
    /** Creates a detached DATADISK volume: an empty image in the chosen (or first) storage pool. */
    async create(caller: Caller, input: CreateVolumeInput): Promise<VolumeView> {
      const hypervisor = input.hypervisor ?? 'KVM';
      const driver = driverFor(deps, hypervisor);
      const target = input.poolId ? await findStoragePool(pool, input.poolId) : await defaultStoragePool(pool, hypervisor);
      if (!target) throw new NotFoundError('storage pool', input.poolId!);
      if (target.hypervisor !== hypervisor) {
        throw new ConflictError('HYPERVISOR_MISMATCH', `storage pool ${target.name} is a ${target.hypervisor} pool, not ${hypervisor}`, { poolId: target.id });
      }
      const volume = await withStorageTransaction(pool, logger, async (tx, onRollback) => {
        const id = randomUUID();
        const created = await driver.createVolume(target.path, id, input.sizeBytes);
        onRollback(() => driver.deleteVolume(created.path));
        const v = await insertVolume(tx, {
          id,
          accountId: caller.accountId,
          vmId: null,
          name: input.name,
          type: 'DATADISK',
          hypervisor,
          sizeBytes: input.sizeBytes,
          poolId: target.id,
          path: created.path,
          format: created.format,
          deviceId: null,
        });
        await event(tx, v, 'VOLUME.CREATE', `volume ${v.name} (${v.sizeBytes} bytes) created in pool ${target.name}`, { poolId: target.id, path: v.path });
        return v;
      });
      return volumeView(volume);
    },

    async list(caller: Caller, filter: { vmId?: string; type?: VolumeType; state?: VolumeState } = {}): Promise<VolumeView[]> {
      return (await listVolumes(pool, ownerScope(caller), filter)).map(volumeView);
    },

    async get(caller: Caller, id: string): Promise<VolumeView> {
      const v = await findVolume(pool, id, ownerScope(caller));
      if (!v) throw new NotFoundError('volume', id);
      return volumeView(v);
    },

    /** Deletes a detached DATADISK: its image (and the primary snapshots in it) go; backups stay. */
    delete(caller: Caller, id: string): Promise<VolumeView> {
      return withLockedVolume(caller, id, 'delete', async (tx, volume) => {
        if (volume.vmId) throw new ConflictError('VOLUME_ATTACHED', `volume ${volume.id} is attached to VM ${volume.vmId}; detach it first`, { volumeId: volume.id, vmId: volume.vmId });
        const driver = driverFor(deps, volume.hypervisor);
        const destroyed = await markVolumeDestroyed(tx, volume.id);
        await destroyPrimaryRefsOfVolume(tx, volume.id);
        await event(tx, volume, 'VOLUME.DELETE', `volume ${volume.name} deleted`, { path: volume.path });
        // Irreversible, so last: right before COMMIT.
        await driver.deleteVolume(volume.path);
        return volumeView(destroyed);
      });
    },

    /** Resizes a volume; shrinking loses data and needs `shrinkOk`. */
    resize(caller: Caller, id: string, input: { sizeBytes: number; shrinkOk?: boolean }): Promise<VolumeView> {
      return withLockedVolume(caller, id, 'resize', async (tx, volume, onRollback) => {
        if (input.sizeBytes < volume.sizeBytes && !input.shrinkOk) {
          throw new ValidationError(`volume ${volume.id} has ${volume.sizeBytes} bytes; shrinking loses data, pass shrinkOk: true to do it`, {
            sizeBytes: `smaller than the current size ${volume.sizeBytes}; pass shrinkOk: true to shrink`,
          });
        }
        if (input.sizeBytes === volume.sizeBytes) return volumeView(volume);
        const driver = driverFor(deps, volume.hypervisor);
        const resized = await updateVolume(tx, volume.id, { size_bytes: input.sizeBytes });
        await event(tx, volume, 'VOLUME.RESIZE', `volume ${volume.name} resized from ${volume.sizeBytes} to ${input.sizeBytes} bytes`, { from: volume.sizeBytes, to: input.sizeBytes });
        await driver.resizeVolume(volume.path, input.sizeBytes);
        onRollback(() => driver.resizeVolume(volume.path, volume.sizeBytes));
        return volumeView(resized);
      });
    },

    /** Moves a volume's image (with its primary snapshots) to another storage pool of the same hypervisor. */
    migrate(caller: Caller, id: string, input: { poolId: string }): Promise<VolumeView> {
      return withLockedVolume(caller, id, 'migrate', async (tx, volume, onRollback) => {
        const target = await findStoragePool(tx, input.poolId);
        if (!target) throw new NotFoundError('storage pool', input.poolId);
        if (target.hypervisor !== volume.hypervisor) {
          throw new ConflictError('HYPERVISOR_MISMATCH', `storage pool ${target.name} is a ${target.hypervisor} pool; volume ${volume.id} is ${volume.hypervisor}`, { poolId: target.id, volumeId: volume.id });
        }
        if (target.id === volume.poolId) throw new ConflictError('INVALID_STATE', `volume ${volume.id} is already in storage pool ${target.name}`, { volumeId: volume.id, poolId: target.id });
        const driver = driverFor(deps, volume.hypervisor);
        const source = await findStoragePool(tx, volume.poolId);
        const moved = await driver.migrateVolume(volume.path, target.path, volume.id);
        if (source) onRollback(() => driver.migrateVolume(moved.path, source.path, volume.id));
        const updated = await updateVolume(tx, volume.id, { pool_id: target.id, path: moved.path });
        // The internal snapshots moved with the image: their primary store refs follow.
        await tx.query(
          `UPDATE snapshot_store_ref r SET store_id = $2, install_path = $3 || '@' || r.snapshot_id, last_updated = now()
             FROM snapshots s WHERE s.id = r.snapshot_id AND s.volume_id = $1 AND r.store_role = 'Primary' AND r.state <> 'Destroyed'`,
          [volume.id, target.id, moved.path],
        );
        await event(tx, volume, 'VOLUME.MIGRATE', `volume ${volume.name} migrated to storage pool ${target.name}`, { from: volume.poolId, to: target.id, path: moved.path });
        return volumeView(updated);
      });
    },
  };
}

export type VolumeService = ReturnType<typeof createVolumeService>;
