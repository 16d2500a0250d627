/**
 * XenServer storage driver over XenAPI. A pool path is an SR uuid; a volume is a VDI, addressed as
 * `xen://<sr-uuid>/<vdi-uuid>`; a volsnap snapshot is a XenAPI snapshot VDI of it tagged with the snapshot id
 * (other_config `volsnap_snapshot_id`, also its name_label). Backups are the snapshot exported as VHD through the
 * host's /export_raw_vdi into the image store; restores import a VHD into a new VDI through /import_raw_vdi.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BackupProgress, BackupResult, BackupTarget, CreatedVolume, RestoreMember, StorageDriver } from './driver.js';
import {
  assertSize,
  BackupCorruptError,
  errCode,
  fsyncPath,
  notFound,
  removeBackupFiles,
  safeProgress,
  sha256File,
  sha256Hex,
  KeyedQueue,
  VolumeExistsError,
  withContext,
  type DriverLogger,
} from './common.js';
import { assertUuid, backupFilePath, backupInstallPath, InvalidPathError, resolveInstallPath, tempPathFor } from './paths.js';
import { NULL_REF, XenApiClient, XenApiError, type XenApiClientOptions, type XenApiHost } from './xenapi-client.js';

/** One host for every SR, or a lookup from SR uuid (storage_pools.path) to the pool master that serves it. */
export type XenServerDriverOptions = ({ hosts: (srUuid: string) => XenApiHost } | XenApiHost) & {
  logger?: DriverLogger;
  client?: Omit<XenApiClientOptions, 'logger'>;
};

/** The volume's VDI does not exist (any more) on its XenServer. */
export class VolumeNotFoundError extends Error {
  override name = 'VolumeNotFoundError';
}

/** other_config keys volsnap owns on VDIs. */
const VOLUME_KEY = 'volsnap_volume_id';
const SNAPSHOT_KEY = 'volsnap_snapshot_id';
const MIGRATING_KEY = 'volsnap_migrating_volume_id';
const UUID_SRC = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const VOLUME_PATH_RE = new RegExp(`^xen://(${UUID_SRC})/(${UUID_SRC})$`, 'i');

/** The fields of a VDI record the driver reads. */
interface VdiRecord {
  uuid: string;
  name_label: string;
  SR: string;
  virtual_size: number | string;
  is_a_snapshot: boolean;
  snapshot_time: string;
  snapshots: string[];
  other_config: Record<string, string>;
}

interface Vdi {
  ref: string;
  rec: VdiRecord;
}

const noopLogger: DriverLogger = { info() {}, warn() {}, error() {} };

/** Formats a XenServer volume path, `xen://<sr-uuid>/<vdi-uuid>`; the one place it is built. */
export function xenVolumePath(srUuid: string, vdiUuid: string): string {
  return `xen://${assertUuid(srUuid, 'SR uuid')}/${assertUuid(vdiUuid, 'VDI uuid')}`;
}

/** Parses `xen://<sr-uuid>/<vdi-uuid>` (uuids lower-cased); throws InvalidPathError for anything else. */
export function parseXenVolumePath(p: string): { srUuid: string; vdiUuid: string } {
  const m = VOLUME_PATH_RE.exec(p);
  if (!m) throw new InvalidPathError(`XenServer volume path must be xen://<sr-uuid>/<vdi-uuid>, got ${JSON.stringify(p)}`);
  return { srUuid: m[1]!.toLowerCase(), vdiUuid: m[2]!.toLowerCase() };
}

/** StorageDriver for XenServer / XCP-ng pools through XenAPI. */
export class XenServerStorageDriver implements StorageDriver {
  readonly hypervisor = 'XenServer' as const;
  private readonly hostFor: (srUuid: string) => XenApiHost;
  private readonly log: DriverLogger;
  private readonly clientOpts: XenApiClientOptions;
  /** One client (one session) per host and user, shared by every SR that host serves. */
  private readonly clients = new Map<string, XenApiClient>();
  /** Per-VDI queue: check-then-act sequences (snapshot idempotency, migrate) must not interleave in-process. */
  private readonly locks = new KeyedQueue();

