/** Pieces every storage driver shares: error types, size checks, durable file helpers, safe progress. */
import { createHash } from 'node:crypto';
import { open, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isFileOf } from './paths.js';
import type { BackupProgress } from './driver.js';

/** The subset of a pino logger the drivers use. */
export interface DriverLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** The snapshot to act on does not exist on the volume; retrying will not help. */
export class SnapshotNotFoundError extends Error {
  override name = 'SnapshotNotFoundError';
}

/** A volume image already exists where a new one would be created; it is never overwritten. */
export class VolumeExistsError extends Error {
  override name = 'VolumeExistsError';
}

/**
 * A backup file read for a restore does not match the sha256 recorded when it was written (or its chain is not
 * the one on record): nothing was created or changed. The API answers 409 BACKUP_CORRUPT.
 */
export class BackupCorruptError extends Error {
  override name = 'BackupCorruptError';
  constructor(
    message: string,
    /** The snapshot whose backup file is wrong. */
    readonly snapshotId: string,
    /** What is wrong with it, in a few words (recorded as the backup's fault). */
    readonly fault: string,
  ) {
    super(message);
  }
}

/**
 * Another process holds the image's lock (a qemu-img "write" lock clash, or the cross-process image lock in
 * db/image-locks.ts) for longer than the caller was willing to wait. Nothing was changed, so the operation is
 * safe to retry later: activities should let Temporal retry it (do not mark it non-retryable), and the API
 * answers 409 IMAGE_BUSY. The message names only the image's file name, never the command line or host paths.
 */
export class ImageBusyError extends Error {
  override name = 'ImageBusyError';
  constructor(message: string, readonly fileName?: string) {
    super(message);
  }
}

/** qemu-img's stderr when another process (a VM, qemu-io, another qemu-img) has the image open for writing. */
export function isWriteLockClash(stderr: string): boolean {
  return /Failed to get "write" lock|Is another process using the image/i.test(stderr);
}

export function notFound(tag: string, volumePath: string): SnapshotNotFoundError {
  return new SnapshotNotFoundError(`snapshot ${tag} not found on ${volumePath}`);
}

/** Image sizes are whole 512-byte sectors: refuse others instead of letting the tools round them silently. */
export function assertSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new RangeError(`size must be a positive multiple of 512 bytes, got ${sizeBytes}`);
  }
}

/** Wraps an error with context, keeping its name so callers can still tell SnapshotNotFoundError/AbortError apart. */
export function withContext(err: unknown, context: string): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  const wrapped = new Error(`${context}: ${e.message}`, { cause: e });
  wrapped.name = e.name;
  return wrapped;
}

/** A throwing progress callback runs inside a stream handler, where it would crash the process; log it instead. */
export function safeProgress(cb: ((p: BackupProgress) => void) | undefined, log: DriverLogger): (p: BackupProgress) => void {
  return (p) => {
    try {
      cb?.(p);
    } catch (err) {
      log.warn({ err }, 'backup progress callback threw');
    }
  };
}

/** fsync a file or directory, so a rename or a write survives a crash. */
export async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const HASH_READ_BYTES = 4 * 1024 * 1024;

/** How a background reader (the backup scrub) paces a hash and reports its progress. */
export interface HashPace {
  /** At most this many bytes per second on average (none: as fast as the disk goes). */
  bytesPerSecond?: number;
  /** Called after each read with the bytes read so far. */
  onRead?: (bytesRead: number) => void;
}

/**
 * Hex sha256 of a file's bytes. Reads into one reused 4 MiB buffer: a read stream's per-chunk machinery cost
 * about three times the hashing itself on multi-GiB backups (bench/README.md, P3).
 */
export async function sha256File(file: string, signal?: AbortSignal, opts: HashPace = {}): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(HASH_READ_BYTES);
  const fh = await open(file, 'r');
  const started = Date.now();
  let total = 0;
  try {
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      total += bytesRead;
      opts.onRead?.(total);
      if (opts.bytesPerSecond) {
        // Ahead of the pace: wait until the bytes read so far are due.
        const aheadMs = (total / opts.bytesPerSecond) * 1000 - (Date.now() - started);
        if (aheadMs > 1) await sleep(aheadMs, undefined, signal ? { signal } : undefined);
      }
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

/**
 * Copies `src` to the new file `dst` (which must not exist) in one read pass that also hashes it; answers the hex
 * sha256 of the bytes copied. Restores read their chain this way (storage/kvm.ts stageVerifiedChain).
 */
export async function sha256CopyFile(src: string, dst: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(HASH_READ_BYTES);
  const from = await open(src, 'r');
  try {
    const to = await open(dst, 'wx', 0o600);
    try {
      for (;;) {
        signal?.throwIfAborted();
        const { bytesRead } = await from.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        const chunk = buf.subarray(0, bytesRead);
        hash.update(chunk);
        for (let off = 0; off < bytesRead; ) off += (await to.write(chunk, off, bytesRead - off)).bytesWritten;
      }
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
  return hash.digest('hex');
}

/** Like Promise.all, but settles every promise before rejecting, so no operation outlives the caller's cleanup. */
export async function settleAll<T extends readonly unknown[]>(promises: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

export function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** Removes a backup file and its temporary (partial) siblings; a missing directory means nothing to remove. */
export async function removeBackupFiles(final: string): Promise<string[]> {
  const dir = path.dirname(final);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (errCode(err) === 'ENOENT') return [];
    throw err;
  }
  const removed: string[] = [];
  for (const name of names.filter((n) => isFileOf(path.basename(final), n))) {
    const p = path.join(dir, name);
    await rm(p, { force: true });
    removed.push(p);
  }
  if (removed.length > 0) await fsyncPath(dir);
  return removed;
}

/** The hex digest of a stored `sha256:<hex>` checksum (lower-cased); throws on any other form. */
export function sha256Hex(checksum: string): string {
  const m = /^sha256:([0-9a-f]{64})$/i.exec(checksum);
  if (!m) throw new Error(`checksum must be sha256:<64 hex>, got ${JSON.stringify(checksum)}`);
  return m[1]!.toLowerCase();
}

/**
 * Runs `fn` after every earlier call with the same key has settled: one queue per key. The drivers keep one per
 * image, so qemu-img / XenAPI mutations from this process never overlap (db/image-locks.ts covers processes).
 */
export class KeyedQueue {
  private readonly tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const next = (this.tails.get(key) ?? Promise.resolve()).catch(() => undefined).then(fn);
    this.tails.set(key, next);
    try {
      return await next;
    } finally {
      if (this.tails.get(key) === next) this.tails.delete(key);
    }
  }
}
