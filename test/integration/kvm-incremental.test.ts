/** Incremental (delta) backups of the KVM driver against real qemu-img / qemu-nbd (docs/design.md §14). */
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BackupResult, BackupTarget, RestoreMember } from '../../storage/driver.js';
import { createKvmStorageDriver } from '../../storage/kvm.js';
import { diffSnapshots } from '../../storage/qcow2-diff.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const driver = createKvmStorageDriver({ logger: pino({ level: 'silent' }) });
const byRanges = createKvmStorageDriver({ logger: pino({ level: 'silent' }), deltaMethod: 'ranges' });
const byRebase = createKvmStorageDriver({ logger: pino({ level: 'silent' }), deltaMethod: 'rebase' });

let dir: string;
let pool: string;
let store: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'volsnap-incr-'));
  pool = path.join(dir, 'pool');
  store = path.join(dir, 'store');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const qemuIo = (file: string, cmd: string) => exec('qemu-io', ['-f', 'qcow2', '-c', cmd, file]);
const sha256 = async (file: string) => createHash('sha256').update(await readFile(file)).digest('hex');

/** `qemu-img compare` of a flat volume against the snapshot's point-in-time content (exported by qemu-img convert). */
async function sameAsSnapshot(volume: string, source: string, snapshotId: string): Promise<boolean> {
  const ref = path.join(dir, `ref-${randomUUID()}.qcow2`);
  await exec('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${snapshotId}`, source, ref]);
  try {
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', volume, ref]);
    return true;
  } catch {
    return false;
  } finally {
    await rm(ref, { force: true });
  }
}

/** The chain a restore of the last backup reads, top first, as the database records it. */
const chainOf = (...backups: Array<{ target: BackupTarget; result: BackupResult }>): RestoreMember[] =>
  backups.map((b) => ({ snapshotId: b.target.snapshotId, installPath: b.result.installPath, checksum: b.result.checksum })).reverse();

async function backingOf(file: string): Promise<string | undefined> {
  const { stdout } = await exec('qemu-img', ['info', '-U', '--output=json', file]);
  return (JSON.parse(stdout) as { 'backing-filename'?: string })['backing-filename'];
}

describe('incremental backups (KVM)', () => {
  it.each([
    ['the changed clusters read from the snapshots\' metadata', byRanges, false],
    ['content comparison by rebase', byRebase, false],
    ['automatic, parent snapshot gone from primary (rebase)', driver, true],
    ['automatic', driver, false],
  ])('a chain of deltas holds only the changes, names its parent relatively, and every point restores byte-exact: %s', async (_how, writer, dropParent) => {
    const volumeId = randomUUID();
    const accountId = randomUUID();
    const { path: vol } = await driver.createVolume(pool, volumeId, 64 * MiB);
    await qemuIo(vol, 'write -P 0x11 0 48M');
    const backups: Array<{ target: BackupTarget; result: BackupResult; expected: string }> = [];
    for (let i = 0; i < 5; i++) {
      if (i > 0) await qemuIo(vol, `write -P 0x${(0x20 + i).toString(16)} ${i * 4}M 1M`);
      if (i === 3) await qemuIo(vol, 'write -z 40M 2M'); // zeroes over data must be carried too
      const target: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
      await driver.createSnapshot(vol, target.snapshotId);
      const prev = backups.at(-1);
      const parent = prev ? { snapshotId: prev.target.snapshotId, installPath: prev.result.installPath } : undefined;
      const expected = path.join(dir, `expected-${target.snapshotId}.qcow2`);
      await exec('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${target.snapshotId}`, vol, expected]);
      if (dropParent && prev) await driver.deleteSnapshot(vol, prev.target.snapshotId);
      const result = await writer.backupSnapshot(vol, store, target, parent ? { parent } : {});
      backups.push({ target, result, expected });
      expect(result.parentSnapshotId ?? null).toBe(prev ? prev.target.snapshotId : null);
    }
    // The live volume moves on after the last snapshot; restores must not see it.
    await qemuIo(vol, 'write -P 0x99 0 64M');
    for (const [i, { result, expected }] of backups.entries()) {
      const file = path.join(store, result.installPath);
      expect(await driver.verifyBackup(store, result.installPath, result.checksum)).toBe(true);
      expect(`sha256:${await sha256(file)}`).toBe(result.checksum);
      if (i === 0) {
        expect(result.sizeBytes).toBeGreaterThan(48 * MiB);
        expect(await backingOf(file)).toBeUndefined();
      } else {
        // 1 MiB changed (3 MiB at the zeroed step): the delta is that plus metadata, not the 48 MiB of data.
        expect(result.sizeBytes).toBeLessThan((i === 3 ? 3 : 1) * 1.2 * MiB + MiB);
        expect(await backingOf(file)).toBe(`${backups[i - 1]!.target.snapshotId}.qcow2`);
      }
      const restored = await driver.createVolumeFromBackup(store, result.installPath, path.join(dir, 'restored'), randomUUID(), chainOf(...backups.slice(0, i + 1)));
      expect(await backingOf(restored.path)).toBeUndefined(); // flattened
      await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', restored.path, expected]);
    }
  });

  it('reads changed clusters from metadata: none for the same snapshot, exactly the written ones, whole clusters', async () => {
    const { path: vol } = await driver.createVolume(pool, randomUUID(), 64 * MiB);
    await qemuIo(vol, 'write -P 0x61 0 32M');
    const a = randomUUID();
    const b = randomUUID();
    await driver.createSnapshot(vol, a);
    await qemuIo(vol, 'write -P 0x62 1M 128k');
    await qemuIo(vol, 'write -P 0x63 10M 4k'); // one cluster
    await qemuIo(vol, 'write -z 20M 64k');
    await qemuIo(vol, 'write -P 0x64 48M 64k'); // unallocated before
    await driver.createSnapshot(vol, b);
    await qemuIo(vol, 'write -P 0x65 30M 1M'); // after b: not in the diff
    expect(await diffSnapshots(vol, a, a)).toMatchObject({ ranges: [], changedBytes: 0 });
    const diff = await diffSnapshots(vol, a, b);
    expect(diff).toMatchObject({ clusterSize: 64 * 1024, diskSize: 64 * MiB });
    expect(diff!.ranges).toEqual([
      { offset: MiB, length: 128 * 1024 },
      { offset: 10 * MiB, length: 64 * 1024 },
      { offset: 20 * MiB, length: 64 * 1024 },
      { offset: 48 * MiB, length: 64 * 1024 },
    ]);
    expect(await diffSnapshots(vol, a, randomUUID())).toBeNull();
  });

  it('the store can be moved: the chain is found through relative paths', async () => {
    const volumeId = randomUUID();
    const accountId = randomUUID();
    const { path: vol } = await driver.createVolume(pool, volumeId, 16 * MiB);
    await qemuIo(vol, 'write -P 0x31 0 8M');
    const a: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, a.snapshotId);
    const ra = await driver.backupSnapshot(vol, store, a);
    await qemuIo(vol, 'write -P 0x32 1M 1M');
    const b: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, b.snapshotId);
    const rb = await driver.backupSnapshot(vol, store, b, { parent: { snapshotId: a.snapshotId, installPath: ra.installPath } });
    const moved = path.join(dir, 'moved-store');
    await exec('mv', [store, moved]);
    expect(await driver.verifyBackup(moved, rb.installPath, rb.checksum)).toBe(true);
    const restored = await driver.createVolumeFromBackup(moved, rb.installPath, path.join(dir, 'restored'), randomUUID(), chainOf({ target: a, result: ra }, { target: b, result: rb }));
    expect(await sameAsSnapshot(restored.path, vol, b.snapshotId)).toBe(true);
  });

  it('an aborted delta leaves its parent untouched and no file behind; a missing parent chain fails verification', async () => {
    const volumeId = randomUUID();
    const accountId = randomUUID();
    const { path: vol } = await driver.createVolume(pool, volumeId, 256 * MiB);
    await qemuIo(vol, 'write -P 0x41 0 200M');
    const a: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, a.snapshotId);
    const ra = await driver.backupSnapshot(vol, store, a);
    const parentFile = path.join(store, ra.installPath);
    const before = await sha256(parentFile);
    const mtime = (await stat(parentFile)).mtimeMs;
    await qemuIo(vol, 'write -P 0x42 0 100M');
    const b: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, b.snapshotId);
    const ac = new AbortController();
    const run = driver.backupSnapshot(vol, store, b, { signal: ac.signal, parent: { snapshotId: a.snapshotId, installPath: ra.installPath }, onProgress: (p) => p.bytesDone > 0 && ac.abort() });
    setTimeout(() => ac.abort(), 150);
    await expect(run).rejects.toThrow();
    expect(await sha256(parentFile)).toBe(before);
    expect((await stat(parentFile)).mtimeMs).toBe(mtime);
    expect(await readdir(path.dirname(parentFile))).toEqual([path.basename(parentFile)]);
    // A retry writes the whole delta; with the parent file gone the delta no longer verifies.
    const rb = await driver.backupSnapshot(vol, store, b, { parent: { snapshotId: a.snapshotId, installPath: ra.installPath } });
    expect(await driver.verifyBackup(store, rb.installPath, rb.checksum)).toBe(true);
    expect(await sha256(parentFile)).toBe(before);
    await rm(parentFile);
    expect(await driver.verifyBackup(store, rb.installPath, rb.checksum)).toBe(false);
  });

  it('rewrites a volume from a delta chain when its primary snapshot is gone, keeping its other internal snapshots', async () => {
    const volumeId = randomUUID();
    const accountId = randomUUID();
    const { path: vol } = await driver.createVolume(pool, volumeId, 32 * MiB);
    await qemuIo(vol, 'write -P 0x51 0 24M');
    const a: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, a.snapshotId);
    const ra = await driver.backupSnapshot(vol, store, a);
    await qemuIo(vol, 'write -P 0x52 2M 3M');
    await qemuIo(vol, 'write -z 10M 1M');
    const b: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, b.snapshotId);
    const rb = await driver.backupSnapshot(vol, store, b, { parent: { snapshotId: a.snapshotId, installPath: ra.installPath } });
    const expected = path.join(dir, 'expected.qcow2');
    await exec('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${b.snapshotId}`, vol, expected]);
    await driver.deleteSnapshot(vol, b.snapshotId);
    await qemuIo(vol, 'write -P 0x77 0 32M');
    await driver.resizeVolume(vol, 48 * MiB);
    await driver.restoreVolumeFromBackup(store, rb.installPath, vol, chainOf({ target: a, result: ra }, { target: b, result: rb }));
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', vol, expected]);
    expect(await driver.hasSnapshot(vol, a.snapshotId)).toBe(true);
    expect(await sameAsSnapshot(vol, vol, a.snapshotId)).toBe(false);
  });

  it('a restore verifies every member it reads: one rotten byte in the middle of a chain refuses create and revert, creating and changing nothing', async () => {
    const volumeId = randomUUID();
    const accountId = randomUUID();
    const { path: vol } = await driver.createVolume(pool, volumeId, 16 * MiB);
    await qemuIo(vol, 'write -P 0x61 0 8M');
    const links: Array<{ target: BackupTarget; result: BackupResult }> = [];
    for (let i = 0; i < 3; i++) {
      if (i > 0) await qemuIo(vol, `write -P 0x${(0x62 + i).toString(16)} ${i}M 1M`);
      const target: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
      await driver.createSnapshot(vol, target.snapshotId);
      const prev = links.at(-1);
      const result = await driver.backupSnapshot(vol, store, target, prev ? { parent: { snapshotId: prev.target.snapshotId, installPath: prev.result.installPath } } : {});
      links.push({ target, result });
    }
    const top = links[2]!;
    const chain = chainOf(...links);
    // The good chain restores; then the middle member's last byte (its data) rots.
    const good = await driver.createVolumeFromBackup(store, top.result.installPath, path.join(dir, 'good'), randomUUID(), chain);
    expect(await sameAsSnapshot(good.path, vol, top.target.snapshotId)).toBe(true);
    const middle = path.join(store, links[1]!.result.installPath);
    const bytes = await readFile(middle);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0xff, bytes.length - 1);
    await writeFile(middle, bytes);

    const target = path.join(dir, 'target');
    const err = await driver.createVolumeFromBackup(store, top.result.installPath, target, randomUUID(), chain).then(
      () => new Error('the restore of a rotten chain succeeded'),
      (e: unknown) => e as Error,
    );
    expect(err).toMatchObject({ name: 'BackupCorruptError', snapshotId: links[1]!.target.snapshotId });
    expect(err.message).toMatch(/does not match its checksum/);
    expect(await readdir(target).catch(() => [])).toEqual([]);

    // Revert from the chain: refused before the volume is touched.
    await driver.deleteSnapshot(vol, top.target.snapshotId);
    await qemuIo(vol, 'write -P 0x77 0 16M');
    const before = await sha256(vol);
    await expect(driver.restoreVolumeFromBackup(store, top.result.installPath, vol, chain)).rejects.toMatchObject({ name: 'BackupCorruptError', snapshotId: links[1]!.target.snapshotId });
    expect(await sha256(vol)).toBe(before);
    expect(await readdir(pool)).toEqual([path.basename(vol)]);
    // A member whose header names another backing file than the chain on record is refused too.
    const wrong = [chain[0]!, chain[2]!];
    await expect(driver.createVolumeFromBackup(store, top.result.installPath, target, randomUUID(), wrong)).rejects.toMatchObject({ name: 'BackupCorruptError', snapshotId: top.target.snapshotId });
    expect(await readdir(target).catch(() => [])).toEqual([]);
  });

  it('a delta on a parent of another volume is refused', async () => {
    const accountId = randomUUID();
    const { path: vol } = await driver.createVolume(pool, randomUUID(), 16 * MiB);
    const volumeId = path.basename(vol, '.qcow2');
    const t: BackupTarget = { accountId, volumeId, snapshotId: randomUUID() };
    await driver.createSnapshot(vol, t.snapshotId);
    const other = `snapshots/${accountId}/${randomUUID()}/${randomUUID()}.qcow2`;
    await expect(driver.backupSnapshot(vol, store, t, { parent: { snapshotId: randomUUID(), installPath: other } })).rejects.toThrow(/not a backup of the same volume/);
  });
});