  constructor(opts: XenServerDriverOptions) {
    const single = 'hosts' in opts ? undefined : { ...opts };
    this.hostFor = 'hosts' in opts ? opts.hosts : () => single!;
    this.log = opts.logger ?? noopLogger;
    this.clientOpts = { ...opts.client, logger: this.log };
  }

  async createVolume(poolPath: string, volumeId: string, sizeBytes: number): Promise<CreatedVolume> {
    assertSize(sizeBytes);
    const sr = assertUuid(poolPath, 'SR uuid');
    const id = assertUuid(volumeId, 'volumeId');
    const api = this.client(sr);
    const srRef = await this.srRef(api, sr);
    if ((await this.volumeVdis(api, id)).some((v) => v.rec.other_config[VOLUME_KEY] === id)) {
      throw new VolumeExistsError(`a VDI of volume ${id} already exists on ${api.origin}`);
    }
    const ref = await api.call<string>('VDI.create', newVdiRecord(srRef, id, sizeBytes, { [VOLUME_KEY]: id }));
    const created = xenVolumePath(sr, await api.call<string>('VDI.get_uuid', ref));
    this.log.info({ volumePath: created, sizeBytes }, 'volume created');
    return { path: created, format: 'vhd' };
  }

  async deleteVolume(volumePath: string): Promise<void> {
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const api = this.client(srUuid);
    await this.locked(vdiUuid, async () => {
      const vdi = await this.findVdi(api, vdiUuid);
      if (vdi) await this.destroyWithSnapshots(api, vdi.ref, volumePath);
    });
  }

  async resizeVolume(volumePath: string, sizeBytes: number): Promise<void> {
    assertSize(sizeBytes);
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const api = this.client(srUuid);
    await this.locked(vdiUuid, async () => {
      const vdi = await this.volume(api, vdiUuid, volumePath);
      const current = toInt(vdi.rec.virtual_size);
      if (current === sizeBytes) return;
      // XenServer's storage backends refuse to shrink a VDI; say so instead of passing on SR_BACKEND_FAILURE_79.
      if (sizeBytes < current) throw new RangeError(`XenServer cannot shrink volume ${volumePath} from ${current} to ${sizeBytes} bytes`);
      await api.call('VDI.resize', vdi.ref, sizeBytes);
    });
  }

  /**
   * Copies the volume into the target SR of the same pool and rebuilds its snapshots there (each snapshot's blocks
   * are copied into the new VDI, oldest first as a delta to the previous one, and snapshotted), then destroys the
   * source. A retry after a crash finishes or discards the earlier attempt's copy.
   */
  async migrateVolume(volumePath: string, targetPoolPath: string, volumeId: string): Promise<CreatedVolume> {
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const target = assertUuid(targetPoolPath, 'SR uuid');
    const id = assertUuid(volumeId, 'volumeId');
    if (target === srUuid) return { path: volumePath, format: 'vhd' };
    const api = this.client(srUuid);
    if (this.client(target) !== api) throw new Error(`cannot migrate ${volumePath} to SR ${target}: it belongs to another XenServer pool`);
    return this.locked(vdiUuid, async () => {
      const targetRef = await this.srRef(api, target);
      const onTarget = (await this.volumeVdis(api, id)).filter((v) => v.rec.SR === targetRef);
      const done = onTarget.find((v) => v.rec.other_config[VOLUME_KEY] === id);
      const src = await this.findVdi(api, vdiUuid);
      if (done) {
        // An earlier attempt finished the copy but died before destroying the source.
        if (src) await this.destroyWithSnapshots(api, src.ref, volumePath);
        return { path: xenVolumePath(target, done.rec.uuid), format: 'vhd' as const };
      }
      if (!src) throw new VolumeNotFoundError(`volume ${volumePath} not found: VDI ${vdiUuid} does not exist on ${api.origin}`);
      if (src.rec.other_config[VOLUME_KEY] !== id) throw new Error(`volume path ${volumePath} does not belong to volume ${id}`);
      for (const stale of onTarget.filter((v) => v.rec.other_config[MIGRATING_KEY] === id)) {
        await this.destroyWithSnapshots(api, stale.ref, `stale copy ${stale.rec.uuid}`);
      }
      const copy = await this.copyWithSnapshots(api, src, targetRef, id);
      await this.destroyWithSnapshots(api, src.ref, volumePath);
      const moved = xenVolumePath(target, copy);
      this.log.info({ from: volumePath, to: moved }, 'volume migrated');
      return { path: moved, format: 'vhd' as const };
    });
  }

