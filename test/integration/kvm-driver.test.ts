/** KvmStorageDriver against real qemu-img on qcow2 files in a temp dir. */
import { execFile, spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BackupProgress, BackupTarget } from '../../storage/driver.js';
import { createKvmStorageDriver, ImageBusyError } from '../../storage/kvm.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const logger = pino({ level: 'silent' });
const driver = createKvmStorageDriver({ logger });
// Slows the copy enough that the test can act on the image while a backup is running.
const slowDriver = createKvmStorageDriver({ logger, backupRateLimitBytesPerSec: 32 * MiB });

let dir: string;
let pool: string;
let store: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'volsnap-kvm-'));
  pool = path.join(dir, 'pool');
  store = path.join(dir, 'store');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function qemuIo(file: string, cmd: string, readOnly = false): Promise<void> {
  await exec('qemu-io', ['-f', 'qcow2', ...(readOnly ? ['-r'] : []), '-c', cmd, file]);
}

/** Whether `file` holds `pattern` in every byte of [offset, offset+len). */
async function readsPattern(file: string, pattern: number, offset: string, len: string): Promise<boolean> {
  try {
    const { stdout, stderr } = await exec('qemu-io', ['-f', 'qcow2', '-r', '-c', `read -P 0x${pattern.toString(16)} ${offset} ${len}`, file]);
    return !/Pattern verification failed/.test(stdout + stderr);
  } catch {
    return false;
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

async function virtualSize(file: string): Promise<number> {
  const { stdout } = await exec('qemu-img', ['info', '-U', '--output=json', file]);
  return (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
}

async function snapshotTags(file: string): Promise<string[]> {
  const { stdout } = await exec('qemu-img', ['info', '-U', '--output=json', file]);
  return ((JSON.parse(stdout) as { snapshots?: { name: string }[] }).snapshots ?? []).map((s) => s.name);
}

/** Every file under `root`, relative to it. */
async function listFiles(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => path.relative(root, path.join(e.parentPath, e.name))).sort();
}

function newTarget(volumeId: string): BackupTarget {
  return { accountId: randomUUID(), volumeId, snapshotId: randomUUID() };
}

async function volumeWithPattern(size = 64 * MiB, len = '4M'): Promise<{ vol: string; volumeId: string }> {
  const volumeId = randomUUID();
  const { path: vol } = await driver.createVolume(pool, volumeId, size);
  await qemuIo(vol, `write -P 0xab 0 ${len}`);
  return { vol, volumeId };
}

describe('volumes', () => {
  it('creates a qcow2 volume in a new pool dir and never clobbers an existing one', async () => {
    const nestedPool = path.join(pool, 'a', 'b');
    const volumeId = randomUUID();
    const created = await driver.createVolume(nestedPool, volumeId, 64 * MiB);
    expect(created).toEqual({ path: path.join(nestedPool, `${volumeId}.qcow2`), format: 'qcow2' });
    expect(await virtualSize(created.path)).toBe(64 * MiB);
    await qemuIo(created.path, 'write -P 0xab 0 1M');

    await expect(driver.createVolume(nestedPool, volumeId, 32 * MiB)).rejects.toMatchObject({
      name: 'VolumeExistsError',
      message: expect.stringContaining('already exists'),
    });
    expect(await readsPattern(created.path, 0xab, '0', '1M')).toBe(true);
    expect(await virtualSize(created.path)).toBe(64 * MiB);
    expect(await listFiles(nestedPool)).toEqual([`${volumeId}.qcow2`]);
  });

  it('rejects sizes qemu-img would round', async () => {
    await expect(driver.createVolume(pool, randomUUID(), 1000)).rejects.toThrow(/multiple of 512/);
  });

  it('resizes up and down', async () => {
    const { vol } = await volumeWithPattern();
    await driver.resizeVolume(vol, 128 * MiB);
    expect(await virtualSize(vol)).toBe(128 * MiB);
    await driver.resizeVolume(vol, 32 * MiB);
    expect(await virtualSize(vol)).toBe(32 * MiB);
    expect(await readsPattern(vol, 0xab, '0', '4M')).toBe(true);
  });

  it('deletes a volume; a missing one is fine', async () => {
    const { vol } = await volumeWithPattern();
    await driver.deleteVolume(vol);
    await expect(stat(vol)).rejects.toMatchObject({ code: 'ENOENT' });
    await driver.deleteVolume(vol);
  });

  it('migrates a volume to another pool keeping its internal snapshots', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const snap = randomUUID();
    await driver.createSnapshot(vol, snap);
    await qemuIo(vol, 'write -P 0xcd 0 4M');
    const pool2 = path.join(dir, 'pool2');

    const moved = await driver.migrateVolume(vol, pool2, volumeId);
    expect(moved).toEqual({ path: path.join(pool2, `${volumeId}.qcow2`), format: 'qcow2' });
    await expect(stat(vol)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await listFiles(pool2)).toEqual([`${volumeId}.qcow2`]);
    expect(await driver.hasSnapshot(moved.path, snap)).toBe(true);
    expect(await readsPattern(moved.path, 0xcd, '0', '4M')).toBe(true);
    await driver.revertSnapshot(moved.path, snap);
    expect(await readsPattern(moved.path, 0xab, '0', '4M')).toBe(true);

    // A retry after the source is already gone returns the destination.
    expect(await driver.migrateVolume(vol, pool2, volumeId)).toEqual(moved);
  });

  it('names the binary when qemu-img cannot be started', async () => {
    const broken = createKvmStorageDriver({ qemuImg: path.join(dir, 'no-qemu-img') });
    await expect(broken.hasSnapshot(path.join(dir, `${randomUUID()}.qcow2`), randomUUID())).rejects.toThrow(/no-qemu-img.*ENOENT/);
  });

  it('surfaces qemu-img stderr for a file that is not qcow2', async () => {
    const bogus = path.join(dir, `${randomUUID()}.qcow2`);
    await writeFile(bogus, 'not an image');
    await expect(driver.hasSnapshot(bogus, randomUUID())).rejects.toThrow(/qemu-img .*not in qcow2 format/);
  });
});

describe('snapshots', () => {
  it('creates idempotently, reports existence, deletes (missing is fine)', async () => {
    const { vol } = await volumeWithPattern();
    const snap = randomUUID();
    expect(await driver.hasSnapshot(vol, snap)).toBe(false);
    expect(await driver.createSnapshot(vol, snap)).toEqual({ sizeBytes: 64 * MiB });
    expect(await driver.createSnapshot(vol, snap)).toEqual({ sizeBytes: 64 * MiB });
    expect(await snapshotTags(vol)).toEqual([snap]);
    expect(await driver.hasSnapshot(vol, snap)).toBe(true);
    expect(await driver.hasSnapshot(vol, randomUUID())).toBe(false);

    await driver.deleteSnapshot(vol, randomUUID());
    await driver.deleteSnapshot(vol, snap);
    expect(await driver.hasSnapshot(vol, snap)).toBe(false);
    await driver.deleteSnapshot(vol, snap);
  });

  it('a fresh create (no earlier call can have made it) takes the size it is given; a later plain call finds it', async () => {
    const { vol } = await volumeWithPattern();
    const snap = randomUUID();
    expect(await driver.createSnapshot(vol, snap, { volumeSizeBytes: 64 * MiB })).toEqual({ sizeBytes: 64 * MiB });
    // A retry (not fresh) probes the image and keeps the one snapshot.
    expect(await driver.createSnapshot(vol, snap)).toEqual({ sizeBytes: 64 * MiB });
    expect(await snapshotTags(vol)).toEqual([snap]);
  });

  it('serialises concurrent creates of the same snapshot into one', async () => {
    const { vol } = await volumeWithPattern();
    const snap = randomUUID();
    await Promise.all([driver.createSnapshot(vol, snap), driver.createSnapshot(vol, snap), driver.createSnapshot(vol, snap)]);
    expect(await snapshotTags(vol)).toEqual([snap]);
  });

  it('deletes every snapshot with the tag, including duplicates made outside the driver', async () => {
    const { vol } = await volumeWithPattern();
    const snap = randomUUID();
    await exec('qemu-img', ['snapshot', '-c', snap, vol]);
    await exec('qemu-img', ['snapshot', '-c', snap, vol]);
    expect(await snapshotTags(vol)).toEqual([snap, snap]);
    await driver.deleteSnapshot(vol, snap);
    expect(await snapshotTags(vol)).toEqual([]);
  });

  it('reverts to the snapshot bytes; a missing snapshot is SnapshotNotFoundError', async () => {
    const { vol } = await volumeWithPattern();
    const snap = randomUUID();
    await driver.createSnapshot(vol, snap);
    await qemuIo(vol, 'write -P 0xcd 0 4M');
    expect(await readsPattern(vol, 0xab, '0', '4M')).toBe(false);
    await driver.revertSnapshot(vol, snap);
    expect(await readsPattern(vol, 0xab, '0', '4M')).toBe(true);
    await expect(driver.revertSnapshot(vol, randomUUID())).rejects.toMatchObject({ name: 'SnapshotNotFoundError' });
  });
});

/**
 * Holds `file`'s qemu write lock from another process until released (qemu-io without -r opens it read-write,
 * as a running VM or another volsnap process's qemu-img would); resolves once the lock is taken.
 */
async function holdWriteLock(file: string): Promise<{ held: () => boolean; release: () => Promise<void> }> {
  const child = spawn('qemu-io', ['-f', 'qcow2', '-c', 'sleep 600000', file], { stdio: 'ignore' });
  let exited = false;
  const done = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  void done.then(() => (exited = true));
  // Taken once the kernel lists the holder's lock on byte 101 (qemu's "write" permission). Probing by opening
  // the image (qemu-img) would race the holder's own open and could make it the one refused.
  const inode = `:${statSync(file).ino} `;
  const holdsWrite = (line: string) => {
    const [start = NaN, end = NaN] = line.trim().split(/\s+/).slice(-2).map(Number);
    return line.includes(inode) && start <= 101 && 101 <= end;
  };
  while (!readFileSync('/proc/locks', 'utf8').split('\n').some(holdsWrite)) {
    if (exited) throw new Error('qemu-io exited before it held the lock');
    await new Promise((res) => setTimeout(res, 10));
  }
  return {
    held: () => !exited,
    release: async () => {
      child.kill();
      await done;
    },
  };
}

/** A KVM driver whose log says when it first met the other process's lock (and so is retrying). */
function driverSeeingTheLock(lockRetryMs?: number) {
  let saw!: () => void;
  const retrying = new Promise<void>((r) => (saw = r));
  const log = pino({ level: 'info' }, {
    write: (line: string) => {
      if (line.includes('image locked by another process; retrying')) saw();
    },
  });
  return { driver: createKvmStorageDriver({ logger: log, ...(lockRetryMs ? { lockRetryMs } : {}) }), retrying };
}

describe('image write lock held by another process', () => {
  it('retries a snapshot while another process holds the write lock, then succeeds once it lets go', async () => {
    const { vol } = await volumeWithPattern(16 * MiB, '1M');
    const holder = await holdWriteLock(vol);
    const { driver: patient, retrying } = driverSeeingTheLock();
    const snap = randomUUID();
    let finished = false;
    const taking = patient.createSnapshot(vol, snap, { volumeSizeBytes: 16 * MiB }).then(() => (finished = true));
    await retrying;
    // Refused once and waiting: nothing was written while the other process held the lock.
    expect(finished).toBe(false);
    expect(await snapshotTags(vol)).toEqual([]);
    await holder.release();
    await taking;
    expect(await snapshotTags(vol)).toEqual([snap]);
  });

  it('gives up after its bound with ImageBusyError naming only the file, not the command or host paths', async () => {
    const { vol, volumeId } = await volumeWithPattern(16 * MiB, '1M');
    const { driver: impatient } = driverSeeingTheLock(1500);
    const holder = await holdWriteLock(vol);
    const started = Date.now();
    const err = await impatient.createSnapshot(vol, randomUUID()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageBusyError);
    expect((err as Error).name).toBe('ImageBusyError');
    // It gave up on its own bound, not because the other process let go (it still holds the lock).
    expect(holder.held()).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
    const message = (err as Error).message;
    expect(message).toContain(`${volumeId}.qcow2`);
    expect(message).not.toContain('qemu-img');
    expect(message).not.toContain(dir);
    expect(await snapshotTags(vol)).toEqual([]);
    await holder.release();
    // Once the other process is gone, the same call goes through.
    const snap = randomUUID();
    await impatient.createSnapshot(vol, snap);
    expect(await snapshotTags(vol)).toEqual([snap]);
  });

  it('migrates while the source changes during the copy: the change is copied too', async () => {
    const { vol, volumeId } = await volumeWithPattern(64 * MiB, '32M');
    const pool2 = path.join(dir, 'pool2');
    let changed = false;
    const moved = await driver.migrateVolume(vol, pool2, volumeId, {
      lock: async (fn) => {
        // Between the copy and its publication, another writer changes the source (once).
        if (!changed) {
          changed = true;
          await qemuIo(vol, 'write -P 0xee 0 1M');
        }
        return fn();
      },
    });
    expect(await readsPattern(moved.path, 0xee, '0', '1M')).toBe(true);
    await expect(stat(vol)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await listFiles(pool2)).toEqual([`${volumeId}.qcow2`]);
  });
});

describe('backups', () => {
  it('copies the point-in-time bytes, with a matching checksum and no leftovers', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    await qemuIo(vol, 'write -P 0xcd 0 4M');

    const result = await driver.backupSnapshot(vol, store, target);
    expect(result.installPath).toBe(`snapshots/${target.accountId}/${volumeId}/${target.snapshotId}.qcow2`);
    const file = path.join(store, result.installPath);
    expect(await readsPattern(file, 0xab, '0', '4M')).toBe(true);
    expect(await readsPattern(file, 0xcd, '0', '4M')).toBe(false);
    expect(await readsPattern(vol, 0xcd, '0', '4M')).toBe(true);
    expect(await virtualSize(file)).toBe(64 * MiB);
    expect(result.checksum).toBe(`sha256:${await sha256(file)}`);
    expect(result.sizeBytes).toBe((await stat(file)).size);
    expect(await listFiles(store)).toEqual([result.installPath]);
    expect(await snapshotTags(file)).toEqual([]);

    expect(await driver.verifyBackup(store, result.installPath, result.checksum)).toBe(true);
    expect(await driver.verifyBackup(store, result.installPath, `sha256:${'0'.repeat(64)}`)).toBe(false);
  });

  it('reports progress in bytes of the virtual size, ending at bytesTotal', async () => {
    const { vol, volumeId } = await volumeWithPattern(64 * MiB, '16M');
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    const seen: BackupProgress[] = [];
    // Capped at 8 MiB/s, the 16 MiB copy lasts at least 2 s, across the 1 s progress sample: at least one report
    // comes before the end however fast or loaded the machine (an uncapped copy could end before any).
    const capped = createKvmStorageDriver({ logger, backupRateLimitBytesPerSec: 8 * MiB });
    await capped.backupSnapshot(vol, store, target, { onProgress: (p) => seen.push(p) });

    expect(seen.length).toBeGreaterThan(1);
    expect(seen.every((p) => p.bytesTotal === 64 * MiB)).toBe(true);
    expect(seen.at(-1)).toEqual({ bytesDone: 64 * MiB, bytesTotal: 64 * MiB });
    expect(seen.filter((p) => p.bytesDone === p.bytesTotal)).toHaveLength(1);
    for (let i = 1; i < seen.length; i++) expect(seen[i]!.bytesDone).toBeGreaterThanOrEqual(seen[i - 1]!.bytesDone);
  });

  it('progress follows the bytes written, not qemu-img\'s count that includes unallocated space', async () => {
    // 32 MiB of data in a 128 MiB volume: qemu-img -p reads 75 % before the first data byte is copied.
    const { vol, volumeId } = await volumeWithPattern(128 * MiB, '32M');
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    const { stdout } = await exec('qemu-img', ['measure', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${target.snapshotId}`, '--output=json', vol]);
    const required = (JSON.parse(stdout) as { required: number }).required;
    const backupDir = path.join(store, 'snapshots', target.accountId, volumeId);
    const ahead: string[] = [];
    const seen: BackupProgress[] = [];
    await slowDriver.backupSnapshot(vol, store, target, {
      onProgress: (p) => {
        seen.push(p);
        if (p.bytesDone === p.bytesTotal) return;
        // The file only grows, so what is on disk now is at least what the report was computed from.
        const tmp = readdirSync(backupDir).find((n) => n.includes('.partial'));
        const written = tmp ? statSync(path.join(backupDir, tmp)).size : 0;
        if (p.bytesDone / p.bytesTotal > written / required + 1e-9) ahead.push(`${p.bytesDone}/${p.bytesTotal} with ${written}/${required} written`);
      },
    });
    expect(ahead).toEqual([]);
    expect(seen.filter((p) => p.bytesDone > 0 && p.bytesDone < p.bytesTotal).length).toBeGreaterThan(0);
    expect(seen.at(-1)).toEqual({ bytesDone: 128 * MiB, bytesTotal: 128 * MiB });
  });

  it('a throwing progress callback does not break the backup', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    const result = await driver.backupSnapshot(vol, store, target, {
      onProgress: () => {
        throw new Error('boom');
      },
    });
    expect(await readsPattern(path.join(store, result.installPath), 0xab, '0', '4M')).toBe(true);
  });

  it('keeps snapshot A bytes while snapshot B is taken and the volume is written during A backup', async () => {
    const { vol, volumeId } = await volumeWithPattern(128 * MiB, '64M');
    const a = newTarget(volumeId);
    await driver.createSnapshot(vol, a.snapshotId);

    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    let settled = false;
    const backupA = slowDriver
      .backupSnapshot(vol, store, a, { onProgress: () => started() })
      .finally(() => (settled = true));
    await running;

    const b = { ...a, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, b.snapshotId);
    await qemuIo(vol, 'write -P 0xcd 0 16M');
    expect(settled).toBe(false); // the snapshot and the write really overlapped the copy

    const resultA = await backupA;
    const resultB = await driver.backupSnapshot(vol, store, b);
    expect(await readsPattern(path.join(store, resultA.installPath), 0xab, '0', '64M')).toBe(true);
    expect(await readsPattern(path.join(store, resultB.installPath), 0xab, '0', '64M')).toBe(true);
    expect(await readsPattern(vol, 0xcd, '0', '16M')).toBe(true);
    expect(resultA.checksum).toBe(`sha256:${await sha256(path.join(store, resultA.installPath))}`);
    expect((await snapshotTags(vol)).sort()).toEqual([a.snapshotId, b.snapshotId].sort());
  }, 30_000);

  it('fails clearly and leaves no file when the image store root is a regular file', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    await writeFile(store, 'not a directory');
    const before = await listFiles(dir);

    await expect(driver.backupSnapshot(vol, store, target)).rejects.toThrow(/image store .* is unusable: ENOTDIR/);
    expect(await listFiles(dir)).toEqual(before);
    expect(await readFile(store, 'utf8')).toBe('not a directory');
  });

  it('fails clearly when a directory inside the image store is a regular file', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    await mkdir(store);
    await writeFile(path.join(store, 'snapshots'), 'x');
    const before = await listFiles(dir);
    await expect(driver.backupSnapshot(vol, store, target)).rejects.toThrow(/unusable: (ENOTDIR|EEXIST)/);
    expect(await listFiles(dir)).toEqual(before);
  });

  it('rejects a missing snapshot with SnapshotNotFoundError and creates nothing', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    await expect(driver.backupSnapshot(vol, store, newTarget(volumeId))).rejects.toMatchObject({
      name: 'SnapshotNotFoundError',
    });
    await expect(stat(store)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses a target whose volume id is not the volume being backed up', async () => {
    const { vol } = await volumeWithPattern();
    await expect(driver.backupSnapshot(vol, store, newTarget(randomUUID()))).rejects.toThrow(/does not belong/);
  });

  it('abort kills the copy and removes the temp file', async () => {
    const { vol, volumeId } = await volumeWithPattern(128 * MiB, '64M');
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    const ac = new AbortController();
    const backup = slowDriver.backupSnapshot(vol, store, target, { signal: ac.signal, onProgress: () => ac.abort() });
    await expect(backup).rejects.toMatchObject({ name: 'AbortError' });
    const backupDir = path.join(store, 'snapshots', target.accountId, volumeId);
    expect(await readdir(backupDir)).toEqual([]);
    // Nothing reappears: the child is gone, not still writing.
    await new Promise((r) => setTimeout(r, 300));
    expect(await readdir(backupDir)).toEqual([]);
  }, 30_000);

  it('an already-aborted signal does nothing', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    await expect(driver.backupSnapshot(vol, store, target, { signal: AbortSignal.abort() })).rejects.toMatchObject({
      name: 'AbortError',
    });
    await expect(stat(store)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a retried backup replaces the earlier file', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    const first = await driver.backupSnapshot(vol, store, target);
    const second = await driver.backupSnapshot(vol, store, target);
    expect(second.installPath).toBe(first.installPath);
    expect(second.checksum).toBe(`sha256:${await sha256(path.join(store, second.installPath))}`);
    expect(await listFiles(store)).toEqual([first.installPath]);
  });

  it('verifyBackup detects a changed byte and a missing file', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    const r = await driver.backupSnapshot(vol, store, target);
    const file = path.join(store, r.installPath);
    const bytes = await readFile(file);
    const last = bytes.length - 1;
    bytes.writeUInt8(bytes.readUInt8(last) ^ 0xff, last);
    await writeFile(file, bytes);
    expect(await driver.verifyBackup(store, r.installPath, r.checksum)).toBe(false);
    await rm(file);
    expect(await driver.verifyBackup(store, r.installPath, r.checksum)).toBe(false);
    await expect(driver.verifyBackup(store, '../../etc/passwd', r.checksum)).rejects.toThrow(/install path/);
  });

  it('creates a volume from a backup holding the snapshot bytes, never over an existing volume', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    await qemuIo(vol, 'write -P 0xcd 0 4M');
    const r = await driver.backupSnapshot(vol, store, target);

    const pool2 = path.join(dir, 'pool2');
    const newId = randomUUID();
    const chain = [{ snapshotId: target.snapshotId, installPath: r.installPath, checksum: r.checksum }];
    const restored = await driver.createVolumeFromBackup(store, r.installPath, pool2, newId, chain);
    expect(restored).toEqual({ path: path.join(pool2, `${newId}.qcow2`), format: 'qcow2' });
    expect(await readsPattern(restored.path, 0xab, '0', '4M')).toBe(true);
    expect(await virtualSize(restored.path)).toBe(64 * MiB);
    await expect(driver.createVolumeFromBackup(store, r.installPath, pool2, newId, chain)).rejects.toMatchObject({
      name: 'VolumeExistsError',
    });
    expect(await listFiles(pool2)).toEqual([`${newId}.qcow2`]);
  });

  it('deleteBackupFiles removes the backup and its partial files only', async () => {
    const { vol, volumeId } = await volumeWithPattern();
    const target = newTarget(volumeId);
    await driver.createSnapshot(vol, target.snapshotId);
    const r = await driver.backupSnapshot(vol, store, target);
    const file = path.join(store, r.installPath);
    const backupDir = path.dirname(file);
    await writeFile(`${file}.partial-0123abcd`, 'half');
    const other = path.join(backupDir, `${randomUUID()}.qcow2`);
    await writeFile(other, 'another snapshot');

    const removed = await driver.deleteBackupFiles(store, target);
    expect(removed.sort()).toEqual([file, `${file}.partial-0123abcd`].sort());
    expect(await readdir(backupDir)).toEqual([path.basename(other)]);
    expect(await driver.deleteBackupFiles(store, target)).toEqual([]);
    expect(await driver.deleteBackupFiles(store, newTarget(randomUUID()))).toEqual([]);
  });
});

