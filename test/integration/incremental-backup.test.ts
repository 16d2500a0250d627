import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installTemporalRuntime } from '../../app/runtime.js';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot, getStoreRefs } from '../../db/snapshots.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';
import { silentLogger } from '../../observability/logger.js';
import type { Caller } from '../../services/caller.js';
import { recordBackupFault } from '../../services/backup-faults.js';
import { runStorageGcNow } from '../../services/storage-gc.js';
import type { StorageDriver } from '../../storage/driver.js';
import { eventually, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;

/** Incremental backups through the real stack (docs/design.md §14): chains, restore, delete, GC, settings. */
describe('incremental backups', () => {
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

  const backupFile = (volumeId: string, snapshotId: string) => join(storePath, 'snapshots', accountId, volumeId, `${snapshotId}.qcow2`);
  const take = async (volumeId: string) => {
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId, asyncBackup: false });
    expect(snapshot.status).toBe('BackedUp');
    return stack.snapshots.get(caller, snapshot.id);
  };
  /** The snapshot's point-in-time content, exported from primary while it is there. */
  const exportSnapshot = async (volumePath: string, snapshotId: string) => {
    const out = join(stack.dataDir, `expected-${randomUUID()}.qcow2`);
    await exec('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${snapshotId}`, volumePath, out]);
    return out;
  };
  const identical = async (a: string, b: string) =>
    exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', a, b]).then(
      () => true,
      () => false,
    );

  it('the second backup holds only the change; a volume made from it after its primary copy is deleted matches it byte for byte', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 64 * MiB });
    await writePattern(vol.path, 0x11, 0, 48 * MiB);
    const s1 = await take(vol.volumeId);
    expect(s1.backup).toMatchObject({ kind: 'full', parentSnapshotId: null, chainLength: 1 });
    expect(s1.backup.bytesWritten).toBeGreaterThan(48 * MiB);
    await writePattern(vol.path, 0x22, 8 * MiB, 2 * MiB);
    const s2 = await take(vol.volumeId);
    expect(s2.backup).toMatchObject({ kind: 'incremental', parentSnapshotId: s1.id, chainLength: 2 });
    expect(s2.backup.bytesWritten).toBeLessThan(1.2 * 2 * MiB + MiB);
    expect(s2.storeRefs.find((r) => r.role === 'Image')).toMatchObject({ parentSnapshotId: s1.id, chainLength: 2, state: 'Ready' });
    await writePattern(vol.path, 0x33, 20 * MiB, MiB);
    const s3 = await take(vol.volumeId);
    expect(s3.backup).toMatchObject({ kind: 'incremental', parentSnapshotId: s2.id, chainLength: 3 });
    const events = (await stack.pool.query(`SELECT details FROM events WHERE resource_id = $1 AND details->>'to' = 'BackedUp'`, [s3.id])).rows;
    expect(events[0].details).toMatchObject({ kind: 'incremental', parentSnapshotId: s2.id });

    // The primary copy of s2 is removed behind volsnap's back; the live volume moves on.
    const expected = await exportSnapshot(vol.path, s2.id);
    await driver.deleteSnapshot(vol.path, s2.id);
    await writePattern(vol.path, 0x44, 0, 64 * MiB);
    const restored = await stack.snapshots.createVolume(caller, s2.id, {});
    expect(await identical(restored.path, expected)).toBe(true);

    // Revert reads the chain too when the primary snapshot is gone.
    const reverted = await stack.snapshots.revert(caller, s2.id);
    expect(reverted.id).toBe(vol.volumeId);
    expect(await identical(vol.path, expected)).toBe(true);
    expect(await driver.hasSnapshot(vol.path, s3.id)).toBe(true);
  });

  it('deleting out of order keeps backups later deltas depend on; storage GC removes them once nothing does', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 32 * MiB });
    await writePattern(vol.path, 0x51, 0, 16 * MiB);
    const s1 = await take(vol.volumeId);
    await writePattern(vol.path, 0x52, 0, MiB);
    const s2 = await take(vol.volumeId);
    await writePattern(vol.path, 0x53, MiB, MiB);
    const s3 = await take(vol.volumeId);
    const expected3 = await exportSnapshot(vol.path, s3.id);
    const [f1, f2, f3] = [s1, s2, s3].map((s) => backupFile(vol.volumeId, s.id)) as [string, string, string];

    // The middle one first: Destroyed for the user, its file kept for s3.
    const d2 = await stack.snapshots.delete(caller, s2.id);
    expect(d2.state).toBe('Destroyed');
    expect(existsSync(f2)).toBe(true);
    expect(await driver.hasSnapshot(vol.path, s2.id)).toBe(false);
    expect((await getStoreRefs(stack.pool, s2.id)).find((r) => r.role === 'Image')?.state).toBe('Ready');
    // The base is deleted too: kept as well.
    await stack.snapshots.delete(caller, s1.id);
    expect(existsSync(f1)).toBe(true);
    const gc1 = await runStorageGcNow(stack.client);
    expect(gc1.failures).toEqual([]);
    expect(gc1.orphanFiles.map((o) => o.path)).not.toEqual(expect.arrayContaining([f1]));
    expect(existsSync(f1) && existsSync(f2) && existsSync(f3)).toBe(true);
    // s3 still restores through its chain of deleted snapshots' backups.
    const restored = await stack.snapshots.createVolume(caller, s3.id, {});
    expect(await identical(restored.path, expected3)).toBe(true);

    // Now s3 goes: its own file at once, then GC removes the whole released chain in one run.
    await stack.snapshots.delete(caller, s3.id);
    expect(existsSync(f3)).toBe(false);
    const gc2 = await runStorageGcNow(stack.client);
    expect(gc2.failures).toEqual([]);
    expect(gc2.orphanFiles.map((o) => o.path).sort()).toEqual([f1, f2].sort());
    expect(existsSync(f1) || existsSync(f2)).toBe(false);
    for (const s of [s1, s2, s3]) expect((await getStoreRefs(stack.pool, s.id)).every((r) => r.state === 'Destroyed')).toBe(true);
    expect(readdirSync(join(storePath, 'snapshots', accountId, vol.volumeId))).toEqual([]);
    const gc3 = await runStorageGcNow(stack.client);
    expect(gc3.orphanFiles).toEqual([]);
  });

  it('deleting in order: the newest backup goes at once, its parent on the next delete', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x61, 0, 8 * MiB);
    const s1 = await take(vol.volumeId);
    await writePattern(vol.path, 0x62, 0, MiB);
    const s2 = await take(vol.volumeId);
    await stack.snapshots.delete(caller, s2.id);
    expect(existsSync(backupFile(vol.volumeId, s2.id))).toBe(false);
    await stack.snapshots.delete(caller, s1.id);
    expect(existsSync(backupFile(vol.volumeId, s1.id))).toBe(false);
  });

  it('snapshot.delta.max rolls over to a full backup; backup.incremental off takes full ones; both as they were when requested', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x71, 0, 8 * MiB);
    await updateSetting(stack.pool, 'snapshot.delta.max', 2);
    try {
      const kinds: Array<[string | null, number | null]> = [];
      for (let i = 0; i < 5; i++) {
        await writePattern(vol.path, 0x72 + i, i * MiB, MiB);
        const s = await take(vol.volumeId);
        expect((await getSnapshot(stack.pool, s.id))?.snapshotDeltaMax).toBe(2);
        kinds.push([s.backup.kind, s.backup.chainLength]);
      }
      expect(kinds).toEqual([
        ['full', 1],
        ['incremental', 2],
        ['incremental', 3],
        ['full', 1],
        ['incremental', 2],
      ]);
      await updateSetting(stack.pool, 'backup.incremental', 'false');
      const off = await take(vol.volumeId);
      expect(off.backup).toMatchObject({ kind: 'full', chainLength: 1 });
      expect((await getSnapshot(stack.pool, off.id))?.backupIncremental).toBe(false);
    } finally {
      await updateSetting(stack.pool, 'snapshot.delta.max', 16);
      await updateSetting(stack.pool, 'backup.incremental', true);
    }
  });

  // An incremental backup re-reads no member of its parent chain (issue 22 item 1): what it checks is the record
  // (a fault the scrub or a restore marked) and each member's size; bit rot is the scrub's to find.
  it('a parent backup marked faulty forces a full backup, and says why', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x81, 0, 8 * MiB);
    const s1 = await take(vol.volumeId);
    const image = (await getStoreRefs(stack.pool, s1.id)).find((r) => r.role === 'Image')!;
    // What the scrub does when one byte of the parent's backup has rotted.
    expect(await recordBackupFault(stack.pool, silentLogger, { snapshotId: s1.id, checksum: image.checksum!, fault: 'does not match its checksum', foundBy: 'scrub' })).not.toBeNull();
    await writePattern(vol.path, 0x82, 0, MiB);
    const s2 = await take(vol.volumeId);
    expect(s2.backup).toMatchObject({ kind: 'full', parentSnapshotId: null, chainLength: 1 });
    const warn = (await stack.pool.query(`SELECT description FROM events WHERE resource_id = $1 AND level = 'WARN'`, [s2.id])).rows;
    expect(warn.map((w) => w.description).join('\n')).toMatch(/full backup instead of a delta: .*marked faulty by the scrub: does not match its checksum/);
  });

  it('after a resize the next backup is a full one (a delta would compare the whole new size), then deltas again', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x85, 0, 4 * MiB);
    const s1 = await take(vol.volumeId);
    expect(s1.backup.kind).toBe('full');
    // Grown as the volume service grows it (the image, then its row).
    await driver.resizeVolume(vol.path, 64 * MiB);
    await stack.pool.query('UPDATE volumes SET size_bytes = $2 WHERE id = $1', [vol.volumeId, 64 * MiB]);
    const s2 = await take(vol.volumeId);
    expect(s2.backup).toMatchObject({ kind: 'full', parentSnapshotId: null, chainLength: 1 });
    await writePattern(vol.path, 0x86, 0, MiB);
    const s3 = await take(vol.volumeId);
    expect(s3.backup).toMatchObject({ kind: 'incremental', parentSnapshotId: s2.id, chainLength: 2 });
  });

  it('a parent backup file of the wrong size forces a full backup, and says why', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x83, 0, 8 * MiB);
    const s1 = await take(vol.volumeId);
    // The parent's backup file was cut short (a store that lost its tail).
    const fh = await open(backupFile(vol.volumeId, s1.id), 'r+');
    await fh.truncate(MiB);
    await fh.close();
    await writePattern(vol.path, 0x84, 0, MiB);
    const s2 = await take(vol.volumeId);
    expect(s2.backup).toMatchObject({ kind: 'full', parentSnapshotId: null, chainLength: 1 });
    const warn = (await stack.pool.query(`SELECT description FROM events WHERE resource_id = $1 AND level = 'WARN'`, [s2.id])).rows;
    expect(warn.map((w) => w.description).join('\n')).toMatch(/full backup instead of a delta: .*has \d+ bytes, \d+ on record/);
  });

  it('a delta killed mid-copy is retried and never alters its parent', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 512 * MiB });
    await writePattern(vol.path, 0x91, 0, 480 * MiB);
    const s1 = await take(vol.volumeId);
    const parentFile = backupFile(vol.volumeId, s1.id);
    const parentSum = await sha256File(parentFile);
    await writePattern(vol.path, 0x92, 100 * MiB, 200 * MiB);
    await updateSetting(stack.pool, 'backup.retry.interval', 1);
    try {
      const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
      // Kill the rebase that writes the delta (found by its snapshot id), as a crash of the copy would.
      const pid = await eventually(async () => {
        const { stdout } = await exec('pgrep', ['-f', `rebase .*${snapshot.id}\\.qcow2\\.partial-`]).catch(() => ({ stdout: '' }));
        return stdout.trim().split('\n').filter(Boolean)[0];
      }, 60_000, 'the delta being written');
      process.kill(Number(pid), 'SIGKILL');
      const done = await eventually(async () => {
        const s = await getSnapshot(stack.pool, snapshot.id);
        return s && (s.status === 'BackedUp' || s.status === 'Error') ? s : undefined;
      }, 90_000, 'the backup to finish');
      expect(done.status).toBe('BackedUp');
      expect(done.backupAttempts).toBeGreaterThanOrEqual(2);
      const view = await stack.snapshots.get(caller, snapshot.id);
      expect(view.backup).toMatchObject({ kind: 'incremental', parentSnapshotId: s1.id, chainLength: 2 });
      expect(await sha256File(parentFile)).toBe(parentSum);
      expect(readdirSync(join(storePath, 'snapshots', accountId, vol.volumeId)).sort()).toEqual([`${s1.id}.qcow2`, `${snapshot.id}.qcow2`].sort());
      const expected = await exportSnapshot(vol.path, snapshot.id);
      const restored = await stack.snapshots.createVolume(caller, snapshot.id, {});
      expect(await identical(restored.path, expected)).toBe(true);
    } finally {
      await updateSetting(stack.pool, 'backup.retry.interval', 300);
    }
  });
});
