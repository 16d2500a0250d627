/** XenServerStorageDriver against the XenAPI simulator (a separate process) and real qemu-img / qemu-io. */
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { inspect, promisify } from 'node:util';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { BackupProgress, BackupTarget } from '../../storage/driver.js';
import type { DriverLogger } from '../../storage/kvm.js';
import { parseXenVolumePath, xenVolumePath, XenServerStorageDriver } from '../../storage/xen.js';
import { XenApiClient } from '../../storage/xenapi-client.js';
import { startXenSim, type XenSim } from '../support/xen-sim-process.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;

let dir: string;
let store: string;
let sim: XenSim;
let driver: XenServerStorageDriver;
let srA: string;
let srB: string;
/** Everything the drivers logged and every error the tests saw: checked for credentials and session ids at the end. */
const seen: string[] = [];

function capturingLogger(): DriverLogger {
  const rec = (level: string) => (obj: object, msg?: string) => void seen.push(`${level} ${msg ?? ''} ${inspect(obj, { depth: 6 })}`);
  return { info: rec('info'), warn: rec('warn'), error: rec('error') };
}

/** Awaits a rejection, records it for the leak check, and returns it. */
async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    seen.push(inspect(err, { depth: 6 }));
    return err as Error;
  }
  throw new Error('expected a rejection');
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'volsnap-xen-'));
  sim = await startXenSim({ dir: path.join(dir, 'sim') });
  [srA, srB] = sim.srs as [string, string];
  store = path.join(dir, 'store');
  driver = new XenServerStorageDriver({
    hosts: () => ({ url: sim.url, username: sim.username, password: sim.password }),
    logger: capturingLogger(),
  });
});
afterAll(async () => {
  await driver?.close();
  await sim?.stop();
  await rm(dir, { recursive: true, force: true });
});
beforeEach(async () => {
  await sim.setFaults({
    expireSessionsAfterBytes: null,
    dropConnectionOnExpiry: false,
    failNextExports: 0,
    failExportAfterBytes: 0,
    failNextImports: 0,
    exportContentLength: false,
    exportBytesPerSec: null,
    attachedVdis: [],
  });
});

const fileOf = (volumePath: string) => {
  const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
  return sim.vdiFile(srUuid, vdiUuid);
};

async function qemuIo(file: string, cmd: string, format = 'raw'): Promise<void> {
  await exec('qemu-io', ['-f', format, '-c', cmd, file]);
}

/** Whether `file` holds `pattern` in every byte of [offset, offset+len). */
async function readsPattern(file: string, format: string, pattern: number, offset: string, len: string): Promise<boolean> {
  try {
    const { stdout, stderr } = await exec('qemu-io', ['-f', format, '-r', '-c', `read -P 0x${pattern.toString(16)} ${offset} ${len}`, file]);
    return !/Pattern verification failed/.test(stdout + stderr);
  } catch {
    return false;
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** Every file under `root`, relative to it. */
async function listFiles(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => !e.isDirectory()).map((e) => path.relative(root, path.join(e.parentPath, e.name))).sort();
}

async function snapshotFile(snapshotId: string): Promise<string> {
  const v = (await sim.vdis()).find((x) => x.is_a_snapshot && x.other_config.volsnap_snapshot_id === snapshotId);
  if (!v) throw new Error(`no snapshot VDI tagged ${snapshotId}`);
  return v.file;
}

/** A volume whose first 4 MiB hold 0xab in a snapshot, then overwritten with 0xcd on the live VDI. */
async function snapshottedVolume(): Promise<{ vol: string; volumeId: string; snap: string }> {
  const volumeId = randomUUID();
  const { path: vol } = await driver.createVolume(srA, volumeId, SIZE);
  await qemuIo(fileOf(vol), 'write -P 0xab 0 4M');
  await qemuIo(fileOf(vol), 'write -P 0x11 20M 1M');
  const snap = randomUUID();
  await driver.createSnapshot(vol, snap);
  await qemuIo(fileOf(vol), 'write -P 0xcd 0 4M');
  return { vol, volumeId, snap };
}

function target(volumeId: string, snapshotId: string): BackupTarget {
  return { accountId: randomUUID(), volumeId, snapshotId };
}

/** The backup converted back to raw equals the snapshot VDI's bytes. */
async function expectBackupEqualsSnapshot(backupFile: string, snapshotId: string): Promise<void> {
  const raw = `${backupFile}.check.raw`;
  await exec('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', backupFile, raw]);
  try {
    expect(await sha256(raw)).toBe(await sha256(await snapshotFile(snapshotId)));
  } finally {
    await rm(raw, { force: true });
  }
}

