import { randomUUID } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageLockKey } from '../../db/image-locks.js';
import { getSnapshot, getStoreRefs } from '../../db/snapshots.js';
import { findVolume } from '../../db/volumes.js';
import { findVm } from '../../db/vms.js';
import { silentLogger } from '../../observability/logger.js';
import type { Caller } from '../../services/caller.js';
import { runStorageGcNow } from '../../services/storage-gc.js';
import { createVmService } from '../../services/vms.js';
import type { StorageDriver } from '../../storage/driver.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { holdsPattern, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const MiB = 1024 * 1024;

/**
 * Crashes between the steps of a delete, a reconciler meeting finished work, and a revert from a backup, on a
 * real stack (Temporal dev server, embedded PostgreSQL, qcow2 images). Each crash is injected deterministically:
 * a driver call that, once its storage work is done, cuts the database connection of the operation (what a
 * PostgreSQL restart or a dead process does to an open transaction), or the state a crash leaves, written as such.
 */
describe('settling after interruptions (issue 22: items 2, 3, 6)', () => {
  let stack: TestStack;
  let driver: StorageDriver;
  let accountId: string;
  let caller: Caller;
  let storePath: string;

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    stack = await startTestStack();
    driver = stack.drivers.KVM!;
    accountId = await insertAccount(stack.pool);
    caller = { accountId, role: 'user' };
    storePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const backupPath = (volumeId: string, snapshotId: string) => join(storePath, 'snapshots', accountId, volumeId, `${snapshotId}.qcow2`);
  const eventsOf = async (id: string) =>
    (await stack.pool.query(`SELECT type, level, description, details FROM events WHERE resource_id = $1 ORDER BY id`, [id])).rows;
  const backedUp = async (volumeId: string) => {
    const s = (await stack.snapshots.requestSnapshot({ accountId, volumeId, asyncBackup: false })).snapshot;
    expect(s.status).toBe('BackedUp');
    return s;
  };

  /** The backends holding volume `volumeId`'s image lock (an advisory lock: high and low 32 bits of its key). */
  const IMAGE_LOCK_HOLDERS = `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
      AND classid = ((($1::bigint) >> 32) & 4294967295)::bigint::oid AND objid = (($1::bigint) & 4294967295)::bigint::oid`;
  const imageLockHeld = async (volumeId: string) => (await stack.pool.query(IMAGE_LOCK_HOLDERS, [imageLockKey(volumeId)])).rows.length > 0;
  /** Cuts the connections of the operation in progress: whoever holds the volume's image lock, and any open transaction. */
  const cutConnections = async (volumeId: string) => {
    await stack.pool.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND (pid IN (${IMAGE_LOCK_HOLDERS}) OR state LIKE 'idle in transaction%')`,
      [imageLockKey(volumeId)],
    );
  };

  /** Replaces `method` of the KVM driver for the duration of `fn`. */
  async function patched<K extends 'deleteSnapshot' | 'deleteVolume' | 'restoreVolumeFromBackup'>(
    method: K,
    replacement: (orig: NonNullable<StorageDriver[K]>) => NonNullable<StorageDriver[K]>,
    fn: () => Promise<unknown>,
  ): Promise<void> {
    const d = driver as unknown as Record<string, unknown>;
    const orig = d[method] as NonNullable<StorageDriver[K]>;
    d[method] = replacement((orig as (...a: unknown[]) => unknown).bind(driver) as NonNullable<StorageDriver[K]>);
    try {
      await fn();
    } finally {
      d[method] = orig;
    }
  }

  describe('item 2: crash-safe deletes', () => {
    it('a snapshot delete whose database connection is cut once its files are gone ends Destroyed (never BackedUp over deleted files)', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      await writePattern(vol.path, 0x21, 0, MiB);
      const snap = await backedUp(vol.volumeId);
      const file = backupPath(vol.volumeId, snap.id);
      expect(existsSync(file)).toBe(true);

      let cut = false;
      await patched(
        'deleteSnapshot',
        (orig) => async (volumePath, snapshotId) => {
          await orig(volumePath, snapshotId);
          // The backup file and the primary snapshot are gone: now the database connection dies.
          if (snapshotId === snap.id && !cut) {
            cut = true;
            await cutConnections(vol.volumeId);
          }
        },
        () => stack.snapshots.delete(caller, snap.id).catch(() => undefined),
      );
      expect(cut).toBe(true);
      expect(existsSync(file)).toBe(false);
      expect(await driver.hasSnapshot(vol.path, snap.id)).toBe(false);

      // What storage GC (and start-up) make of it: a finished delete, never a BackedUp row over deleted files.
      const gc = await runStorageGcNow(stack.client);
      expect(gc.failures).toEqual([]);
      const after = (await getSnapshot(stack.pool, snap.id))!;
      expect(after.status).toBe('Destroyed');
      const refs = await getStoreRefs(stack.pool, snap.id);
      // A user's delete keeps the refs, Destroyed, as the record.
      expect(refs.map((r) => [r.role, r.state]).sort()).toEqual([
        ['Image', 'Destroyed'],
        ['Primary', 'Destroyed'],
      ]);
    });

    it('a delete interrupted after Destroying was committed is finished by storage GC, keeping a backup a later delta depends on', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      await writePattern(vol.path, 0x31, 0, MiB);
      const parent = await backedUp(vol.volumeId);
      await writePattern(vol.path, 0x32, MiB, MiB);
      const child = await backedUp(vol.volumeId);
      const childRefs = await getStoreRefs(stack.pool, child.id);
      expect(childRefs.find((r) => r.role === 'Image')?.parentSnapshotId).toBe(parent.id);
      const parentFile = backupPath(vol.volumeId, parent.id);
      const childFile = backupPath(vol.volumeId, child.id);
      const parentSum = await sha256File(parentFile);

      // What the delete's first commit leaves when its process dies right after it: Destroying, nothing removed.
      await stack.pool.query(`UPDATE snapshots SET status = 'Destroying' WHERE id = $1`, [parent.id]);
      const gc = await runStorageGcNow(stack.client);
      expect(gc.failures).toEqual([]);

      const p = (await getSnapshot(stack.pool, parent.id))!;
      expect(p.status).toBe('Destroyed');
      expect(await driver.hasSnapshot(vol.path, parent.id)).toBe(false);
      // The later delta needs the parent's backup: kept, with its Image ref (docs/design.md §14).
      expect(await sha256File(parentFile)).toBe(parentSum);
      const pRefs = await getStoreRefs(stack.pool, parent.id);
      expect(pRefs.find((r) => r.role === 'Image')?.state).toBe('Ready');
      expect(pRefs.find((r) => r.role === 'Primary')?.state).toBe('Destroyed');
      expect((await eventsOf(parent.id)).at(-1)).toMatchObject({
        type: 'SNAPSHOT.DELETE',
        details: { from: 'Destroying', to: 'Destroyed', backupKept: true, reconciler: true },
      });
      // The child is untouched.
      expect((await getSnapshot(stack.pool, child.id))?.status).toBe('BackedUp');
      expect(existsSync(childFile)).toBe(true);
      expect(await driver.hasSnapshot(vol.path, child.id)).toBe(true);

      // Idempotent: a second run changes nothing.
      const again = await runStorageGcNow(stack.client);
      expect(again.failures).toEqual([]);
      expect(await sha256File(parentFile)).toBe(parentSum);
    });

    it('start-up finishes a delete interrupted after its files were removed (Destroying, backup gone, primary still there)', async () => {
      const { settleInterruptedDeletes } = await import('../../services/snapshot-delete.js');
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      const snap = await backedUp(vol.volumeId);
      const file = backupPath(vol.volumeId, snap.id);
      await stack.pool.query(`UPDATE snapshots SET status = 'Destroying' WHERE id = $1`, [snap.id]);
      await driver.deleteBackupFiles(storePath, { accountId, volumeId: vol.volumeId, snapshotId: snap.id });
      expect(existsSync(file)).toBe(false);

      await settleInterruptedDeletes({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger });
      expect((await getSnapshot(stack.pool, snap.id))?.status).toBe('Destroyed');
      expect(await driver.hasSnapshot(vol.path, snap.id)).toBe(false);
      expect((await getStoreRefs(stack.pool, snap.id)).every((r) => r.state === 'Destroyed')).toBe(true);
      // Again: nothing to do, no error.
      await settleInterruptedDeletes({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger });
      expect((await getSnapshot(stack.pool, snap.id))?.status).toBe('Destroyed');
    });

    it('VM destroy deletes its ROOT image under the image lock, after its commit: a connection cut then leaves the VM Destroyed', async () => {
      const vms = createVmService({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger });
      const vm = await vms.create(caller, { name: `vm-${randomUUID().slice(0, 6)}`, hypervisor: 'KVM', rootDiskSizeBytes: 8 * MiB });
      const root = vm.volumes.find((v) => v.type === 'ROOT')!;
      expect(existsSync(root.path)).toBe(true);

      let lockHeld: boolean | undefined;
      await patched(
        'deleteVolume',
        (orig) => async (volumePath) => {
          await orig(volumePath);
          if (volumePath === root.path && lockHeld === undefined) {
            lockHeld = await imageLockHeld(root.id);
            await cutConnections(root.id);
          }
        },
        () => vms.act(caller, vm.id, { action: 'destroy' }).catch(() => undefined),
      );
      expect(lockHeld).toBe(true);
      expect(existsSync(root.path)).toBe(false);
      await runStorageGcNow(stack.client);
      expect((await findVm(stack.pool, vm.id, null))?.state).toBe('Destroyed');
      expect((await findVolume(stack.pool, root.id, null))?.state).toBe('Destroyed');
    });

    it('VM reinstall deletes the old ROOT image under the image lock, after its commit', async () => {
      const vms = createVmService({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger });
      const vm = await vms.create(caller, { name: `vm-${randomUUID().slice(0, 6)}`, hypervisor: 'KVM', rootDiskSizeBytes: 8 * MiB });
      const old = vm.volumes.find((v) => v.type === 'ROOT')!;
      let lockHeld: boolean | undefined;
      let committed: boolean | undefined;
      let after: Awaited<ReturnType<typeof vms.act>> | undefined;
      await patched(
        'deleteVolume',
        (orig) => async (volumePath) => {
          if (volumePath === old.path && lockHeld === undefined) {
            lockHeld = await imageLockHeld(old.id);
            committed = (await findVolume(stack.pool, old.id, null))?.state === 'Destroyed';
          }
          await orig(volumePath);
        },
        async () => {
          after = await vms.act(caller, vm.id, { action: 'reinstall' });
        },
      );
      expect(lockHeld).toBe(true);
      expect(committed).toBe(true);
      expect(existsSync(old.path)).toBe(false);
      const fresh = after!.volumes.find((v) => v.type === 'ROOT')!;
      expect(fresh.id).not.toBe(old.id);
      expect(existsSync(fresh.path)).toBe(true);
    });

    it('storage GC deletes the image of a Destroyed volume whose deletion a crash interrupted', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      // What a crash right after the commit of a VM destroy leaves: the volume Destroyed, its image still there.
      await stack.pool.query(
        `UPDATE volumes SET state = 'Destroyed', removed = now(), pending = jsonb_build_object('op', 'delete-image', 'token', $2::text, 'path', path) WHERE id = $1`,
        [vol.volumeId, randomUUID()],
      );
      expect(existsSync(vol.path)).toBe(true);
      const gc = await runStorageGcNow(stack.client);
      expect(gc.failures).toEqual([]);
      expect(existsSync(vol.path)).toBe(false);
      expect((await stack.pool.query('SELECT pending FROM volumes WHERE id = $1', [vol.volumeId])).rows[0].pending).toBeNull();
    });
  });

  describe('item 3: the reconciler respects finished work', () => {
    it('a BackingUp snapshot whose workflow closed after its Image ref went Ready is BackedUp, its backup and primary kept', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      await writePattern(vol.path, 0x41, 0, MiB);
      const snap = await backedUp(vol.volumeId);
      const file = backupPath(vol.volumeId, snap.id);
      const sum = await sha256File(file);
      // The workflow ended (its kept branch) while the row was still BackingUp, with the Image ref Ready.
      await stack.pool.query(`UPDATE snapshots SET status = 'BackingUp' WHERE id = $1`, [snap.id]);

      const gc = await runStorageGcNow(stack.client);
      expect(gc.failures).toEqual([]);
      expect(gc.destroyed.map((d) => d.snapshotId)).not.toContain(snap.id);
      expect(gc.reconciled).toEqual([expect.objectContaining({ snapshotId: snap.id, previousState: 'BackingUp', workflowStatus: 'COMPLETED', to: 'BackedUp' })]);
      expect((await getSnapshot(stack.pool, snap.id))?.status).toBe('BackedUp');
      expect(await sha256File(file)).toBe(sum);
      expect(await driver.hasSnapshot(vol.path, snap.id)).toBe(true);
      expect((await getStoreRefs(stack.pool, snap.id)).find((r) => r.role === 'Image')?.state).toBe('Ready');
      expect((await eventsOf(snap.id)).at(-1)).toMatchObject({
        type: 'SNAPSHOT.BACKUP',
        details: { from: 'BackingUp', to: 'BackedUp', reconciler: true, workflowStatus: 'COMPLETED' },
      });
    });

    it('a BackingUp snapshot whose workflow closed with a Ready backup that does not verify still goes to Error', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      const snap = await backedUp(vol.volumeId);
      await stack.pool.query(`UPDATE snapshots SET status = 'BackingUp' WHERE id = $1`, [snap.id]);
      writeFileSync(backupPath(vol.volumeId, snap.id), 'not the backup that was verified');

      const gc = await runStorageGcNow(stack.client);
      expect(gc.reconciled).toEqual([expect.objectContaining({ snapshotId: snap.id, to: 'Error' })]);
      expect((await getSnapshot(stack.pool, snap.id))?.status).not.toBe('BackedUp');
    });
  });

  describe('item 6: revert from a backup uses the pending-operation pattern', () => {
    /** A volume holding 0x51 when snapshotted and 0x52 now, whose snapshot's primary copy is gone. */
    async function revertable() {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB, type: 'DATADISK' });
      await writePattern(vol.path, 0x51, 0, MiB);
      const snap = await backedUp(vol.volumeId);
      await writePattern(vol.path, 0x52, 0, MiB);
      await driver.deleteSnapshot(vol.path, snap.id);
      return { vol, snap };
    }

    it('copies with the volume committed Reverting and no transaction (row locks, pooled connection) open', async () => {
      const { vol, snap } = await revertable();
      let seen: { state: string; openTransactions: number } | undefined;
      await patched(
        'restoreVolumeFromBackup',
        (orig) => async (storeRoot, installPath, volumePath, chain) => {
          const { rows } = await stack.pool.query(
            `SELECT (SELECT state FROM volumes WHERE id = $1) AS state,
                    (SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%') AS open`,
            [vol.volumeId],
          );
          seen = { state: rows[0].state, openTransactions: rows[0].open };
          await orig(storeRoot, installPath, volumePath, chain);
        },
        () => stack.snapshots.revert(caller, snap.id),
      );
      expect(seen).toEqual({ state: 'Reverting', openTransactions: 0 });
      expect((await findVolume(stack.pool, vol.volumeId, null))?.state).toBe('Ready');
      expect(await holdsPattern(vol.path, 0x51, 0, MiB)).toBe(true);
      expect((await eventsOf(snap.id)).at(-1)).toMatchObject({ type: 'SNAPSHOT.REVERT', details: { fromBackup: true } });
    });

    it('a revert from a backup whose process died mid-copy is finished by the reconciler (the copy redone)', async () => {
      const { reconcileStuckVolumes } = await import('../../services/volume-reconcile.js');
      const { vol, snap } = await revertable();
      const image = (await getStoreRefs(stack.pool, snap.id)).find((r) => r.role === 'Image')!;
      // What a crash mid-copy leaves: the volume Reverting with its record, a stale heartbeat, content half-written.
      await stack.pool.query(
        `UPDATE volumes SET state = 'Reverting', pending_heartbeat = now() - interval '1 hour',
                pending = jsonb_build_object('op', 'revert-from-backup', 'token', $2::text, 'snapshotId', $3::text,
                                             'storePath', $4::text, 'installPath', $5::text, 'toBytes', $6::bigint)
          WHERE id = $1`,
        [vol.volumeId, randomUUID(), snap.id, storePath, image.installPath, snap.size],
      );
      const r = await reconcileStuckVolumes({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger }, { staleAfterSeconds: 60 });
      expect(r.failures).toEqual([]);
      expect(r.settled).toEqual([expect.objectContaining({ volumeId: vol.volumeId, operation: 'revert-from-backup', outcome: 'finished' })]);
      const v = (await findVolume(stack.pool, vol.volumeId, null))!;
      expect(v.state).toBe('Ready');
      expect(await holdsPattern(vol.path, 0x51, 0, MiB)).toBe(true);
      // Settled once: a second run finds nothing.
      expect((await reconcileStuckVolumes({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger }, { staleAfterSeconds: 60 })).settled).toEqual([]);
    });
  });
});
