/**
 * KVM storage driver: volumes are qcow2 files on primary storage, snapshots are qcow2 internal snapshots, and
 * backups are standalone qcow2 files in the image store, all handled with qemu-img.
 */
import { constants as fsc } from 'node:fs';
import { copyFile, link, mkdir, mkdtemp, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { BackupParent, BackupProgress, BackupResult, BackupTarget, CreatedVolume, ImageLockRunner, RestoreMember, StorageDriver } from './driver.js';
import {
  assertSize,
  BackupCorruptError,
  errCode,
  fsyncPath,
  ImageBusyError,
  isWriteLockClash,
  notFound,
  removeBackupFiles,
  safeProgress,
  settleAll,
  sha256CopyFile,
  sha256File,
  sha256Hex,
  KeyedQueue,
  VolumeExistsError,
  withContext,
  type DriverLogger,
} from './common.js';
import { CommandError, run } from './exec.js';
import { diffSnapshots, type SnapshotDiff } from './qcow2-diff.js';

export { ImageBusyError, SnapshotNotFoundError, VolumeExistsError, type DriverLogger } from './common.js';
import {
  assertUuid,
  backupFilePath,
  backupInstallPath,
  parseVolumePath,
  resolveInstallPath,
  staleTempFile,
  tempPathFor,
  volumePath as volumeFilePath,
} from './paths.js';

/** Options of the KVM driver. */
export interface KvmDriverOptions {
  /** qemu-img binary; default `qemu-img` from PATH. */
  qemuImg?: string;
  /** qemu-nbd binary (exports a snapshot for an incremental backup); default `qemu-nbd` from PATH. */
  qemuNbd?: string;
  /**
   * How a delta is written: `ranges` copies the clusters the snapshots' metadata says changed, `rebase` compares
   * content; `auto` (default) takes the cheaper, and rebase whenever the metadata cannot say (docs/design.md §14).
   */
  deltaMethod?: 'auto' | 'ranges' | 'rebase';
  logger?: DriverLogger;
  /** Caps backup copy speed (qemu-img convert -r) so background backups do not starve primary storage I/O. */
  backupRateLimitBytesPerSec?: number;
  /**
   * How long a qemu-img mutation keeps retrying while another process (a VM, qemu-io, a qemu-img in another
   * volsnap process) holds the image's write lock, before it fails with ImageBusyError; default 30 s.
   */
  lockRetryMs?: number;
  /**
   * Finds the running VM whose QEMU holds an image (docs/design.md §15): a snapshot of its table is then taken
   * or deleted by that QEMU, as qemu-img cannot while QEMU has the write lock. Without it: qemu-img only.
   */
  liveImages?: LiveImageResolver;
}

/** An image a running QEMU holds, and the snapshot-table changes that QEMU can make to it. */
export interface LiveImage {
  /** Which VM's QEMU, for the log. */
  vmId: string;
  /** false: the domain went away meanwhile (qemu-img can act now). */
  createSnapshot(tag: string): Promise<boolean>;
  deleteSnapshot(tag: string): Promise<boolean>;
}

export type LiveImageResolver = (volumePath: string) => Promise<LiveImage | null>;

interface ImageInfo {
  virtualSize: number;
  snapshotNames: string[];
}

const noopLogger: DriverLogger = { info() {}, warn() {}, error() {} };

/** StorageDriver for KVM over qcow2 files and qemu-img. */
export class KvmStorageDriver implements StorageDriver {
  readonly hypervisor = 'KVM' as const;
  readonly incrementalBackups = true;
  private readonly qemuImg: string;
  private readonly qemuNbd: string;
  private readonly deltaMethod: 'auto' | 'ranges' | 'rebase';
  private readonly log: DriverLogger;
  private readonly rateLimit: number | undefined;
  private readonly lockRetryMs: number;
  private readonly liveImages: LiveImageResolver | undefined;
  /** Per-image queue: qemu-img mutations take the image's write lock, so in-process ones must not overlap. */
  private readonly locks = new KeyedQueue();

  constructor(opts: KvmDriverOptions = {}) {
    this.qemuImg = opts.qemuImg ?? 'qemu-img';
    this.qemuNbd = opts.qemuNbd ?? 'qemu-nbd';
    this.deltaMethod = opts.deltaMethod ?? 'auto';
    this.log = opts.logger ?? noopLogger;
    this.rateLimit = opts.backupRateLimitBytesPerSec;
    this.lockRetryMs = opts.lockRetryMs ?? 30_000;
    this.liveImages = opts.liveImages;
  }

  async createVolume(poolPath: string, volumeId: string, sizeBytes: number): Promise<CreatedVolume> {
    assertSize(sizeBytes);
    const final = volumeFilePath(poolPath, volumeId);
    await mkdir(path.dirname(final), { recursive: true });
    // qemu-img create silently truncates an existing file, so create under a temp name and link() into place.
    const tmp = tempPathFor(final);
    try {
      await this.qemu(['create', '-q', '-f', 'qcow2', tmp, String(sizeBytes)]);
      await fsyncPath(tmp);
      await publishNoClobber(tmp, final);
    } finally {
      await rm(tmp, { force: true });
    }
    this.log.info({ volumePath: final, sizeBytes }, 'volume created');
    return { path: final, format: 'qcow2' };
  }

  async deleteVolume(volumePath: string): Promise<void> {
    parseVolumePath(volumePath);
    await this.locked(volumePath, () => rm(volumePath, { force: true }));
  }

  async resizeVolume(volumePath: string, sizeBytes: number): Promise<void> {
    parseVolumePath(volumePath);
    assertSize(sizeBytes);
    await this.locked(volumePath, async () => {
      const { virtualSize } = await this.info(volumePath);
      if (virtualSize === sizeBytes) return;
      const shrink = sizeBytes < virtualSize ? ['--shrink'] : [];
      await this.mutate(volumePath, ['resize', '-q', '-f', 'qcow2', ...shrink, volumePath, String(sizeBytes)]);
    });
  }

  /**
   * Copies the image (byte for byte, internal snapshots included) to the target pool, then publishes the copy
   * and removes the source. The long copy runs without any lock: the caller keeps other writers away (the
   * volume is Migrating) and a change to the source during the copy is detected and copied again. Only the
   * short publish-and-remove step runs under `opts.lock` (the cross-process image lock) and the in-process queue.
   */
  async migrateVolume(volumePath: string, targetPoolPath: string, volumeId: string, opts: { lock?: ImageLockRunner } = {}): Promise<CreatedVolume> {
    const src = parseVolumePath(volumePath);
    if (src.volumeId !== assertUuid(volumeId, 'volumeId')) {
      throw new Error(`volume path ${volumePath} does not belong to volume ${volumeId}`);
    }
    const dest = volumeFilePath(targetPoolPath, volumeId);
    if (dest === volumePath) return { path: dest, format: 'qcow2' };
    const lock: ImageLockRunner = opts.lock ?? ((fn) => fn());
    await mkdir(path.dirname(dest), { recursive: true });
    for (let attempt = 1; ; attempt++) {
      // A retry after a crash between publishing the copy and deleting the source finds only the destination.
      if (!(await exists(volumePath)) && (await exists(dest))) break;
      const before = await fileVersion(volumePath);
      const tmp = tempPathFor(dest);
      try {
        // A byte copy keeps the internal snapshots (qemu-img convert would flatten them away).
        await copyFile(volumePath, tmp, fsc.COPYFILE_FICLONE);
        await fsyncPath(tmp);
        const published = await lock(() =>
          this.locked(volumePath, async () => {
            // Someone changed the source while it was copied (a snapshot, a guest write): copy again.
            if ((await fileVersion(volumePath)) !== before) return false;
            // The source is authoritative: a destination left by an interrupted attempt is replaced.
            await rename(tmp, dest);
            await fsyncPath(path.dirname(dest));
            await rm(volumePath, { force: true });
            await fsyncPath(path.dirname(volumePath));
            return true;
          }),
        );
        if (published) break;
      } finally {
        await rm(tmp, { force: true });
      }
      if (attempt >= 3) throw new ImageBusyError(`volume image ${path.basename(volumePath)} kept changing while it was copied; try again later`, path.basename(volumePath));
      this.log.warn({ volumePath, attempt }, 'volume image changed while it was copied; copying again');
    }
    this.log.info({ from: volumePath, to: dest }, 'volume migrated');
    return { path: dest, format: 'qcow2' };
  }

  async createSnapshot(volumePath: string, snapshotId: string, fresh?: { volumeSizeBytes: number }): Promise<{ sizeBytes: number }> {
    parseVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    return this.locked(volumePath, async () => {
      const create = ['snapshot', '-q', '--image-opts', '-c', tag, qcow2Opts(volumePath)];
      const live = (img: LiveImage) => img.createSnapshot(tag);
      if (fresh) {
        // One qemu-img process instead of two on the time-to-created path (bench/README.md, P1).
        await this.mutate(volumePath, create, live);
        return { sizeBytes: fresh.volumeSizeBytes };
      }
      const info = await this.info(volumePath);
      // qemu-img happily creates a second snapshot with the same tag, so idempotency needs this check.
      if (!info.snapshotNames.includes(tag)) await this.mutate(volumePath, create, live);
      return { sizeBytes: info.virtualSize };
    });
  }

  async deleteSnapshot(volumePath: string, snapshotId: string): Promise<void> {
    parseVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    await this.locked(volumePath, async () => {
      // `-d` removes one snapshot per call; duplicates (e.g. made by hand) must all go.
      const count = (await this.info(volumePath)).snapshotNames.filter((n) => n === tag).length;
      for (let i = 0; i < count; i++) {
        await this.mutate(volumePath, ['snapshot', '-q', '--image-opts', '-d', tag, qcow2Opts(volumePath)], (img) => img.deleteSnapshot(tag));
      }
    });
  }

  async hasSnapshot(volumePath: string, snapshotId: string): Promise<boolean> {
    parseVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    return (await this.info(volumePath)).snapshotNames.includes(tag);
  }

  async revertSnapshot(volumePath: string, snapshotId: string): Promise<void> {
    parseVolumePath(volumePath);
    const tag = assertUuid(snapshotId, 'snapshotId');
    await this.locked(volumePath, async () => {
      if (!(await this.info(volumePath)).snapshotNames.includes(tag)) throw notFound(tag, volumePath);
      await this.mutate(volumePath, ['snapshot', '-q', '--image-opts', '-a', tag, qcow2Opts(volumePath)]);
    });
  }

  async backupSnapshot(
    volumePath: string,
    imageStoreRoot: string,
    target: BackupTarget,
    opts: { onProgress?: (p: BackupProgress) => void; signal?: AbortSignal; parent?: BackupParent; lock?: ImageLockRunner; token?: number; publish?: (commit: () => Promise<void>) => Promise<void> } = {},
  ): Promise<BackupResult> {
    const { signal, onProgress, parent } = opts;
    const vol = parseVolumePath(volumePath);
    if (vol.volumeId !== assertUuid(target.volumeId, 'volumeId')) {
      throw new Error(`volume path ${volumePath} does not belong to volume ${target.volumeId}`);
    }
    const tag = assertUuid(target.snapshotId, 'snapshotId');
    const installPath = backupInstallPath(target);
    const final = backupFilePath(imageStoreRoot, target);
    const dir = path.dirname(final);
    const ctx = `backup of snapshot ${tag} of ${volumePath} to ${final}`;

    // What opens the image runs under its locks, in the order every writer takes them: opening reads the header
    // and the snapshot table, which a snapshot created or deleted meanwhile rewrites (an unlocked open can read it
    // in flux and report an existing snapshot as not found). Once open, a reader reads only the snapshot's own
    // tables and clusters, which its references keep in place, so the copy itself runs unlocked.
    const lock: ImageLockRunner = opts.lock ?? ((fn) => fn());
    const underImageLock = <T>(fn: () => Promise<T>): Promise<T> => lock(() => this.locked(volumePath, fn));
    const info = await underImageLock(() => this.info(volumePath, signal));
    if (!info.snapshotNames.includes(tag)) throw notFound(tag, volumePath);
    const report = safeProgress(onProgress, this.log);

    try {
      await mkdir(dir, { recursive: true });
    } catch (err) {
      throw withContext(err, `${ctx} failed: image store ${imageStoreRoot} is unusable`);
    }
    // A killed earlier attempt (worker crash) can leave its temp file behind: this attempt removes those of older
    // tokens only, never the file of a newer attempt that took over (fenced attempts, db/snapshots.ts).
    for (const name of await readdir(dir)) {
      if (staleTempFile(path.basename(final), name, opts.token)) await rm(path.join(dir, name), { force: true });
    }
    const tmp = tempPathFor(final, opts.token);
    const parentFile = parent ? resolveInstallPath(imageStoreRoot, parent.installPath) : undefined;
    if (parentFile && path.dirname(parentFile) !== dir) throw new Error(`${ctx} failed: parent backup ${parent!.installPath} is not a backup of the same volume`);
    this.log.info({ volumePath, snapshotId: tag, tmp, parent: parent?.snapshotId }, parent ? 'incremental backup started' : 'backup started');
    try {
      if (parentFile) {
        // The parent's snapshot still on primary: its metadata says which clusters changed (under the image's
        // lock: a snapshot created or deleted meanwhile would rewrite the tables being read).
        const diff = this.deltaMethod !== 'rebase' && info.snapshotNames.includes(parent!.snapshotId)
          ? await underImageLock(() => diffSnapshots(volumePath, parent!.snapshotId, tag)).catch((err: unknown) => {
              this.log.warn({ err, volumePath }, 'reading the snapshots\' metadata failed; comparing content instead');
              return null;
            })
          : null;
        await this.writeDelta(volumePath, tag, info.virtualSize, parentFile, tmp, report, underImageLock, signal, diff);
      } else {
      const rate = this.rateLimit ? ['-r', String(this.rateLimit)] : [];
      // -U: read without taking qemu's image lock, so snapshots and writes on the live image can proceed
      // meanwhile; the snapshot's clusters are copy-on-write protected, so its point-in-time bytes stay stable.
      const args = ['convert', '-U', '-p', ...rate, '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${tag}`, volumePath, tmp];
      // Progress from the bytes written against what the copy needs (`qemu-img measure`): qemu-img's own -p
      // counts unallocated areas at once and reads 100 % while a quarter of the data is still to come.
      const required = await underImageLock(() => this.requiredBytes(volumePath, tag, signal));
      const progress = required ? writtenProgress(tmp, required, info.virtualSize, report) : undefined;
      try {
        // qemu-img convert opens its sources (header, snapshot table, the snapshot's L1 table) before it creates
        // its output, so the output's appearance is the end of the part that needs the lock.
        let copy!: Promise<unknown>;
        await underImageLock(async () => {
          copy = this.qemu(args, { signal, onStdout: progress?.sample ?? progressParser(info.virtualSize, report) });
          await untilExistsOrSettled(tmp, copy);
        });
        await copy;
      } catch (err) {
        // The snapshot may have been deleted between the check above and the copy.
        if (err instanceof CommandError && /can't find snapshot/i.test(err.stderr)) throw notFound(tag, volumePath);
        throw err;
      } finally {
        progress?.stop();
      }
      }
      // Hash while the copy is flushed: both read the just-written file, and the rename below waits for both.
      const [digest] = await settleAll([sha256File(tmp, signal), fsyncPath(tmp).then(() => fsyncPath(dir))]);
      const checksum = `sha256:${digest}`;
      const { size } = await stat(tmp);
      signal?.throwIfAborted();
      // Rename is the commit point; an older file under the final name (a retried attempt) is replaced, but only
      // while this attempt owns the backup (opts.publish).
      await (opts.publish ?? ((commit) => commit()))(async () => {
        await rename(tmp, final);
        await fsyncPath(dir);
      });
      report({ bytesDone: info.virtualSize, bytesTotal: info.virtualSize });
      this.log.info({ volumePath, snapshotId: tag, installPath, sizeBytes: size, checksum, parent: parent?.snapshotId }, 'backup finished');
      return { installPath, sizeBytes: size, checksum, parentSnapshotId: parent ? assertUuid(parent.snapshotId, 'parent snapshotId') : null };
    } catch (err) {
      await rm(tmp, { force: true }).catch((rmErr: unknown) => this.log.warn({ err: rmErr, tmp }, 'could not remove temp file'));
      this.log.error({ err, volumePath, snapshotId: tag }, 'backup failed');
      throw withContext(err, `${ctx} failed`);
    }
  }

  /**
   * Writes into `tmp` a qcow2 delta of the snapshot on `parentFile` (docs/design.md §14): the snapshot is exported
   * read-only by qemu-nbd (without the image lock, like the full copy's -U), an empty overlay is created on that
   * export, and `qemu-img rebase` in safe mode switches its backing file to the parent backup, writing exactly the
   * clusters whose content differs. The parent is only read (rebase opens backing files read-only); its path is
   * recorded relative to the delta's directory, so the image store can be moved or mounted elsewhere.
   */
  private async writeDelta(
    volumePath: string,
    tag: string,
    virtualSize: number,
    parentFile: string,
    tmp: string,
    report: (p: BackupProgress) => void,
    underImageLock: ImageLockRunner,
    signal?: AbortSignal,
    diff?: SnapshotDiff | null,
  ): Promise<void> {
    const byRanges = diff && diff.diskSize === virtualSize && (this.deltaMethod === 'ranges' || copyByRangesIsCheaper(diff, virtualSize)) ? diff : null;
    this.log.info(
      { volumePath, snapshotId: tag, method: byRanges ? 'changed clusters' : 'rebase', ranges: diff?.ranges.length, changedBytes: diff?.changedBytes },
      'writing a delta',
    );
    // A short socket path (sun_path is 108 bytes), private to this backup.
    const sockDir = await mkdtemp(path.join(tmpdir(), 'volsnap-nbd-'));
    const sock = path.join(sockDir, 's');
    const stop = new AbortController();
    const onAbort = (): void => stop.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let exited: { err: unknown } | undefined;
    let server: Promise<void> = Promise.resolve();
    try {
      // qemu-nbd listens before it opens the image and greets a client only once it has: the image's locks are
      // held until the greeting, so the export's open never reads a snapshot table being rewritten.
      await underImageLock(async () => {
        server = run(
          this.qemuNbd,
          ['-r', '-t', '-e', '4', '-k', sock, '-l', `snapshot.name=${tag}`, '--image-opts', `driver=qcow2,force-share=on,file.driver=file,file.filename=${volumePath.replaceAll(',', ',,')}`],
          { signal: stop.signal },
        ).then(
          () => void (exited = { err: new Error('qemu-nbd exited before the delta was written') }),
          (err: unknown) => void (exited = { err }),
        );
        await nbdGreeting(sock, () => exited?.err, signal);
      });
      const backing = path.relative(path.dirname(tmp), parentFile);
      if (byRanges) {
        // The overlay reads as the parent; each changed range is copied into it from the snapshot's export.
        await this.qemu(['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', tmp, String(virtualSize)], { signal });
        const nbd = `file.driver=nbd,file.server.type=unix,file.server.path=${sock.replaceAll(',', ',,')}`;
        const dst = `file.driver=qcow2,file.file.driver=file,file.file.filename=${tmp.replaceAll(',', ',,')}`;
        let copied = 0;
        for (const r of byRanges.ranges) {
          const view = `driver=raw,offset=${r.offset},size=${r.length}`;
          await this.qemu(['convert', '-n', '--image-opts', `${view},${nbd}`, '--target-image-opts', `${view},${dst}`], { signal });
          copied += r.length;
          const done = Math.floor((copied / byRanges.changedBytes) * virtualSize);
          if (done < virtualSize) report({ bytesDone: done, bytesTotal: virtualSize });
        }
      } else {
        // Content comparison: an empty overlay on the export, rebased onto the parent, gets exactly the clusters
        // whose content differs.
        await this.qemu(['create', '-q', '-f', 'qcow2', '-b', `nbd+unix:///?socket=${sock}`, '-F', 'raw', tmp, String(virtualSize)], { signal });
        await this.qemu(['rebase', '-p', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', tmp], { signal, onStdout: progressParser(virtualSize, report) });
      }
    } catch (err) {
      if (err instanceof CommandError && /can't find snapshot|Failed to load snapshot/i.test(err.stderr)) throw notFound(tag, volumePath);
      throw err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      stop.abort();
      await server;
      await rm(sockDir, { recursive: true, force: true });
    }
  }

  async verifyBackup(imageStoreRoot: string, installPath: string, checksum: string): Promise<boolean> {
    const file = resolveInstallPath(imageStoreRoot, installPath);
    const expected = sha256Hex(checksum);
    let actual: string;
    try {
      actual = await sha256File(file);
    } catch (err) {
      if (errCode(err) === 'ENOENT') return false;
      throw err;
    }
    if (actual !== expected) return false;
    try {
      await this.qemu(['check', '-q', '-f', 'qcow2', file]);
      return true;
    } catch (err) {
      // Exit 3 means only leaked clusters: wasted space, not damaged data.
      if (err instanceof CommandError && err.exitCode === 3) return true;
      this.log.warn({ err, file }, 'qemu-img check failed on backup');
      return false;
    }
  }

  async createVolumeFromBackup(imageStoreRoot: string, installPath: string, poolPath: string, volumeId: string, chain: RestoreMember[]): Promise<CreatedVolume> {
    const src = resolveInstallPath(imageStoreRoot, installPath);
    if (!src.endsWith('.qcow2')) throw new Error(`KVM can only restore qcow2 backups, got ${installPath}`);
    const final = volumeFilePath(poolPath, volumeId);
    await mkdir(path.dirname(final), { recursive: true });
    const tmp = tempPathFor(final);
    const staged = await this.stageVerifiedChain(imageStoreRoot, installPath, chain, final);
    try {
      if (staged.copies.length === 1) {
        // A full backup is a standalone qcow2 (no backing file, no internal snapshot): its verified copy is the volume.
        await fsyncPath(staged.copies[0]!);
        await publishNoClobber(staged.copies[0]!, final);
      } else {
        await this.qemu(['convert', '-O', 'qcow2', '--image-opts', staged.imageOpts, tmp]);
        await fsyncPath(tmp);
        await publishNoClobber(tmp, final);
      }
    } finally {
      await rm(tmp, { force: true });
      await staged.remove();
    }
    this.log.info({ installPath, volumePath: final, chainLength: chain.length }, 'volume created from backup (every member verified)');
    return { path: final, format: 'qcow2' };
  }

  async restoreVolumeFromBackup(imageStoreRoot: string, installPath: string, volumePath: string, chain: RestoreMember[]): Promise<void> {
    parseVolumePath(volumePath);
    const src = resolveInstallPath(imageStoreRoot, installPath);
    if (!src.endsWith('.qcow2')) throw new Error(`KVM can only restore qcow2 backups, got ${installPath}`);
    // Verified before the volume is touched: a bad member refuses the revert with the volume as it was.
    const staged = await this.stageVerifiedChain(imageStoreRoot, installPath, chain, volumePath);
    try {
      await this.locked(volumePath, async () => {
        const { virtualSize: size } = await this.info(staged.copies[0]!);
        const { virtualSize } = await this.info(volumePath);
        // The snapshot recorded the disk's size then; the volume takes it back, as a revert on primary does.
        if (virtualSize !== size) {
          await this.mutate(volumePath, ['resize', '-q', '-f', 'qcow2', ...(size < virtualSize ? ['--shrink'] : []), volumePath, String(size)]);
        }
        // -n writes into the existing image's active layer (zeroes where the backup has none), so the volume's
        // internal snapshots stay; the chain is read from its verified copies.
        await this.mutate(volumePath, ['convert', '-n', '--image-opts', staged.imageOpts, '-O', 'qcow2', volumePath]);
        await fsyncPath(volumePath);
      });
    } finally {
      await staged.remove();
    }
    this.log.info({ installPath, volumePath, chainLength: chain.length }, 'volume rewritten from backup (every member verified)');
  }

  /**
   * Reads a restore's backup chain (docs/design.md §14, "Restoring"): each member file is read once, through a
   * sha256, into a private copy beside `beside` (a temporary name of the restore's output, so a crash leaves only
   * what the volume's temporaries' cleanup removes), and refused (BackupCorruptError) at the first whose bytes
   * differ from the sha256 recorded when it was written, or whose header names another backing file than the next
   * member on record. qemu-img then reads only those copies, each one's backing given explicitly in `imageOpts`
   * (the headers' backing names are checked, never followed), so every byte restored was verified. Why copies:
   * qemu-img reads a qcow2 in no fixed order (metadata first, clusters as the L2 tables lead, unallocated ones
   * never), so its reads cannot be hashed on the way; hashing the files first and letting qemu-img read the store
   * after would read every member twice and restore bytes other than those verified (a file can change between the
   * two reads). The price: the chain's size in temporary space on the target's pool for the restore's duration
   * (for a full backup the copy becomes the new volume itself).
   */
  private async stageVerifiedChain(
    imageStoreRoot: string,
    installPath: string,
    chain: RestoreMember[],
    beside: string,
  ): Promise<{ copies: string[]; imageOpts: string; remove: () => Promise<void> }> {
    if (chain[0]?.installPath !== installPath) throw new Error(`the chain to restore does not start with backup ${installPath}`);
    const copies: string[] = [];
    const remove = async () => {
      for (const c of copies) await rm(c, { force: true }).catch((err: unknown) => this.log.warn({ err, file: c }, 'could not remove a restore\'s temporary copy'));
    };
    const dir = path.dirname(resolveInstallPath(imageStoreRoot, installPath));
    try {
      for (const [i, m] of chain.entries()) {
        const file = resolveInstallPath(imageStoreRoot, m.installPath);
        if (!file.endsWith('.qcow2') || path.dirname(file) !== dir) throw new Error(`backup ${m.installPath} is not a qcow2 backup of the same volume as ${installPath}`);
        const copy = tempPathFor(beside);
        copies.push(copy);
        let digest: string;
        try {
          digest = await sha256CopyFile(file, copy);
        } catch (err) {
          if (errCode(err) === 'ENOENT' && !(await exists(copy).catch(() => true))) {
            throw new BackupCorruptError(`the backup of snapshot ${m.snapshotId} is missing from the image store`, m.snapshotId, 'backup file is missing');
          }
          throw err;
        }
        if (digest !== sha256Hex(m.checksum)) {
          throw new BackupCorruptError(
            `the backup of snapshot ${m.snapshotId} does not match its checksum (read sha256:${digest}, recorded ${m.checksum}); nothing was restored`,
            m.snapshotId,
            `sha256 mismatch: read sha256:${digest}, recorded ${m.checksum}`,
          );
        }
        const { stdout } = await this.qemu(['info', '-f', 'qcow2', '--output=json', copy]);
        const backing = (JSON.parse(stdout) as { 'backing-filename'?: string })['backing-filename'] ?? null;
        const next = chain[i + 1];
        const expected = next ? path.basename(next.installPath) : null;
        if (backing !== expected) {
          throw new BackupCorruptError(
            `the backup of snapshot ${m.snapshotId} names ${JSON.stringify(backing)} as its backing file, ${JSON.stringify(expected)} on record; nothing was restored`,
            m.snapshotId,
            `backing file ${JSON.stringify(backing)}, ${JSON.stringify(expected)} on record`,
          );
        }
      }
    } catch (err) {
      await remove();
      throw err;
    }
    const esc = (f: string) => f.replaceAll(',', ',,');
    const imageOpts = copies.map((c, depth) => {
      const p = 'backing.'.repeat(depth);
      return `${p}driver=qcow2,${p}file.driver=file,${p}file.filename=${esc(c)}`;
    }).join(',');
    return { copies, imageOpts, remove };
  }

  async deleteBackupFiles(imageStoreRoot: string, target: BackupTarget): Promise<string[]> {
    return removeBackupFiles(backupFilePath(imageStoreRoot, target));
  }

  /** Reads virtual size and snapshot tags; -U so it works while another process (a backup, a VM) holds the lock. */
  private async info(volumePath: string, signal?: AbortSignal): Promise<ImageInfo> {
    const { stdout } = await this.qemu(['info', '-U', '-f', 'qcow2', '--output=json', volumePath], { signal });
    const json = JSON.parse(stdout) as { 'virtual-size': number; snapshots?: { name: string }[] };
    return { virtualSize: json['virtual-size'], snapshotNames: (json.snapshots ?? []).map((s) => s.name) };
  }

  /** Bytes a qcow2 copy of the snapshot needs (data and metadata); undefined when qemu-img cannot say. */
  private async requiredBytes(volumePath: string, tag: string, signal?: AbortSignal): Promise<number | undefined> {
    try {
      const { stdout } = await this.qemu(['measure', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${tag}`, '--output=json', volumePath], { signal });
      const required = (JSON.parse(stdout) as { required?: unknown }).required;
      return typeof required === 'number' && required > 0 ? required : undefined;
    } catch (err) {
      signal?.throwIfAborted();
      this.log.warn({ err, volumePath, snapshotId: tag }, 'qemu-img measure failed; progress follows qemu-img -p');
      return undefined;
    }
  }

  // `-f qcow2` everywhere: format probing is unsafe, a guest could write a qcow2 header into a raw image.
  private qemu(args: string[], opts?: Parameters<typeof run>[2]): ReturnType<typeof run> {
    return run(this.qemuImg, args, opts);
  }

  /**
   * Runs a qemu-img command that needs the image's write lock. While another process holds that lock (a
   * running VM, qemu-io, a qemu-img in another volsnap process) it is retried with backoff for up to
   * `lockRetryMs`; then it fails with ImageBusyError, whose message carries only the image's file name (the
   * command line, with host paths, goes to the log only). qemu-img refuses before changing anything when the
   * lock is taken, so a retry is safe. `live`: the same change made by the QEMU of a running VM, when the lock
   * is that QEMU's (the live-image resolver finds it); it answers false when the VM stopped meanwhile.
   */
  private async mutate(volumePath: string, args: string[], live?: (img: LiveImage) => Promise<boolean>): Promise<void> {
    // A running VM's image: straight to its QEMU, without a qemu-img that would only meet QEMU's lock (one
    // process fewer on the time-to-created path). The resolver is one indexed query; a stopped VM's is null.
    if (live && this.liveImages) {
      const img = await this.liveImages(volumePath);
      if (img && (await live(img))) return;
    }
    const deadline = Date.now() + this.lockRetryMs;
    for (let delay = 50, attempt = 1; ; attempt++) {
      try {
        await this.qemu(args);
        return;
      } catch (err) {
        if (!(err instanceof CommandError) || !isWriteLockClash(err.stderr)) throw err;
        const img = live && this.liveImages ? await this.liveImages(volumePath) : null;
        if (img && (await live!(img))) return;
        const left = deadline - Date.now();
        if (left <= 0) {
          this.log.warn({ err, volumePath, attempts: attempt }, 'image still locked by another process; giving up');
          const file = path.basename(volumePath);
          throw new ImageBusyError(`volume image ${file} is in use by another process (its write lock stayed taken for ${Math.round(this.lockRetryMs / 1000)} s); try again later`, file);
        }
        if (attempt === 1) this.log.info({ volumePath }, 'image locked by another process; retrying');
        await new Promise((r) => setTimeout(r, Math.min(delay, left)));
        delay = Math.min(delay * 2, 1000);
      }
    }
  }

  private locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(key, fn);
  }
}

/** Creates the KVM storage driver. */
export function createKvmStorageDriver(opts: KvmDriverOptions = {}): KvmStorageDriver {
  return new KvmStorageDriver(opts);
}

/** `qemu-img snapshot` has no -f; --image-opts pins the format instead (commas in the path are escaped by doubling). */
function qcow2Opts(file: string): string {
  return `driver=qcow2,file.filename=${file.replaceAll(',', ',,')}`;
}

/** Turns qemu-img -p output ("    (12.34/100%)\r") into byte progress; 100% is held back until the backup is committed. */
function progressParser(total: number, report: (p: BackupProgress) => void): (chunk: string) => void {
  let buf = '';
  let last = -1;
  return (chunk) => {
    buf += chunk;
    const lines = buf.split(/[\r\n]/);
    buf = lines.pop() ?? '';
    for (const line of lines) {
      const m = /\((\d+(?:\.\d+)?)\/100%\)/.exec(line);
      if (!m) continue;
      const done = Math.min(total, Math.floor((Number(m[1]) / 100) * total));
      if (done > last && done < total) {
        last = done;
        report({ bytesDone: done, bytesTotal: total });
      }
    }
  };
}

/**
 * Progress of a copy into `tmp` as the share of `required` bytes written so far, in bytes of the virtual size
 * `total` (the unit the API reports). Sampled when qemu-img prints progress and every second in between;
 * strictly increasing and below `total` (the caller reports completion).
 */
function writtenProgress(tmp: string, required: number, total: number, report: (p: BackupProgress) => void) {
  let last = -1;
  let sampling = false;
  let stopped = false;
  const sample = (): void => {
    if (sampling || stopped) return;
    sampling = true;
    stat(tmp)
      .then(({ size }) => {
        const done = Math.floor((Math.min(size, required) / required) * total);
        if (!stopped && done > last && done < total) {
          last = done;
          report({ bytesDone: done, bytesTotal: total });
        }
      })
      .catch(() => undefined) // not created yet, or already renamed
      .finally(() => (sampling = false));
  };
  const timer = setInterval(sample, 1000);
  return {
    sample,
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}

/**
 * Whether copying the changed ranges one `qemu-img convert` each (≈ 20 ms of process start per range, then the
 * bytes) beats a rebase, which reads the snapshot and the parent chain in full (≈ 1.2 GiB/s here, bench P5).
 */
function copyByRangesIsCheaper(diff: SnapshotDiff, virtualSize: number): boolean {
  const rangesMs = diff.ranges.length * 25 + (diff.changedBytes / (300 * 1024 * 1024)) * 1000;
  const rebaseMs = (virtualSize / (1.2 * 1024 * 1024 * 1024)) * 1000;
  return rangesMs < rebaseMs;
}

/** Resolves once `file` exists or `task` has settled (whichever is first); never rejects. */
async function untilExistsOrSettled(file: string, task: Promise<unknown>): Promise<void> {
  let settled = false;
  const done = task.then(
    () => void (settled = true),
    () => void (settled = true),
  );
  while (!settled && !(await exists(file))) await Promise.race([done, new Promise((r) => setTimeout(r, 5))]);
}

/**
 * Resolves once the NBD server on `sock` sends a client its greeting ("NBDMAGIC"), which qemu-nbd does only after
 * it has opened its image. Fails with the server's error if it exits first, or after 30 s.
 */
async function nbdGreeting(sock: string, failed: () => unknown, signal?: AbortSignal): Promise<void> {
  const greeted = (): Promise<boolean> =>
    new Promise((resolve) => {
      let got = Buffer.alloc(0);
      const conn = createConnection(sock);
      conn.setTimeout(1000, () => conn.destroy());
      conn.on('data', (chunk: Buffer) => {
        got = Buffer.concat([got, chunk]);
        if (got.length >= 8) conn.destroy();
      });
      conn.on('error', () => undefined);
      conn.on('close', () => resolve(got.subarray(0, 8).toString('latin1') === 'NBDMAGIC'));
    });
  for (const started = Date.now(); ; ) {
    const err = failed();
    if (err) throw err;
    if (await greeted()) return;
    if (Date.now() - started > 30_000) throw new Error('qemu-nbd did not serve its export within 30 s');
    signal?.throwIfAborted();
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Publishes `tmp` as `final` atomically, failing if `final` exists (link(2) never overwrites). */
async function publishNoClobber(tmp: string, final: string): Promise<void> {
  try {
    await link(tmp, final);
  } catch (err) {
    if (errCode(err) === 'EEXIST') throw new VolumeExistsError(`volume image ${final} already exists`);
    throw err;
  }
  await unlink(tmp);
  await fsyncPath(path.dirname(final));
}

/** What changes when anyone writes the file: a copy taken between two equal versions is consistent. */
async function fileVersion(p: string): Promise<string> {
  const s = await stat(p, { bigint: true });
  return `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if (errCode(err) === 'ENOENT') return false;
    throw err;
  }
}