describe('volume paths', () => {
  it('formats and parses xen://<sr>/<vdi> in one place and rejects anything else', () => {
    const sr = randomUUID();
    const vdi = randomUUID();
    expect(parseXenVolumePath(xenVolumePath(sr.toUpperCase(), vdi))).toEqual({ srUuid: sr, vdiUuid: vdi });
    for (const bad of [`xen://${sr}`, `xen://${sr}/${vdi}/x`, `/pool/${vdi}.qcow2`, `xen://../${vdi}`, `http://${sr}/${vdi}`]) {
      expect(() => parseXenVolumePath(bad)).toThrow(/xen:\/\/<sr-uuid>\/<vdi-uuid>/);
    }
    expect(() => xenVolumePath('not-a-uuid', vdi)).toThrow(/UUID/);
  });
});

describe('volumes', () => {
  it('creates a VDI of the requested size in the SR and never a second one for the same volume', async () => {
    const volumeId = randomUUID();
    const created = await driver.createVolume(srA, volumeId, SIZE);
    expect(created.format).toBe('vhd');
    const { srUuid, vdiUuid } = parseXenVolumePath(created.path);
    expect(srUuid).toBe(srA);
    expect((await stat(sim.vdiFile(srA, vdiUuid))).size).toBe(SIZE);
    const err = await failure(driver.createVolume(srA, volumeId, SIZE));
    expect(err.name).toBe('VolumeExistsError');
  });

  it('grows a volume, refuses to shrink it, and deletes it with its snapshots', async () => {
    const { vol } = await snapshottedVolume();
    await driver.resizeVolume(vol, 2 * SIZE);
    expect((await stat(fileOf(vol))).size).toBe(2 * SIZE);
    expect((await failure(driver.resizeVolume(vol, SIZE))).message).toMatch(/cannot shrink/);
    const before = (await sim.vdis()).length;
    await driver.deleteVolume(vol);
    expect((await sim.vdis()).length).toBe(before - 2);
    await expect(stat(fileOf(vol))).rejects.toMatchObject({ code: 'ENOENT' });
    await driver.deleteVolume(vol); // a missing volume is fine
  });

  it('answers a clear error for an unknown VDI, and for a VDI attached to a running VM (VDI_IN_USE)', async () => {
    const unknown = xenVolumePath(srA, randomUUID());
    const err = await failure(driver.resizeVolume(unknown, SIZE));
    expect(err.name).toBe('VolumeNotFoundError');
    expect(err.message).toMatch(/not found: VDI .* does not exist/);

    const { path: vol } = await driver.createVolume(srA, randomUUID(), SIZE);
    await sim.setFaults({ attachedVdis: [parseXenVolumePath(vol).vdiUuid] });
    const inUse = await failure(driver.deleteVolume(vol));
    expect(inUse.message).toMatch(/in use.*VDI_IN_USE/);
    await stat(fileOf(vol));
  });
});

describe('snapshots', () => {
  it('is idempotent per snapshot id, and deletes it; a missing one is fine', async () => {
    const { vol, snap } = await snapshottedVolume();
    await driver.createSnapshot(vol, snap);
    expect((await sim.vdis()).filter((v) => v.other_config.volsnap_snapshot_id === snap)).toHaveLength(1);
    expect(await driver.hasSnapshot(vol, snap)).toBe(true);
    expect(await driver.hasSnapshot(vol, randomUUID())).toBe(false);
    await driver.deleteSnapshot(vol, snap);
    expect(await driver.hasSnapshot(vol, snap)).toBe(false);
    await driver.deleteSnapshot(vol, snap);
  });

  it('reverts the volume to the snapshot bytes; a missing snapshot is SnapshotNotFoundError', async () => {
    const { vol, snap } = await snapshottedVolume();
    expect(await readsPattern(fileOf(vol), 'raw', 0xcd, '0', '4M')).toBe(true);
    await driver.revertSnapshot(vol, snap);
    expect(await readsPattern(fileOf(vol), 'raw', 0xab, '0', '4M')).toBe(true);
    expect(await readsPattern(fileOf(vol), 'raw', 0x11, '20M', '1M')).toBe(true);
    expect((await failure(driver.revertSnapshot(vol, randomUUID()))).name).toBe('SnapshotNotFoundError');
  });
});

