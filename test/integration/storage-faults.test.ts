import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot, getStoreRefs } from '../../db/snapshots.js';
import { SnapshotCreationFailedError } from '../../domain/errors.js';
import { silentLogger } from '../../observability/logger.js';
import type { StorageDriver } from '../../storage/driver.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { eventually, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const MiB = 1024 * 1024;

/** Runs a command; true when it exits 0. */
function tries(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether this machine lets us mount a tmpfs (root with CAP_SYS_ADMIN: CI and the dev machines here run as root).
 * A full or read-only image store is then real: ENOSPC and EROFS from the kernel, not a simulation.
 */
const CAN_MOUNT = (() => {
  const dir = mkdtempSync(join(tmpdir(), 'volsnap-mount-probe-'));
  try {
    if (!tries('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'volsnap-probe', dir])) return false;
    tries('umount', [dir]);
    return true;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
})();

/** Fallback for the read-only store when mounting is not allowed: an immutable directory refuses even root. */
const CAN_CHATTR = (() => {
  const dir = mkdtempSync(join(tmpdir(), 'volsnap-chattr-probe-'));
  try {
    if (!tries('chattr', ['+i', dir])) return false;
    const refused = !tries('mkdir', [join(dir, 'x')]);
    tries('chattr', ['-i', dir]);
    return refused;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
})();

/**
 * Faults at the storage boundary, on a real stack (Temporal dev server, embedded PostgreSQL, qemu-img): the image
 * store unreachable, full, read-only; the primary image missing or corrupt. Every case ends in a defined state
 * and leaves nothing half-written behind.
 */
describe('storage faults', () => {
  let stack: TestStack;
  let driver: StorageDriver;
  let accountId: string;
  let storePath: string;
  let scratch: string;

  beforeAll(async () => {
    // The SDK's default runtime logger prints every failed activity attempt: these tests fail hundreds on purpose.
    installTemporalRuntime(silentLogger);
    stack = await startTestStack();
    driver = stack.drivers.KVM!;
    accountId = await insertAccount(stack.pool);
    storePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
    scratch = mkdtempSync(join(tmpdir(), 'volsnap-faults-'));
  });
  afterAll(async () => {
    await stack?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  const setStorePath = (path: string) => stack.pool.query('UPDATE image_stores SET path = $1', [path]);
  const restoreStore = () => setStorePath(storePath);

  const settle = (id: string, timeoutMs = 90_000) =>
    eventually(async () => {
      const s = await getSnapshot(stack.pool, id);
      return s && ['BackedUp', 'Error'].includes(s.status) ? s : undefined;
    }, timeoutMs, `snapshot ${id} BackedUp or Error`);

  const failedAttempts = async (id: string) =>
    (
      await stack.pool.query<{ attempt: string; level: string }>(
        `SELECT details->>'attempt' AS attempt, level FROM events WHERE resource_id = $1 AND description LIKE 'backup attempt % failed%' ORDER BY id`,
        [id],
      )
    ).rows;

  /** The backup dir of a volume in an image store root: must hold nothing (no backup, no temporary file). */
  const backupDirEntries = (root: string, volumeId: string): string[] => {
    const dir = join(root, 'snapshots', accountId, volumeId);
    return existsSync(dir) ? readdirSync(dir) : [];
  };

  /** Asserts the snapshot ended in Error after `attempts` backup attempts, compensated, with nothing Ready in the image store. */
  async function expectCompensatedError(snapshotId: string, vol: { volumeId: string; path: string }, attempts: number, errorPattern: RegExp) {
    const done = await settle(snapshotId);
    expect(done.status).toBe('Error');
    expect(done.backupAttempts).toBe(attempts);
    expect(done.lastError).toMatch(errorPattern);
    expect((await failedAttempts(snapshotId)).map((r) => Number(r.attempt))).toEqual(Array.from({ length: attempts }, (_, i) => i + 1));
    // Compensation: the primary snapshot is gone, on disk and in its store ref.
    expect(await driver.hasSnapshot(vol.path, snapshotId)).toBe(false);
    const refs = await getStoreRefs(stack.pool, snapshotId);
    expect(refs.find((r) => r.role === 'Primary')?.state).toBe('Destroyed');
    expect(refs.filter((r) => r.role === 'Image' && r.state === 'Ready')).toEqual([]);
    // The workflow closed as failed.
    const handle = stack.client.workflow.getHandle(done.workflowId);
    await expect(handle.result()).rejects.toThrow();
  }

  it('image store gone for the first attempt and back for the second: BackedUp after 2 attempts', async () => {
    await updateSetting(stack.pool, 'backup.max.attempts', 3);
    await updateSetting(stack.pool, 'backup.retry.interval', 3);
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB, withVm: true });
    await writePattern(vol.path, 0x5e, 0, 4 * MiB);
    const blocker = join(scratch, 'not-a-directory');
    writeFileSync(blocker, 'the image store cannot live under a regular file\n');
    await setStorePath(join(blocker, 'x'));
    try {
      const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
      expect(['CreatedOnPrimary', 'BackingUp']).toContain(snapshot.status);
      const first = await eventually(async () => (await failedAttempts(snapshot.id))[0], 30_000, 'backup attempt 1 failed');
      expect(first).toEqual({ attempt: '1', level: 'WARN' });
      // The row tells when the next attempt comes, and why the last one failed.
      const waiting = (await getSnapshot(stack.pool, snapshot.id))!;
      expect(waiting.status).toBe('BackingUp');
      expect(waiting.lastError).toMatch(/image store .* is unusable|ENOTDIR|not a directory/i);
      expect(waiting.nextAttemptAt).not.toBeNull();
      await restoreStore();

      const done = await settle(snapshot.id);
      expect(done.status).toBe('BackedUp');
      expect(done.backupAttempts).toBe(2);
      expect(done.lastError).toBeNull();
      const image = (await getStoreRefs(stack.pool, snapshot.id)).find((r) => r.role === 'Image')!;
      expect(image.state).toBe('Ready');
      expect(await sha256File(join(storePath, image.installPath))).toBe(image.checksum);
      expect(backupDirEntries(storePath, vol.volumeId)).toEqual([`${snapshot.id}.qcow2`]);
      // Nothing was ever created under the broken path.
      expect(existsSync(join(blocker, 'x'))).toBe(false);
      expect(await driver.hasSnapshot(vol.path, snapshot.id)).toBe(true);
    } finally {
      await restoreStore();
    }
  });

  describe.skipIf(!CAN_MOUNT)('image store on a 1 MiB tmpfs (real ENOSPC)', () => {
    let mnt: string;
    beforeAll(() => {
      mnt = join(scratch, 'full-store');
      mkdirSync(mnt);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0755', 'volsnap-full-store', mnt]);
    });
    afterAll(() => {
      if (mnt) tries('umount', [mnt]);
    });

    it('every attempt fails with ENOSPC: Error after N attempts, primary snapshot deleted, no partial file left', async () => {
      await updateSetting(stack.pool, 'backup.max.attempts', 2);
      await updateSetting(stack.pool, 'backup.retry.interval', 1);
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
      // Incompressible data, several times the store's size.
      await writePattern(vol.path, 0xa7, 0, 8 * MiB);
      await setStorePath(mnt);
      try {
        const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
        await expectCompensatedError(snapshot.id, vol, 2, /No space left on device|ENOSPC/i);
        // The temporary file of each attempt was removed: the store is empty again.
        expect(backupDirEntries(mnt, vol.volumeId)).toEqual([]);
        const df = execFileSync('df', ['--output=used', '-B1', mnt], { encoding: 'utf8' }).trim().split('\n').pop()!;
        expect(Number(df)).toBeLessThan(64 * 1024);
      } finally {
        await restoreStore();
      }
    });
  });

  describe.skipIf(!CAN_MOUNT && !CAN_CHATTR)(`read-only image store (${CAN_MOUNT ? 'tmpfs mounted ro' : 'immutable directory'})`, () => {
    let store: string;
    beforeAll(() => {
      store = join(scratch, 'ro-store');
      mkdirSync(store);
      // Root ignores permission bits, so chmod would prove nothing: the kernel must refuse the write.
      if (CAN_MOUNT) execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'volsnap-ro-store', store]);
      else execFileSync('chattr', ['+i', store]);
    });
    afterAll(() => {
      if (!store) return;
      if (CAN_MOUNT) tries('umount', [store]);
      else tries('chattr', ['-i', store]);
    });

    it('every attempt is refused: Error after N attempts, primary snapshot deleted, nothing written', async () => {
      await updateSetting(stack.pool, 'backup.max.attempts', 2);
      await updateSetting(stack.pool, 'backup.retry.interval', 1);
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB, withVm: true });
      await writePattern(vol.path, 0x3d, 0, MiB);
      await setStorePath(store);
      try {
        const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
        // The final lastError is the activity's message with its context. (Node's recursive mkdir reports a
        // read-only file system as ENOENT, so the context is what says the store is the problem.)
        await expectCompensatedError(snapshot.id, vol, 2, new RegExp(`image store ${store.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is unusable`));
        const { rows } = await stack.pool.query<{ description: string }>(
          `SELECT description FROM events WHERE resource_id = $1 AND description LIKE 'backup attempt % failed%' ORDER BY id`,
          [snapshot.id],
        );
        for (const r of rows) expect(r.description).toMatch(/image store .* is unusable/);
        expect(readdirSync(store)).toEqual([]);
      } finally {
        await restoreStore();
      }
    });
  });

  describe('primary image unusable: the caller gets the error, nothing reaches the image store', () => {
    const failedOnPrimary: Array<{ snapshotId: string; fileMissing: boolean }> = [];
    beforeAll(async () => {
      await updateSetting(stack.pool, 'backup.max.attempts', 3);
      await updateSetting(stack.pool, 'backup.retry.interval', 300);
    });

    async function expectCreationFailed(
      request: Promise<unknown>,
      vol: { volumeId: string },
      errorPattern: RegExp,
    ): Promise<void> {
      const err = await request.then(
        () => {
          throw new Error('requestSnapshot resolved; it should have been refused');
        },
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(SnapshotCreationFailedError);
      const snapshotId = (err as SnapshotCreationFailedError).snapshotId;
      failedOnPrimary.push({ snapshotId, fileMissing: !existsSync((await stack.pool.query('SELECT path FROM volumes WHERE id = $1', [vol.volumeId])).rows[0].path) });
      expect((err as Error).message).toMatch(errorPattern);
      const snap = (await getSnapshot(stack.pool, snapshotId))!;
      expect(snap.status).toBe('Error');
      expect(snap.lastError).toMatch(/creating the snapshot on primary storage failed/);
      expect(snap.lastError).toMatch(errorPattern);
      expect(snap.backupAttempts).toBe(0);
      const { rows } = await stack.pool.query(`SELECT details->>'to' AS to FROM events WHERE resource_id = $1 AND details ? 'to' ORDER BY id`, [snapshotId]);
      expect(rows.map((r) => r.to)).toEqual(['Creating', 'Error']);
      // Nothing half-written: no store ref is Ready, no file or directory for the volume in the image store.
      expect((await getStoreRefs(stack.pool, snapshotId)).filter((r) => r.state === 'Ready')).toEqual([]);
      expect(existsSync(join(storePath, 'snapshots', accountId, vol.volumeId))).toBe(false);
      // The workflow failed; no backup activity was ever scheduled.
      const history = await stack.client.workflow.getHandle(snap.workflowId).fetchHistory();
      const scheduled = (history.events ?? []).flatMap((e) => (e.activityTaskScheduledEventAttributes ? [e.activityTaskScheduledEventAttributes.activityType?.name] : []));
      expect(scheduled).not.toContain('backupSnapshotToSecondary');
    }

    it('the qcow2 file is missing', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB, withVm: true });
      unlinkSync(vol.path);
      await expectCreationFailed(
        stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true }),
        vol,
        /No such file or directory|ENOENT|Could not open/i,
      );
    });

    it('the qcow2 header is overwritten with garbage (synchronous request)', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      await writePattern(vol.path, 0x11, 0, MiB);
      const size = statSync(vol.path).size;
      const fd = openSync(vol.path, 'r+');
      writeSync(fd, randomBytes(512), 0, 512, 0);
      closeSync(fd);
      expect(statSync(vol.path).size).toBe(size);
      await expectCreationFailed(
        stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: false }),
        vol,
        /not in qcow2 format|Could not open|Image is not/i,
      );
    });

    it('the qcow2 version field is corrupt (magic intact)', async () => {
      const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
      const fd = openSync(vol.path, 'r+');
      // Bytes 4..7 of the header: the format version (2 or 3), big-endian.
      writeSync(fd, Buffer.from([0x00, 0x00, 0x00, 0x63]), 0, 4, 4);
      closeSync(fd);
      await expectCreationFailed(
        stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true }),
        vol,
        /Unsupported qcow2 version|Could not open/i,
      );
    });

    it('storage GC afterwards: each failed snapshot is Destroyed, or stays Error and is reported as a GC failure', async () => {
      expect(failedOnPrimary).toHaveLength(3);
      const result = await stack.storageGc!.runNow();
      const destroyed = new Set(result.destroyed.map((d) => d.snapshotId));
      const failed = new Map(result.failures.filter((f) => f.snapshotId).map((f) => [f.snapshotId!, f.error]));
      for (const { snapshotId, fileMissing } of failedOnPrimary) {
        const s = (await getSnapshot(stack.pool, snapshotId))!;
        if (fileMissing) {
          // Nothing to clean on primary: the image (and any snapshot in it) is gone.
          expect(s.status).toBe('Destroyed');
          expect(destroyed.has(snapshotId)).toBe(true);
        } else if (s.status === 'Error') {
          // A corrupt image cannot be asked whether it holds the snapshot: GC keeps it for the next run, and says so.
          expect(failed.get(snapshotId)).toBeTruthy();
        } else {
          expect(s.status).toBe('Destroyed');
          expect(destroyed.has(snapshotId)).toBe(true);
        }
        expect((await getStoreRefs(stack.pool, snapshotId)).filter((r) => r.state === 'Ready')).toEqual([]);
      }
    });
  });
});
