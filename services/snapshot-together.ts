/**
 * Several of a running VM's volumes snapshotted at one instant (docs/design.md §15), on the VM's host: its QEMU
 * takes the internal snapshots in one QMP `transaction`, all or none, under every image's lock (taken in volume
 * id order, so two groups never wait on each other). Each snapshot is still its own: its row moves Allocated →
 * Creating (the intent) → CreatedOnPrimary (the result, with its Primary ref) here, and its own workflow then
 * finds it created and backs it up. A VM that stopped meanwhile has disks nothing writes: each is snapshotted
 * offline, one after the other, which is the same instant.
 */
import type { Logger } from 'pino';
import { findHost } from '../db/catalog-queries.js';
import { withImageLock } from '../db/image-locks.js';
import type { Pool } from '../db/pool.js';
import { getSnapshot, transitionSnapshot } from '../db/snapshots.js';
import { findVm } from '../db/vms.js';
import type { ComputeRegistry } from '../compute/registry.js';
import { ConflictError } from '../domain/errors.js';
import type { StorageDriver } from '../storage/driver.js';

/** One member of the group: its row (Allocated) and its volume's image. */
export interface TogetherMember {
  snapshotId: string;
  volumeId: string;
  path: string;
  poolId: string;
  sizeBytes: number;
}

export interface TogetherDeps {
  pool: Pool;
  logger: Logger;
  compute: ComputeRegistry;
  kvm: StorageDriver;
}

/** Takes the members' snapshots at one instant; SNAPSHOT_CREATION_FAILED (every member in Error) if it cannot. */
export async function snapshotTogether(deps: TogetherDeps, vmId: string, members: TogetherMember[]): Promise<void> {
  const { pool } = deps;
  const log = deps.logger.child({ vmId, snapshotIds: members.map((m) => m.snapshotId) });
  for (const m of members) {
    await transitionSnapshot(pool, m.snapshotId, 'Creating', { event: { type: 'SNAPSHOT.CREATE', description: 'creating snapshot {name} on primary storage, with the other disks of its VM at one instant' } });
  }
  try {
    const vm = await findVm(pool, vmId, null);
    const host = vm?.hostId ? await findHost(pool, vm.hostId) : undefined;
    if (!vm || !host) throw new Error(`VM ${vmId} has no host`);
    const compute = deps.compute.forHost(host);
    const ordered = [...members].sort((a, b) => a.volumeId.localeCompare(b.volumeId));
    const locked = ordered.reduceRight<() => Promise<void>>(
      (inner, m) => () => withImageLock(pool, m.volumeId, inner, { logger: log }),
      async () => {
        const live = await compute.snapshotDisksLive(vmId, members.map((m) => ({ file: m.path, tag: m.snapshotId })));
        if (live === 'no-domain') {
          log.info('the VM stopped meanwhile: its disks are snapshotted offline, one after the other');
          for (const m of members) await deps.kvm.createSnapshot(m.path, m.snapshotId);
        }
      },
    );
    await locked();
  } catch (err) {
    const reason = `creating the snapshots of VM ${vmId}'s disks at one instant failed: ${err instanceof Error ? err.message : String(err)}`;
    log.error({ err }, 'snapshots at one instant failed');
    for (const m of members) {
      await transitionSnapshot(pool, m.snapshotId, 'Error', { set: { last_error: reason }, event: { type: 'SNAPSHOT.CREATE', level: 'ERROR', description: reason } });
    }
    throw new ConflictError('SNAPSHOT_CREATION_FAILED', reason, { vmId });
  }
  for (const m of members) {
    await transitionSnapshot(pool, m.snapshotId, 'CreatedOnPrimary', {
      set: { size: m.sizeBytes },
      event: { type: 'SNAPSHOT.CREATE', description: 'snapshot {name} created on primary storage, with the other disks of its VM at one instant' },
      storeRef: { snapshotId: m.snapshotId, role: 'Primary', storeId: m.poolId, installPath: `${m.path}@${m.snapshotId}`, state: 'Ready', sizeBytes: m.sizeBytes, checksum: null },
    });
  }
  log.info('snapshots of several disks created at one instant');
}

/** A group no host worker took in time (nothing ran): its members still Allocated go to Error with the reason. */
export async function abandonTogether(pool: Pool, members: TogetherMember[], reason: string): Promise<void> {
  for (const m of members) {
    const s = await getSnapshot(pool, m.snapshotId);
    if (s?.status !== 'Allocated') continue;
    await transitionSnapshot(pool, m.snapshotId, 'Error', { set: { last_error: reason }, event: { type: 'SNAPSHOT.CREATE', level: 'ERROR', description: reason } });
  }
}