describe('backup', () => {
  it('exports the snapshot as VHD whose bytes are the snapshot point in time, with progress and a checksum', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const t = target(volumeId, snap);
    const progress: BackupProgress[] = [];
    const tasksBefore = (await sim.stats()).tasks;
    const res = await driver.backupSnapshot(vol, store, t, { onProgress: (p) => progress.push(p) });
    expect((await sim.stats()).tasks).toBe(tasksBefore); // the export's task was destroyed

    expect(res.installPath).toBe(`snapshots/${t.accountId}/${volumeId}/${snap}.vhd`);
    const file = path.join(store, res.installPath);
    expect(res.checksum).toBe(`sha256:${await sha256(file)}`);
    expect(res.sizeBytes).toBe((await stat(file)).size);
    expect(await readsPattern(file, 'vpc', 0xab, '0', '4M')).toBe(true);
    expect(await readsPattern(file, 'vpc', 0x11, '20M', '1M')).toBe(true);
    await expectBackupEqualsSnapshot(file, snap);
    const { stdout } = await exec('qemu-img', ['info', '-f', 'vpc', '--output=json', file]);
    expect((JSON.parse(stdout) as { 'virtual-size': number })['virtual-size']).toBe(SIZE);

    // No Content-Length from the host: the total is the VDI's virtual size.
    expect(progress.at(-1)).toEqual({ bytesDone: SIZE, bytesTotal: SIZE });
    expect(progress.every((p, i) => i === 0 || p.bytesDone >= progress[i - 1]!.bytesDone)).toBe(true);
    expect(await listFiles(store)).toEqual([res.installPath]);

    expect(await driver.verifyBackup(store, res.installPath, res.checksum)).toBe(true);
    const bytes = await readFile(file);
    bytes[bytes.length - 100] = bytes[bytes.length - 100]! ^ 0xff;
    await writeFile(file, bytes);
    expect(await driver.verifyBackup(store, res.installPath, res.checksum)).toBe(false);
    expect(await driver.deleteBackupFiles(store, t)).toEqual([file]);
  });

  it('uses Content-Length as the progress total when the host sends one', async () => {
    await sim.setFaults({ exportContentLength: true });
    const { vol, volumeId, snap } = await snapshottedVolume();
    const progress: BackupProgress[] = [];
    const res = await driver.backupSnapshot(vol, store, target(volumeId, snap), { onProgress: (p) => progress.push(p) });
    expect(progress.at(-1)).toEqual({ bytesDone: res.sizeBytes, bytesTotal: res.sizeBytes });
  });

  it('logs in again when the session expires mid-backup and succeeds', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const before = await sim.stats();
    await sim.setFaults({ expireSessionsAfterBytes: MiB });
    const res = await driver.backupSnapshot(vol, store, target(volumeId, snap));
    const after = await sim.stats();
    expect(after.logins - before.logins).toBe(1);
    expect(after.exports - before.exports).toBe(1);
    await expectBackupEqualsSnapshot(path.join(store, res.installPath), snap);
  });

  it('restarts the export stream after re-login when the session expiry also cut the connection', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const before = await sim.stats();
    await sim.setFaults({ expireSessionsAfterBytes: MiB, dropConnectionOnExpiry: true });
    const t = target(volumeId, snap);
    const res = await driver.backupSnapshot(vol, store, t);
    const after = await sim.stats();
    expect(after.logins - before.logins).toBe(1);
    expect(after.exports - before.exports).toBe(2);
    await expectBackupEqualsSnapshot(path.join(store, res.installPath), snap);
    expect(await listFiles(path.join(store, 'snapshots', t.accountId))).toEqual([`${volumeId}/${snap}.vhd`]);
  });

  it('logs in again when the export answers 401 (session already gone)', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const before = await sim.stats();
    await sim.setFaults({ expireSessionsAfterBytes: 0 });
    const res = await driver.backupSnapshot(vol, store, target(volumeId, snap));
    const after = await sim.stats();
    expect(after.logins - before.logins).toBe(1);
    expect(after.exports - before.exports).toBe(2);
    await expectBackupEqualsSnapshot(path.join(store, res.installPath), snap);
  });

  it('logs in again for an ordinary call on an expired session', async () => {
    const { vol, snap } = await snapshottedVolume();
    const before = await sim.stats();
    await sim.expireSessions();
    expect(await driver.hasSnapshot(vol, snap)).toBe(true);
    expect((await sim.stats()).logins - before.logins).toBe(1);
  });

  it('throws on a failed export, leaves no temp file and does not retry by itself (the workflow does)', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const t = target(volumeId, snap);
    const before = await sim.stats();
    await sim.setFaults({ failNextExports: 1, failExportAfterBytes: 2 * MiB });
    const err = await failure(driver.backupSnapshot(vol, store, t));
    expect(err.message).toMatch(/backup of snapshot .* failed: .*VDI_IO_ERROR/);
    expect((await sim.stats()).exports - before.exports).toBe(1);
    expect(await listFiles(path.join(store, 'snapshots', t.accountId))).toEqual([]);
    // The next attempt (the workflow's retry) succeeds.
    const res = await driver.backupSnapshot(vol, store, t);
    await expectBackupEqualsSnapshot(path.join(store, res.installPath), snap);
  });

  it('stops on abort and leaves no temp file', async () => {
    await sim.setFaults({ exportBytesPerSec: 4 * MiB });
    const { vol, volumeId, snap } = await snapshottedVolume();
    const t = target(volumeId, snap);
    const ac = new AbortController();
    const err = await failure(driver.backupSnapshot(vol, store, t, { signal: ac.signal, onProgress: () => ac.abort() }));
    expect(err.name).toBe('AbortError');
    expect(await listFiles(path.join(store, 'snapshots', t.accountId))).toEqual([]);
  });

  it('rejects a missing snapshot with SnapshotNotFoundError and creates nothing', async () => {
    const { vol, volumeId } = await snapshottedVolume();
    const t = target(volumeId, randomUUID());
    const err = await failure(driver.backupSnapshot(vol, store, t));
    expect(err.name).toBe('SnapshotNotFoundError');
    expect(await listFiles(path.join(store, 'snapshots', t.accountId))).toEqual([]);
    const gone = await failure(driver.backupSnapshot(xenVolumePath(srA, randomUUID()), store, t));
    expect(gone.name).toBe('SnapshotNotFoundError');
  });
});