  async createSnapshot(volumePath: string, snapshotId: string): Promise<{ sizeBytes: number }> {
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    const api = this.client(srUuid);
    return this.locked(vdiUuid, async () => {
      const vdi = await this.volume(api, vdiUuid, volumePath);
      const sizeBytes = toInt(vdi.rec.virtual_size);
      if ((await this.snapshotsOf(api, vdi.ref, tag)).length > 0) return { sizeBytes };
      const snap = await api.call<string>('VDI.snapshot', vdi.ref, {});
      try {
        await this.tagSnapshot(api, snap, tag);
      } catch (err) {
        // An untagged snapshot would be invisible to volsnap forever; do not leave it behind.
        await api.call('VDI.destroy', snap).catch((e: unknown) => this.log.warn({ err: e, volumePath }, 'could not destroy untagged snapshot'));
        throw err;
      }
      this.log.info({ volumePath, snapshotId: tag }, 'snapshot created');
      return { sizeBytes };
    });
  }

  async deleteSnapshot(volumePath: string, snapshotId: string): Promise<void> {
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    const api = this.client(srUuid);
    await this.locked(vdiUuid, async () => {
      // deleteVolume takes the snapshots along, so a missing volume means a missing snapshot.
      const vdi = await this.findVdi(api, vdiUuid);
      if (!vdi) return;
      for (const s of await this.snapshotsOf(api, vdi.ref, tag)) await this.destroyIfExists(api, s.ref);
    });
  }

  async hasSnapshot(volumePath: string, snapshotId: string): Promise<boolean> {
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    const api = this.client(srUuid);
    const vdi = await this.findVdi(api, vdiUuid);
    return vdi !== null && (await this.snapshotsOf(api, vdi.ref, tag)).length > 0;
  }

  /**
   * XenAPI's VM.revert works on VM snapshots only, so a VDI is reverted by copying the snapshot's blocks back into
   * it on the host (Async.VDI.copy with into_vdi): no bytes travel through this process and no staging file is
   * needed. The VDI is grown first if the snapshot is larger; a VDI grown after the snapshot keeps its size (XenServer
   * cannot shrink) and the bytes past the snapshot's size.
   */
  async revertSnapshot(volumePath: string, snapshotId: string): Promise<void> {
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    const api = this.client(srUuid);
    await this.locked(vdiUuid, async () => {
      const vdi = await this.findVdi(api, vdiUuid);
      const snap = vdi && (await this.snapshotsOf(api, vdi.ref, tag))[0];
      if (!vdi || !snap) throw notFound(tag, volumePath);
      const snapSize = toInt(snap.rec.virtual_size);
      if (snapSize > toInt(vdi.rec.virtual_size)) await api.call('VDI.resize', vdi.ref, snapSize);
      await api.callAsync('VDI.copy', [snap.ref, NULL_REF, NULL_REF, vdi.ref]);
      this.log.info({ volumePath, snapshotId: tag }, 'volume reverted to snapshot');
    });
  }

