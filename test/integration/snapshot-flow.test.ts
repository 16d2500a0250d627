import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot, getStoreRefs } from '../../db/snapshots.js';
import { SnapshotCreationFailedError } from '../../domain/errors.js';
import type { StorageDriver } from '../../storage/driver.js';
import { eventually, holdsPattern, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const MiB = 1024 * 1024;

/**
 * The core engine end to end: Temporal dev server, embedded PostgreSQL, real qcow2 images and qemu-img.
 * Backups are rate-limited (8 MiB/s) so that "returned before the backup finished" is observable.
 */
describe('snapshot engine on a real stack', () => {
  let stack: TestStack;
  let driver: StorageDriver;
  let accountId: string;
  let imageStorePath: string;

  beforeAll(async () => {
    stack = await startTestStack({ env: { BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(8 * MiB) } });
    driver = stack.drivers.KVM!;
    accountId = await insertAccount(stack.pool);
    imageStorePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
    // A transient failed attempt on a loaded CI machine is retried in seconds, not after the default 300 s.
    await updateSetting(stack.pool, 'backup.retry.interval', 2);
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const waitForState = (id: string, states: string[]) =>
    eventually(async () => {
      const s = await getSnapshot(stack.pool, id);
      return s && states.includes(s.status) ? s : undefined;
    }, 90_000, `snapshot ${id} in ${states.join('|')}`);

  it('many requests in flight at once: every one is created, and Node prints no listener-leak warning', async () => {
    // Each request in flight listens on the service's shutdown signal; past 10, Node warned of a leak
    // (MaxListenersExceededWarning), which the bench's concurrency phase showed at 16 and 32 clients.
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    try {
      const vols = await Promise.all(Array.from({ length: 12 }, () => insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB })));
      const taken = await Promise.all(vols.map((v) => stack.snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: true })));
      expect(taken.map((t) => t.snapshot.status).every((st) => ['CreatedOnPrimary', 'BackingUp', 'BackedUp'].includes(st))).toBe(true);
      await new Promise((r) => setImmediate(r));
      expect(warnings.filter((w) => /MaxListeners|memory leak/i.test(w))).toEqual([]);
      await Promise.all(taken.map((t) => waitForState(t.snapshot.id, ['BackedUp'])));
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('async: returns at "created on primary", then backs up the point-in-time bytes', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 64 * MiB, withVm: true });
    await writePattern(vol.path, 0xab, 0, 32 * MiB);

    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true, name: 'before-upgrade' });
    // The caller has its answer while the (rate-limited) copy is still running.
    expect(['CreatedOnPrimary', 'BackingUp']).toContain(snapshot.status);
    expect(await driver.hasSnapshot(vol.path, snapshot.id)).toBe(true);

    // The VM keeps writing after the snapshot: the backup must still hold the snapshot's bytes.
    await writePattern(vol.path, 0xcd, 0, 32 * MiB);

    const done = await waitForState(snapshot.id, ['BackedUp', 'Error']);
    expect(done.status).toBe('BackedUp');
    expect(done.backupAttempts).toBe(1);
    expect(done.backupBytesDone).toBe(done.backupBytesTotal);

    const refs = await getStoreRefs(stack.pool, snapshot.id);
    const image = refs.find((r) => r.role === 'Image')!;
    expect(image.state).toBe('Ready');
    expect(image.installPath).toBe(`snapshots/${accountId}/${vol.volumeId}/${snapshot.id}.qcow2`);
    const backupFile = join(imageStorePath, image.installPath);
    expect(await sha256File(backupFile)).toBe(image.checksum);
    expect(await holdsPattern(backupFile, 0xab, 0, 32 * MiB)).toBe(true);
    expect(await holdsPattern(vol.path, 0xcd, 0, 32 * MiB)).toBe(true);
    // No temporary file is left beside the backup.
    expect(readdirSync(dirname(backupFile))).toEqual([`${snapshot.id}.qcow2`]);

    const { rows: events } = await stack.pool.query(
      `SELECT details->>'to' AS to FROM events WHERE resource_id = $1 AND details ? 'to' ORDER BY id`,
      [snapshot.id],
    );
    expect(events.map((e) => e.to)).toEqual(['Creating', 'CreatedOnPrimary', 'BackingUp', 'BackedUp']);

    // Operators find the workflow by its search attributes.
    const desc = await stack.client.workflow.getHandle(snapshot.workflowId).describe();
    expect(desc.status.name).toBe('COMPLETED');
    const sa = desc.searchAttributes as Record<string, unknown[]>;
    expect(sa.VolumeId).toEqual([vol.volumeId]);
    expect(sa.VmId).toEqual([vol.vmId]);
    expect(sa.AccountId).toEqual([accountId]);
    expect(sa.SnapshotState).toEqual(['BackedUp']);
  });

  it('sync: the caller waits for the backup (the pre-feature flow)', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x5a, 0, 4 * MiB);
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: false });
    expect(snapshot.status, snapshot.lastError ?? '').toBe('BackedUp');
    const image = (await getStoreRefs(stack.pool, snapshot.id)).find((r) => r.role === 'Image')!;
    expect(await holdsPattern(join(imageStorePath, image.installPath), 0x5a, 0, 4 * MiB)).toBe(true);
  });

  it('an Idempotency-Key joins the existing snapshot instead of taking a second one', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
    const first = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true, idempotencyKey: 'key-1' });
    const again = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true, idempotencyKey: 'key-1' });
    expect(again.snapshot.id).toBe(first.snapshot.id);
    expect(again.replay).toBe(true);
    const { rows } = await stack.pool.query('SELECT count(*)::int AS n FROM snapshots WHERE volume_id = $1', [vol.volumeId]);
    expect(rows[0].n).toBe(1);
    await waitForState(first.snapshot.id, ['BackedUp']);
  });

  it('a failure on primary reaches the caller; the snapshot is Error and no backup is attempted', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
    // A corrupt image: qemu-img cannot open it.
    writeFileSync(vol.path, 'not a qcow2 image');
    const err = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true }).catch((e) => e);
    expect(err).toBeInstanceOf(SnapshotCreationFailedError);
    const snap = await getSnapshot(stack.pool, (err as SnapshotCreationFailedError).snapshotId);
    expect(snap?.status).toBe('Error');
    expect(snap?.lastError).toMatch(/primary/);
    expect(snap?.backupAttempts).toBe(0);
    expect((await getStoreRefs(stack.pool, snap!.id)).filter((r) => r.role === 'Image')).toEqual([]);
  });

  it('an unusable image store gives exactly N attempts, then Error with no primary snapshot left', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
    await updateSetting(stack.pool, 'backup.max.attempts', 3);
    await updateSetting(stack.pool, 'backup.retry.interval', 1);
    // A regular file where the store's directory should be: every mkdir under it fails.
    const blocker = join(stack.dataDir, 'not-a-directory');
    writeFileSync(blocker, '');
    await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'secondary')]);
    try {
      const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
      const failed = await waitForState(snapshot.id, ['Error', 'BackedUp']);
      expect(failed.status).toBe('Error');
      expect(failed.backupAttempts).toBe(3);
      expect(failed.lastError).toBeTruthy();
      const { rows } = await stack.pool.query(
        `SELECT details->>'attempt' AS attempt FROM events WHERE resource_id = $1 AND description LIKE 'backup attempt%failed%' ORDER BY id`,
        [snapshot.id],
      );
      expect(rows.map((r) => Number(r.attempt))).toEqual([1, 2, 3]);
      // Compensation removed the primary snapshot.
      expect(await driver.hasSnapshot(vol.path, snapshot.id)).toBe(false);
      const primary = (await getStoreRefs(stack.pool, snapshot.id)).find((r) => r.role === 'Primary');
      expect(primary?.state).toBe('Destroyed');
      expect(existsSync(join(blocker, 'secondary'))).toBe(false);
      // The row reaches Error inside the compensation; the workflow closes as Failed right after.
      const handle = stack.client.workflow.getHandle(snapshot.workflowId);
      await expect(handle.result()).rejects.toThrow();
      expect((await handle.describe()).status.name).toBe('FAILED');
    } finally {
      await stack.pool.query('UPDATE image_stores SET path = $1', [imageStorePath]);
      await updateSetting(stack.pool, 'backup.retry.interval', 2);
    }
  });
});