describe('restore and migrate', () => {
  it('creates a volume from a backup by import with exactly the snapshot bytes', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const res = await driver.backupSnapshot(vol, store, target(volumeId, snap));
    const newId = randomUUID();
    const chain = [{ snapshotId: snap, installPath: res.installPath, checksum: res.checksum }];
    const created = await driver.createVolumeFromBackup(store, res.installPath, srB, newId, chain);
    expect(created.format).toBe('vhd');
    expect(parseXenVolumePath(created.path).srUuid).toBe(srB);
    expect(await sha256(fileOf(created.path))).toBe(await sha256(await snapshotFile(snap)));
    expect((await failure(driver.createVolumeFromBackup(store, res.installPath, srB, newId, chain))).name).toBe('VolumeExistsError');
  });

  it('refuses a backup that does not match its checksum, hashed as it is imported, and leaves no VDI behind', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const res = await driver.backupSnapshot(vol, store, target(volumeId, snap));
    const file = path.join(store, res.installPath);
    const bytes = await readFile(file);
    bytes.writeUInt8(bytes.readUInt8(1024) ^ 0xff, 1024);
    await writeFile(file, bytes);
    const before = (await sim.vdis()).length;
    const err = await failure(driver.createVolumeFromBackup(store, res.installPath, srB, randomUUID(), [{ snapshotId: snap, installPath: res.installPath, checksum: res.checksum }]));
    expect(err.name).toBe('BackupCorruptError');
    expect(err.message).toMatch(/does not match its checksum/);
    expect((await sim.vdis()).length).toBe(before);
  });

  it('leaves no VDI behind when the import fails', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    const res = await driver.backupSnapshot(vol, store, target(volumeId, snap));
    const before = (await sim.vdis()).length;
    await sim.setFaults({ failNextImports: 1 });
    const err = await failure(driver.createVolumeFromBackup(store, res.installPath, srB, randomUUID(), [{ snapshotId: snap, installPath: res.installPath, checksum: res.checksum }]));
    expect(err.message).toMatch(/VDI_IO_ERROR/);
    expect((await sim.vdis()).length).toBe(before);
  });

  it('migrates a volume to another SR with its snapshots', async () => {
    const { vol, volumeId, snap } = await snapshottedVolume();
    await driver.resizeVolume(vol, 2 * SIZE);
    await qemuIo(fileOf(vol), 'write -P 0xee 40M 1M');
    const snap2 = randomUUID();
    await driver.createSnapshot(vol, snap2);
    await qemuIo(fileOf(vol), 'write -P 0x77 0 1M');
    const liveBefore = await sha256(fileOf(vol));
    const moved = await driver.migrateVolume(vol, srB, volumeId);

    expect(parseXenVolumePath(moved.path).srUuid).toBe(srB);
    await expect(stat(fileOf(vol))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await sha256(fileOf(moved.path))).toBe(liveBefore);
    expect(await driver.hasSnapshot(moved.path, snap)).toBe(true);
    expect(await driver.hasSnapshot(moved.path, snap2)).toBe(true);
    expect((await sim.vdis()).filter((v) => v.other_config.volsnap_volume_id === volumeId && !v.is_a_snapshot)).toHaveLength(1);

    const res = await driver.backupSnapshot(moved.path, store, target(volumeId, snap));
    const file = path.join(store, res.installPath);
    expect(await readsPattern(file, 'vpc', 0xab, '0', '4M')).toBe(true);
    expect(await readsPattern(file, 'vpc', 0x11, '20M', '1M')).toBe(true);
    await driver.revertSnapshot(moved.path, snap2);
    expect(await readsPattern(fileOf(moved.path), 'raw', 0xcd, '0', '4M')).toBe(true);
    expect(await readsPattern(fileOf(moved.path), 'raw', 0xee, '40M', '1M')).toBe(true);
    expect(await driver.migrateVolume(moved.path, srB, volumeId)).toEqual(moved);
  });
});