  async backupSnapshot(
    volumePath: string,
    imageStoreRoot: string,
    target: BackupTarget,
    opts: { onProgress?: (p: BackupProgress) => void; signal?: AbortSignal; token?: number; publish?: (commit: () => Promise<void>) => Promise<void> } = {},
  ): Promise<BackupResult> {
    const { signal } = opts;
    const { srUuid, vdiUuid } = parseXenVolumePath(volumePath);
    const volumeId = assertUuid(target.volumeId, 'volumeId');
    const tag = assertUuid(target.snapshotId, 'snapshotId');
    const installPath = backupInstallPath(target, 'vhd');
    const final = backupFilePath(imageStoreRoot, target, 'vhd');
    const dir = path.dirname(final);
    const ctx = `backup of snapshot ${tag} of ${volumePath} to ${final}`;
    const api = this.client(srUuid);

    const vdi = await this.findVdi(api, vdiUuid);
    if (!vdi) throw notFound(tag, volumePath);
    if (vdi.rec.other_config[VOLUME_KEY] !== volumeId) throw new Error(`volume path ${volumePath} does not belong to volume ${volumeId}`);
    const snap = (await this.snapshotsOf(api, vdi.ref, tag))[0];
    if (!snap) throw notFound(tag, volumePath);
    const virtualSize = toInt(snap.rec.virtual_size);
    const report = safeProgress(opts.onProgress, this.log);

    try {
      await mkdir(dir, { recursive: true });
    } catch (err) {
      throw withContext(err, `${ctx} failed: image store ${imageStoreRoot} is unusable`);
    }
    const tmp = tempPathFor(final, opts.token);
    this.log.info({ volumePath, snapshotId: tag, tmp }, 'backup started');
    try {
      let total = virtualSize;
      let hash = createHash('sha256');
      // Called again from scratch if the session is lost mid-stream: the 'w' flag truncates the partial file.
      const sink = async (body: NodeJS.ReadableStream, contentLength: number | undefined) => {
        total = contentLength ?? virtualSize;
        hash = createHash('sha256');
        await pipeline(body, meter(hash, total, report), createWriteStream(tmp, { flags: 'w' }), { signal });
      };
      await api.download('/export_raw_vdi', { vdi: snap.ref, format: 'vhd' }, sink, { label: `export of VDI ${snap.rec.uuid}`, signal });
      // xapi streams without a length, so a cut connection looks like a clean end: the VHD footer proves completeness.
      await readVhdFooter(tmp, virtualSize);
      await fsyncPath(tmp);
      const { size } = await stat(tmp);
      signal?.throwIfAborted();
      // Rename is the commit point; an older file under the final name (a retried attempt) is replaced, but only
      // while this attempt owns the backup (opts.publish).
      await (opts.publish ?? ((commit) => commit()))(async () => {
        await rename(tmp, final);
        await fsyncPath(dir);
      });
      report({ bytesDone: total, bytesTotal: total });
      const checksum = `sha256:${hash.digest('hex')}`;
      this.log.info({ volumePath, snapshotId: tag, installPath, sizeBytes: size, checksum }, 'backup finished');
      return { installPath, sizeBytes: size, checksum };
    } catch (err) {
      await rm(tmp, { force: true }).catch((rmErr: unknown) => this.log.warn({ err: rmErr, tmp }, 'could not remove temp file'));
      this.log.error({ err, volumePath, snapshotId: tag }, 'backup failed');
      // The snapshot may have been deleted while it was being exported; retrying would not help then.
      if (!signal?.aborted && !(await this.hasSnapshot(volumePath, tag).catch(() => true))) throw notFound(tag, volumePath);
      throw withContext(err, `${ctx} failed`);
    }
  }

  async verifyBackup(imageStoreRoot: string, installPath: string, checksum: string): Promise<boolean> {
    const file = resolveInstallPath(imageStoreRoot, installPath);
    const expected = sha256Hex(checksum);
    try {
      if ((await sha256File(file)) !== expected) return false;
      await readVhdFooter(file);
      return true;
    } catch (err) {
      if (errCode(err) === 'ENOENT') return false;
      if (err instanceof InvalidVhdError) {
        this.log.warn({ file, err }, 'backup is not a valid VHD');
        return false;
      }
      throw err;
    }
  }

  /**
   * Imports the backup (always a full one here) into a new VDI, hashing the file's bytes as they are sent (one
   * read: no pass before the import); a file that does not match its recorded sha256 refuses the restore with
   * BackupCorruptError and the VDI is destroyed before it was ever tagged as the volume.
   */
  async createVolumeFromBackup(imageStoreRoot: string, installPath: string, poolPath: string, volumeId: string, chain: RestoreMember[]): Promise<CreatedVolume> {
    const src = resolveInstallPath(imageStoreRoot, installPath);
    if (!src.endsWith('.vhd')) throw new Error(`XenServer can only restore VHD backups, got ${installPath}`);
    const member = chain[0];
    if (chain.length !== 1 || member?.installPath !== installPath) throw new Error(`XenServer backups are full: the chain to restore must be ${installPath} alone`);
    const expected = sha256Hex(member.checksum);
    const sr = assertUuid(poolPath, 'SR uuid');
    const id = assertUuid(volumeId, 'volumeId');
    const { virtualSize } = await readVhdFooter(src);
    const { size } = await stat(src);
    const api = this.client(sr);
    const srRef = await this.srRef(api, sr);
    if ((await this.volumeVdis(api, id)).some((v) => v.rec.other_config[VOLUME_KEY] === id)) {
      throw new VolumeExistsError(`a VDI of volume ${id} already exists on ${api.origin}`);
    }
    // Tagged as the volume only once the import succeeded, so a half-written VDI is never taken for it.
    const ref = await api.call<string>('VDI.create', newVdiRecord(srRef, id, virtualSize, {}));
    try {
      let hash = createHash('sha256');
      const through = () => {
        hash = createHash('sha256');
        const h = hash;
        return new Transform({
          transform(chunk: Buffer, _enc, cb) {
            h.update(chunk);
            cb(null, chunk);
          },
        });
      };
      await api.upload('/import_raw_vdi', { vdi: ref, format: 'vhd' }, src, size, { label: `import of ${installPath}`, through });
      const digest = hash.digest('hex');
      if (digest !== expected) {
        throw new BackupCorruptError(
          `the backup of snapshot ${member.snapshotId} does not match its checksum (read sha256:${digest}, recorded ${member.checksum}); nothing was restored`,
          member.snapshotId,
          `sha256 mismatch: read sha256:${digest}, recorded ${member.checksum}`,
        );
      }
      await api.call('VDI.add_to_other_config', ref, VOLUME_KEY, id);
    } catch (err) {
      await this.destroyIfExists(api, ref).catch((e: unknown) => this.log.warn({ err: e, volumeId: id }, 'could not destroy partly imported VDI'));
      throw err instanceof BackupCorruptError ? err : withContext(err, `creating volume ${id} from backup ${installPath} failed`);
    }
    const created = xenVolumePath(sr, await api.call<string>('VDI.get_uuid', ref));
    this.log.info({ installPath, volumePath: created }, 'volume created from backup');
    return { path: created, format: 'vhd' };
  }

  async deleteBackupFiles(imageStoreRoot: string, target: BackupTarget): Promise<string[]> {
    return removeBackupFiles(backupFilePath(imageStoreRoot, target, 'vhd'));
  }