describe('XenAPI errors and credentials', () => {
  it('reports HANDLE_INVALID and MESSAGE_METHOD_UNKNOWN clearly', async () => {
    const client = new XenApiClient({ url: sim.url, username: sim.username, password: sim.password });
    try {
      const bad = await failure(client.call('VDI.get_record', 'OpaqueRef:does-not-exist'));
      expect(bad).toMatchObject({ name: 'XenApiError', code: 'HANDLE_INVALID', params: ['VDI', 'OpaqueRef:does-not-exist'] });
      expect(bad.message).toMatch(/VDI\.get_record .* failed: HANDLE_INVALID \[VDI, OpaqueRef:does-not-exist\]/);
      const unknown = await failure(client.call('VDI.frobnicate'));
      expect(unknown).toMatchObject({ code: 'MESSAGE_METHOD_UNKNOWN', params: ['VDI.frobnicate'] });
      const uuid = await failure(client.call('VDI.get_by_uuid', '00000000-0000-0000-0000-000000000000'));
      expect(uuid).toMatchObject({ code: 'UUID_INVALID', params: ['VDI', '00000000-0000-0000-0000-000000000000'] });
      const session = await failure(client.call('session.get_uuid', 'OpaqueRef:someone-elses-session'));
      expect(session).toMatchObject({ code: 'SESSION_INVALID', params: ['<redacted>'] });
    } finally {
      await client.close();
    }
  });

  it('never puts the password, user name or a session id in errors or logs', async () => {
    const wrong = new XenServerStorageDriver({ url: sim.url, username: 'volsnap-operator', password: 'hunter2-Secret!', logger: capturingLogger() });
    const err = await failure(wrong.createVolume(srA, randomUUID(), SIZE));
    expect(err.message).toMatch(/SESSION_AUTHENTICATION_FAILED/);
    await wrong.close();
    const other = await failure(new XenServerStorageDriver({ url: 'http://user:pw@127.0.0.1:1', username: 'u', password: 'p' }).createVolume(srA, randomUUID(), SIZE));
    expect(other.message).toMatch(/must not contain credentials/);

    const secrets = ['hunter2-Secret!', 'volsnap-operator', sim.password, ...(await sim.sessionRefs())];
    expect(seen.length).toBeGreaterThan(10);
    for (const text of seen) for (const s of secrets) expect(text).not.toContain(s);
  });

  it('logs out on close', async () => {
    const d = new XenServerStorageDriver({ url: sim.url, username: sim.username, password: sim.password });
    await d.hasSnapshot(xenVolumePath(srA, randomUUID()), randomUUID());
    const before = await sim.stats();
    await d.close();
    const after = await sim.stats();
    expect(after.logouts - before.logouts).toBe(1);
    expect(after.activeSessions).toBe(before.activeSessions - 1);
  });
});