  /** Logs out of every host. */
  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.clients.clear();
  }

  private client(srUuid: string): XenApiClient {
    const sr = assertUuid(srUuid, 'SR uuid');
    let host: XenApiHost;
    try {
      host = this.hostFor(sr);
    } catch (err) {
      throw withContext(err, `no XenServer host is configured for SR ${sr}`);
    }
    const key = `${host.url}\n${host.username}`;
    let c = this.clients.get(key);
    if (!c) {
      c = new XenApiClient(host, this.clientOpts);
      this.clients.set(key, c);
    }
    return c;
  }

  private async srRef(api: XenApiClient, sr: string): Promise<string> {
    try {
      return await api.call<string>('SR.get_by_uuid', sr);
    } catch (err) {
      if (isCode(err, 'UUID_INVALID')) throw withContext(err, `SR ${sr} does not exist on ${api.origin}`);
      throw err;
    }
  }

  /** The VDI and its record, or null if XenAPI does not know the uuid (or it vanished between the two calls). */
  private async findVdi(api: XenApiClient, vdiUuid: string): Promise<Vdi | null> {
    try {
      const ref = await api.call<string>('VDI.get_by_uuid', vdiUuid);
      return { ref, rec: await api.call<VdiRecord>('VDI.get_record', ref) };
    } catch (err) {
      if (isCode(err, 'UUID_INVALID') || isCode(err, 'HANDLE_INVALID')) return null;
      throw err;
    }
  }

  private async volume(api: XenApiClient, vdiUuid: string, volumePath: string): Promise<Vdi> {
    const vdi = await this.findVdi(api, vdiUuid);
    if (!vdi) throw new VolumeNotFoundError(`volume ${volumePath} not found: VDI ${vdiUuid} does not exist on ${api.origin}`);
    return vdi;
  }

  /** Snapshot VDIs of `baseRef` tagged with `tag`, read from the base's `snapshots` field. */
  private async snapshotsOf(api: XenApiClient, baseRef: string, tag: string): Promise<Vdi[]> {
    const out: Vdi[] = [];
    for (const ref of await api.call<string[]>('VDI.get_snapshots', baseRef)) {
      try {
        const rec = await api.call<VdiRecord>('VDI.get_record', ref);
        if (rec.other_config?.[SNAPSHOT_KEY] === tag) out.push({ ref, rec });
      } catch (err) {
        if (!isCode(err, 'HANDLE_INVALID')) throw err; // destroyed meanwhile
      }
    }
    return out;
  }

  /** Non-snapshot VDIs named after the volume (finished, migrating or half-imported ones). */
  private async volumeVdis(api: XenApiClient, volumeId: string): Promise<Vdi[]> {
    const recs = await api.call<Record<string, VdiRecord>>('VDI.get_all_records_where', `field "name_label" = "${volumeId}" and field "is_a_snapshot" = "false"`);
    return Object.entries(recs).map(([ref, rec]) => ({ ref, rec: { ...rec, other_config: rec.other_config ?? {} } }));
  }

  private async tagSnapshot(api: XenApiClient, snap: string, tag: string): Promise<void> {
    await api.call('VDI.set_name_label', snap, tag);
    // Hosts copy other_config into snapshots; clear a key inherited from the source before setting it.
    await api.call('VDI.remove_from_other_config', snap, SNAPSHOT_KEY);
    await api.call('VDI.add_to_other_config', snap, SNAPSHOT_KEY, tag);
  }

  /** Builds the volume in SR `targetRef`: snapshots first (oldest/smallest first, each a delta to the previous), then the head. */
  private async copyWithSnapshots(api: XenApiClient, src: Vdi, targetRef: string, id: string): Promise<string> {
    const snaps: Vdi[] = [];
    for (const ref of src.rec.snapshots) {
      try {
        snaps.push({ ref, rec: await api.call<VdiRecord>('VDI.get_record', ref) });
      } catch (err) {
        if (!isCode(err, 'HANDLE_INVALID')) throw err;
      }
    }
    // XenServer only grows VDIs, so ordering by size keeps the copy's size monotonic; time breaks ties.
    snaps.sort((a, b) => toInt(a.rec.virtual_size) - toInt(b.rec.virtual_size) || a.rec.snapshot_time.localeCompare(b.rec.snapshot_time));
    let size = toInt(snaps[0]?.rec.virtual_size ?? src.rec.virtual_size);
    const ref = await api.call<string>('VDI.create', newVdiRecord(targetRef, id, size, { [MIGRATING_KEY]: id }));
    try {
      let base = NULL_REF;
      for (const s of [...snaps, src]) {
        const sSize = toInt(s.rec.virtual_size);
        if (sSize > size) await api.call('VDI.resize', ref, (size = sSize));
        await api.callAsync('VDI.copy', [s.ref, NULL_REF, base, ref]);
        base = s.ref;
        if (s === src) break;
        const copy = await api.call<string>('VDI.snapshot', ref, {});
        await api.call('VDI.set_name_label', copy, s.rec.name_label);
        await api.call('VDI.remove_from_other_config', copy, MIGRATING_KEY);
        const tag = s.rec.other_config?.[SNAPSHOT_KEY];
        if (tag) await this.tagSnapshot(api, copy, tag);
      }
      // Volume key first, migrating key second: a crash in between leaves a copy that is recognised as finished.
      await api.call('VDI.add_to_other_config', ref, VOLUME_KEY, id);
      await api.call('VDI.remove_from_other_config', ref, MIGRATING_KEY);
      return await api.call<string>('VDI.get_uuid', ref);
    } catch (err) {
      await this.destroyWithSnapshots(api, ref, `partial copy of volume ${id}`).catch((e: unknown) =>
        this.log.warn({ err: e, volumeId: id }, 'could not clean up a partial migration copy'),
      );
      throw err;
    }
  }

  /** Destroys a VDI and then its snapshots (which XenServer would otherwise keep as orphans). */
  private async destroyWithSnapshots(api: XenApiClient, ref: string, what: string): Promise<void> {
    let snaps: string[];
    try {
      snaps = await api.call<string[]>('VDI.get_snapshots', ref);
    } catch (err) {
      if (isCode(err, 'HANDLE_INVALID')) return;
      throw err;
    }
    try {
      await this.destroyIfExists(api, ref);
    } catch (err) {
      if (isCode(err, 'VDI_IN_USE')) throw withContext(err, `${what} is in use (attached to a running VM?)`);
      throw err;
    }
    for (const s of snaps) await this.destroyIfExists(api, s);
  }

  private async destroyIfExists(api: XenApiClient, ref: string): Promise<void> {
    try {
      await api.call('VDI.destroy', ref);
    } catch (err) {
      if (!isCode(err, 'HANDLE_INVALID')) throw err;
    }
  }

  private locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(key, fn);
  }
}

/** Creates the XenServer storage driver. */
export function createXenServerStorageDriver(opts: XenServerDriverOptions): XenServerStorageDriver {
  return new XenServerStorageDriver(opts);
}

function newVdiRecord(srRef: string, volumeId: string, sizeBytes: number, otherConfig: Record<string, string>): Record<string, unknown> {
  return {
    name_label: volumeId,
    name_description: 'volsnap volume',
    SR: srRef,
    virtual_size: sizeBytes,
    type: 'user',
    sharable: false,
    read_only: false,
    other_config: otherConfig,
    xenstore_data: {},
    sm_config: {},
    tags: [],
  };
}

/** Hashes and counts the export as it streams; 100% is held back until the backup is committed. */
function meter(hash: ReturnType<typeof createHash>, total: number, report: (p: BackupProgress) => void): Transform {
  const step = Math.max(1, Math.floor(total / 100));
  let done = 0;
  let last = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      done += chunk.length;
      if (done - last >= step) {
        last = done;
        report({ bytesDone: Math.min(done, total - 1), bytesTotal: total });
      }
      cb(null, chunk);
    },
  });
}

/** A file is not a complete, well-formed standalone VHD. */
class InvalidVhdError extends Error {
  override name = 'InvalidVhdError';
}

/**
 * Checks the VHD footer (the last 512 bytes): cookie, checksum, fixed or dynamic type and, for a dynamic VHD, that
 * the copy at the start matches. Returns the virtual size, which must equal `expectedSize` when given.
 */
async function readVhdFooter(file: string, expectedSize?: number): Promise<{ virtualSize: number }> {
  const fh = await open(file, 'r');
  try {
    const { size } = await fh.stat();
    if (size < 512) throw new InvalidVhdError(`${file} is too short to be a VHD (${size} bytes)`);
    const footer = Buffer.alloc(512);
    await fh.read(footer, 0, 512, size - 512);
    if (footer.toString('latin1', 0, 8) !== 'conectix') throw new InvalidVhdError(`${file} has no VHD footer (incomplete export?)`);
    let sum = 0;
    for (let i = 0; i < 512; i++) if (i < 64 || i > 67) sum += footer[i]!;
    if ((~sum >>> 0) !== footer.readUInt32BE(64)) throw new InvalidVhdError(`${file} has a corrupt VHD footer checksum`);
    const diskType = footer.readUInt32BE(60);
    if (diskType !== 2 && diskType !== 3) throw new InvalidVhdError(`${file} is a VHD of type ${diskType}, not a fixed or dynamic disk`);
    if (diskType === 3) {
      const head = Buffer.alloc(512);
      await fh.read(head, 0, 512, 0);
      if (!head.equals(footer)) throw new InvalidVhdError(`${file}: the VHD footer copy at the start does not match the footer`);
    }
    const virtualSize = Number(footer.readBigUInt64BE(48));
    if (expectedSize !== undefined && virtualSize !== expectedSize) {
      throw new InvalidVhdError(`${file} has virtual size ${virtualSize}, expected ${expectedSize}`);
    }
    return { virtualSize };
  } finally {
    await fh.close();
  }
}

function toInt(v: number | string): number {
  const n = typeof v === 'string' ? Number(v) : v;
  if (!Number.isSafeInteger(n)) throw new Error(`XenAPI returned a non-integer size ${JSON.stringify(v)}`);
  return n;
}

function isCode(err: unknown, code: string): boolean {
  return err instanceof XenApiError && err.code === code;
}
